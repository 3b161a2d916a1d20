"""The join agent's Joiner with a fake table and producer: emission, deadlines, recovery."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from provline.producers.profile import profile_table
from provline.schemas.serde import Decoded, default_catalog
from provline.stream_processors.dead_letters import DeadLetters
from provline.stream_processors.drift import DriftAccumulator
from provline.stream_processors.join import (
    REQUEST,
    RESPONSE,
    Timing,
    absorb,
    completed_event_id,
    summarize,
    trace_event_id,
)
from provline.stream_processors.join_agent import Joiner
from provline.stream_processors.lineage import LineageIndex, to_micros
from provline.stream_processors.lineage_agent import merged_positions, read_to_end
from provline.stream_processors.metrics import ProcessorMetrics
from provline.stream_processors.positions import position_key, positions_in
from provline.stream_processors.traces import TraceEncoder
from tests.unit.test_processors_join import at, lineage, request, response

TIMING = Timing(ttl=30, lineage_wait=10, retention=300)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []

    def produce(self, topic: str, key: bytes, value: bytes | None, *, partition: int | None = None,
                headers: Any = None) -> None:
        self.sent.append((topic, key, value, partition))


def make_joiner(index: LineageIndex) -> tuple[Joiner, FakeProducer]:
    producer = FakeProducer()
    catalog = default_catalog()
    joiner = Joiner(
        catalog=catalog, lineage=index, encoder=TraceEncoder(catalog, session_id="s"), timing=TIMING,
        metrics=ProcessorMetrics(), drift=DriftAccumulator(index.baseline_of, window_us=60_000_000),
        producer=producer, traces_topic="traces", dead_letters=DeadLetters(producer, "dlq"),
        lineage_topic="lineage",
    )
    joiner.table = FakeTable()
    return joiner, producer


class FakeTable:
    """The part of a Faust Table the Joiner uses: its store and ``send_changelog``."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.changelog: list[tuple[str, Any, int | None]] = []

    def send_changelog(self, partition: int | None, key: str, value: Any, value_serializer: str | None = None) -> None:
        self.changelog.append((key, value, partition))


def traces(producer: FakeProducer) -> list[dict[str, Any]]:
    return [default_catalog().decode(value).value for topic, _, value, _ in producer.sent
            if topic == "traces" and value is not None]


def changelog(producer: FakeProducer, joiner: Joiner) -> list[tuple[str, Any, int | None]]:
    joiner.release_changelog()
    return joiner.table.changelog


def both(pid: str = "p1", partition: int = 2, now: float = 100, **named: Any) -> dict[str, Any]:
    """Both halves of a prediction; ``named``: response fields (a server that names its model)."""
    entry = absorb(None, REQUEST, summarize(REQUEST, request(pid=pid)), partition=partition, now=now)
    return absorb(entry, RESPONSE, summarize(RESPONSE, response(pid=pid, **named)), partition=partition, now=now)  # type: ignore[return-value]


def test_a_joined_prediction_is_sent_once_with_its_stable_id_and_a_done_marker() -> None:
    joiner, producer = make_joiner(lineage())
    joiner.advance("p1", both(), now=100)
    [trace] = traces(producer)
    assert trace["event_id"] == trace_event_id("p1", to_micros(at(100))) and trace["model_version"] == "2"
    assert not [m for m in producer.sent if m[0] == "changelog"]  # held back until the trace is delivered
    [(key, marker, partition)] = changelog(producer, joiner)
    assert key == "p1" and partition == 2 and marker["d"] == 100 and "q" not in marker
    assert joiner.table.data["p1"] == marker
    # the done marker is forgotten (a tombstone on its partition) after the retention, and only then
    joiner.on_timer(now=399, owns=lambda p: True)
    assert "p1" in joiner.table.data
    joiner.on_timer(now=400, owns=lambda p: True)
    assert "p1" not in joiner.table.data and changelog(producer, joiner)[-1] == ("p1", None, 2)
    assert len(traces(producer)) == 1


def test_a_lone_half_goes_out_partial_at_its_ttl_only_when_caught_up_and_owned() -> None:
    joiner, producer = make_joiner(lineage())
    entry = absorb(None, REQUEST, summarize(REQUEST, request()), partition=1, now=100)
    assert entry is not None
    joiner.advance("p1", entry, now=100)
    assert traces(producer) == []
    joiner.on_timer(now=131, owns=lambda p: False)  # another worker owns it now ...
    joiner.rebuild(list(joiner.table.data.items()))  # ... until it comes back (a recovery rebuilds)
    joiner.on_timer(now=131, owns=lambda p: True, caught_up=lambda p: False)  # its partner may be unread
    assert traces(producer) == []
    joiner.on_timer(now=132, owns=lambda p: True, caught_up=lambda p: True)
    [trace] = traces(producer)
    assert trace["complete"] is False and trace["missing"] == "response"


def test_lineage_arriving_during_the_wait_completes_the_trace() -> None:
    index = LineageIndex()
    joiner, producer = make_joiner(index)
    joiner.advance("p1", both(), now=100)
    assert traces(producer) == [] and joiner.table.data["p1"]["h"] == 100
    joiner.on_timer(now=101, owns=lambda p: True)
    assert traces(producer) == []
    for kind, value in (("RunEvent", {"event_time": at(0), "run_id": "run-2", "code": {"repo": "r", "commit": "c"}}),
                        ("ModelVersion", {"model_name": "churn", "version": "2", "artifact_uri": "u",
                                          "artifact_sha256": "s", "run_id": "run-2", "datasets": [],
                                          "feature_sets": []}),
                        ("Deployment", {"event_id": "d", "event_time": at(1), "model_name": "churn",
                                        "model_version": "2", "environment": "prod", "endpoint": "/predict",
                                        "action": "DEPLOY"})):
        index.ingest(kind, value)
    joiner.on_timer(now=102, owns=lambda p: True)
    [trace] = traces(producer)
    assert trace["complete"] is True and trace["model_version"] == "2"


def test_unknown_lineage_goes_out_incomplete_after_the_wait() -> None:
    joiner, producer = make_joiner(LineageIndex())
    joiner.advance("p1", both(), now=100)
    joiner.on_timer(now=109, owns=lambda p: True)
    assert traces(producer) == []
    joiner.on_timer(now=110, owns=lambda p: True)
    [trace] = traces(producer)
    assert trace["missing"] == "lineage"


def test_rebuild_after_recovery_restores_deadlines() -> None:
    joiner, producer = make_joiner(lineage())
    lone = absorb(None, RESPONSE, summarize(RESPONSE, response(pid="p9")), partition=0, now=100)
    joiner.table.data = {"p9": lone}
    joiner.rebuild(list(joiner.table.data.items()))
    joiner.on_timer(now=130, owns=lambda p: True, caught_up=lambda p: True)
    [trace] = traces(producer)
    assert trace["prediction_id"] == "p9" and trace["missing"] == "request"


def test_positions_follow_the_batch_entries_on_their_partition_and_come_back_after_recovery() -> None:
    joiner, producer = make_joiner(lineage())
    assert all(joiner.positions.admit(partition, offset, now=0) for partition, offset in [(2, 40), (2, 41), (0, 7)])
    joiner.advance("p1", both(partition=2), now=100)
    joiner.record_positions({2, 0})
    records = changelog(producer, joiner)
    assert records[0][0] == "p1"
    assert sorted(records[1:]) == [(position_key(0), {"offset": 7}, 0), (position_key(2), {"offset": 41}, 2)]
    assert positions_in(joiner.table.data.items()) == {2: 41, 0: 7}
    # a recovered table holds the position records next to the entries: the timer never sees them
    joiner.rebuild(list(joiner.table.data.items()))
    joiner.on_timer(now=1_000, owns=lambda p: True, caught_up=lambda p: True)
    assert positions_in(joiner.table.data.items()) == {2: 41, 0: 7} and "p1" not in joiner.table.data


def test_a_dead_letter_goes_out_with_the_batch_before_its_position() -> None:
    joiner, producer = make_joiner(lineage())
    message = SimpleNamespace(topic="inference", partition=3, offset=9, key=b"k", value=b"junk")
    joiner.dead_letter(SimpleNamespace(message=message), "CorruptEventError",  # type: ignore[arg-type]
                       "not a provline event")
    joiner.positions.admit(3, 9, now=0)
    joiner.record_positions({3})
    assert producer.sent[0][:3] == ("dlq", b"k", b"junk")
    assert changelog(producer, joiner) == [(position_key(3), {"offset": 9}, 3)]


def catch_up_lineage_without_deployment() -> LineageIndex:
    """What the lineage index holds while the processors catch up: model and run known, deployment not yet read."""
    index = LineageIndex()
    for kind, value in lineage_of_version_2()[:2]:
        index.ingest(kind, value)
    return index


def lineage_of_version_2() -> list[tuple[str, dict[str, Any]]]:
    """Run, model version (trained on dataset ds-2) and deployment of churn 2 on /predict."""
    return [("RunEvent", {"event_time": at(0), "run_id": "run-2", "code": {"repo": "r", "commit": "c"}}),
            ("ModelVersion", {"model_name": "churn", "version": "2", "artifact_uri": "u", "artifact_sha256": "s",
                              "run_id": "run-2", "datasets": ["ds-2"], "feature_sets": []}),
            ("Deployment", {"event_id": "dep-2", "event_time": at(1), "model_name": "churn", "model_version": "2",
                            "environment": "prod", "endpoint": "/predict", "action": "DEPLOY"})]


def test_a_trace_without_its_deployment_is_not_complete_and_its_deployment_completes_it_later() -> None:
    """Issue 14, item 10: traces went out complete with an empty deployment_event_id, and stayed so."""
    index = catch_up_lineage_without_deployment()
    joiner, producer = make_joiner(index)
    joiner.advance("p1", both(model_name="churn", model_version="2"), now=100)
    joiner.on_timer(now=110, owns=lambda p: True)  # the lineage wait is over
    [partial] = traces(producer)
    assert partial["complete"] is False and partial["missing"] == "deployment"
    assert partial["deployment_event_id"] is None and partial["model_version"] == "2"
    marker = joiner.table.data["p1"]
    assert "d" in marker and "q" in marker and "r" in marker  # halves kept to complete it
    joiner.on_timer(now=120, owns=lambda p: True)  # no lineage change: nothing new
    assert len(traces(producer)) == 1
    index.ingest("Deployment", {"event_id": "dep-2", "event_time": at(1), "model_name": "churn", "model_version": "2",
                                "environment": "prod", "endpoint": "/predict", "action": "DEPLOY"})
    joiner.on_timer(now=121, owns=lambda p: True)
    partial_again, completed = traces(producer)
    assert completed["complete"] is True and completed["missing"] is None
    assert completed["deployment_event_id"] == "dep-2"
    assert completed["event_id"] == completed_event_id("p1", to_micros(at(100))) != partial["event_id"]
    assert "q" not in joiner.table.data["p1"] and joiner.table.data["p1"]["t"]["complete"] is True
    index.ingest("Deployment", {"event_id": "dep-3", "event_time": at(2), "model_name": "churn", "model_version": "2",
                                "environment": "prod", "endpoint": "/other", "action": "DEPLOY"})
    joiner.on_timer(now=122, owns=lambda p: True)
    assert len(traces(producer)) == 2  # completed once


def test_a_completed_revision_keeps_the_ground_truth_the_trace_was_labelled_with() -> None:
    from provline.stream_processors.join import absorb_feedback

    index = catch_up_lineage_without_deployment()
    joiner, producer = make_joiner(index)
    joiner.advance("p1", both(model_name="churn", model_version="2"), now=100)
    joiner.on_timer(now=110, owns=lambda p: True)
    feedback = {"event_id": "fb-1", "prediction_id": "p1", "label": "yes", "outcome": None, "source": "crm",
                "observed_time": to_micros(at(105)), "event_time": to_micros(at(105))}
    labelled = absorb_feedback(joiner.table.data["p1"], feedback, partition=2, now=111)  # type: ignore[arg-type]
    assert labelled is not None
    joiner.advance("p1", labelled, now=111)
    assert traces(producer)[-1]["label"] == "yes"
    index.ingest("Deployment", {"event_id": "dep-2", "event_time": at(1), "model_name": "churn", "model_version": "2",
                                "environment": "prod", "endpoint": "/predict", "action": "DEPLOY"})
    joiner.on_timer(now=112, owns=lambda p: True)
    completed = traces(producer)[-1]
    assert completed["complete"] is True and completed["label"] == "yes" and completed["feedback_event_id"] == "fb-1"


def test_a_marker_awaiting_its_deployment_is_retried_after_a_recovery() -> None:
    index = catch_up_lineage_without_deployment()
    joiner, producer = make_joiner(index)
    joiner.advance("p1", both(model_name="churn", model_version="2"), now=100)
    joiner.on_timer(now=110, owns=lambda p: True)
    recovered, producer2 = make_joiner(index)
    recovered.table.data = dict(joiner.table.data)
    recovered.rebuild(list(recovered.table.data.items()))
    index.ingest("Deployment", {"event_id": "dep-2", "event_time": at(1), "model_name": "churn", "model_version": "2",
                                "environment": "prod", "endpoint": "/predict", "action": "DEPLOY"})
    recovered.on_timer(now=111, owns=lambda p: True)
    [completed] = traces(producer2)
    assert completed["complete"] is True



def age_profile() -> dict[str, Any]:
    [profile] = profile_table(pa.table({"age": [float(v % 80) for v in range(1_000)]})).profiles
    return dict(profile)


def test_a_trace_completed_late_counts_for_drift_once() -> None:
    """CI, stop 26: traces that went out before their lineage was read never reached the drift monitor."""
    index = LineageIndex()
    joiner, producer = make_joiner(index)
    joiner.advance("p1", both(), now=100)
    joiner.on_timer(now=110, owns=lambda p: True)  # the wait is over: out incomplete, no model to count for
    [partial] = traces(producer)
    assert partial["missing"] == "lineage" and joiner.drift.drain() == []
    index.ingest("DatasetVersion", {"digest": "ds-2", "name": "customers", "profiles": [age_profile()]})
    for kind, value in lineage_of_version_2():
        index.ingest(kind, value)
    joiner.on_timer(now=111, owns=lambda p: True)
    assert traces(producer)[-1]["complete"] is True
    [window] = joiner.drift.drain()
    assert (window["m"], window["v"]) == ("churn", "2") and window["f"]["age"]["n"] == 1
    index.ingest("Deployment", {"event_id": "dep-3", "event_time": at(2), "model_name": "churn", "model_version": "2",
                                "environment": "prod", "endpoint": "/other", "action": "DEPLOY"})
    joiner.on_timer(now=112, owns=lambda p: True)
    assert joiner.drift.drain() == []


def test_a_trace_counted_when_it_went_out_is_not_counted_again_when_completed() -> None:
    index = catch_up_lineage_without_deployment()
    index.ingest("DatasetVersion", {"digest": "ds-2", "name": "customers", "profiles": [age_profile()]})
    joiner, producer = make_joiner(index)
    joiner.advance("p1", both(model_name="churn", model_version="2"), now=100)
    joiner.on_timer(now=110, owns=lambda p: True)  # out without its deployment, but its model named
    [counted] = joiner.drift.drain()
    assert counted["f"]["age"]["n"] == 1
    index.ingest("Deployment", {"event_id": "dep-2", "event_time": at(1), "model_name": "churn", "model_version": "2",
                                "environment": "prod", "endpoint": "/predict", "action": "DEPLOY"})
    joiner.on_timer(now=111, owns=lambda p: True)
    assert traces(producer)[-1]["complete"] is True and joiner.drift.drain() == []


# Issue 15: one message per prediction. A complete exchange frame is decided at once, without a table entry.

def exchange(pid: str = "p1", **named: Any) -> list[Decoded]:
    catalog = default_catalog()
    return [Decoded(REQUEST, request(pid=pid), catalog.current(REQUEST)),
            Decoded(RESPONSE, response(pid=pid, **named), catalog.current(RESPONSE))]


def test_a_complete_exchange_goes_out_at_once_and_writes_nothing_to_the_table() -> None:
    joiner, producer = make_joiner(lineage())
    touched: dict[str, Any] = {}
    joiner.take(exchange(), touched, partition=2, now=100)
    [trace] = traces(producer)
    assert trace["complete"] and trace["event_id"] == trace_event_id("p1", to_micros(at(100)))
    assert touched == {} and joiner.table.data == {} and changelog(producer, joiner) == []
    joiner.take(exchange(), touched, partition=2, now=101)  # redelivered: the same trace, which the sink collapses
    assert [t["event_id"] for t in traces(producer)] == [trace["event_id"]] * 2


def test_an_exchange_without_its_lineage_waits_in_the_table_like_two_halves() -> None:
    joiner, producer = make_joiner(LineageIndex())
    touched: dict[str, Any] = {}
    joiner.take(exchange(), touched, partition=2, now=100)
    assert traces(producer) == [] and set(touched["p1"]) >= {"q", "r"}


def test_an_exchange_for_a_prediction_with_waiting_feedback_carries_it() -> None:
    joiner, producer = make_joiner(lineage())
    touched: dict[str, Any] = {}
    catalog = default_catalog()
    label = {"event_id": "fb-1", "event_time": at(99), "prediction_id": "p1", "label": "churned", "outcome": None,
             "source": "crm", "observed_time": at(99)}
    joiner.take([Decoded("Feedback", label, catalog.current("Feedback"))], touched, partition=2, now=99)
    joiner.take(exchange(), touched, partition=2, now=100)
    joiner._guarded_advance("p1", touched["p1"], now=100)
    [trace] = traces(producer)
    assert trace["label"] == "churned" and trace["feedback_event_id"] == "fb-1"


def test_a_frame_holding_two_predictions_is_refused() -> None:
    joiner, producer = make_joiner(lineage())
    frame = exchange()
    frame[1] = exchange("p2")[1]
    with pytest.raises(ValueError, match="request of 'p1' and the response of 'p2'"):
        joiner.take(frame, {}, partition=2, now=100)
    assert traces(producer) == []


# A frame joined before the worker read a rollback already published got the version the rollback
# replaced (CI: test_processors_stream[frames], p-07648 with version 2 after the rollback to 1).

def test_no_trace_is_decided_while_lineage_is_unread_and_it_goes_out_once_read() -> None:
    index = LineageIndex()  # read so far: the deploy of 1 and the rollout of 2; the rollback at 150 is not
    for version, when, action in (("1", 10, "DEPLOY"), ("2", 50, "PROMOTE")):
        index.ingest("Deployment", {"event_id": f"dep-{version}", "event_time": at(when), "model_name": "churn",
                                    "model_version": version, "environment": "prod", "endpoint": "/predict",
                                    "action": action})
    for version in ("1", "2"):
        index.ingest("ModelVersion", {"model_name": "churn", "version": version, "artifact_uri": f"s3://m/{version}",
                                      "artifact_sha256": f"art-{version}", "run_id": "run-1", "datasets": [],
                                      "feature_sets": []})
    index.ingest("RunEvent", {"event_time": at(0), "run_id": "run-1", "code": {"repo": "git@r", "commit": "c1"}})
    joiner, producer = make_joiner(index)
    joiner.lineage_current = False
    touched: dict[str, Any] = {}
    catalog = default_catalog()
    after_the_rollback = [Decoded(REQUEST, request(160), catalog.current(REQUEST)),
                          Decoded(RESPONSE, response(160.2), catalog.current(RESPONSE))]
    joiner.take(after_the_rollback, touched, partition=2, now=100)
    joiner.take(exchange("p2"), touched, partition=2, now=100)  # by the table path too
    for pid, entry in touched.items():
        joiner.advance(pid, entry, now=100)
    assert traces(producer) == []
    joiner.on_timer(now=101, owns=lambda p: True)  # still unread: nothing
    assert traces(producer) == []
    index.ingest("Deployment", {"event_id": "dep-rollback", "event_time": at(150), "model_name": "churn",
                                "model_version": "1", "environment": "prod", "endpoint": "/predict",
                                "action": "ROLLBACK"})
    joiner.lineage_current = True
    joiner.on_timer(now=101.5, owns=lambda p: True)
    found = {t["prediction_id"]: t for t in traces(producer)}
    assert set(found) == {"p1", "p2"} and all(t["complete"] for t in found.values())
    assert found["p1"]["model_version"] == "1" and found["p2"]["model_version"] == "2"


def test_the_gate_reopening_alone_retries_the_held_traces() -> None:
    joiner, producer = make_joiner(lineage())  # the index is complete; only the check said "unread"
    joiner.lineage_current = False
    touched: dict[str, Any] = {}
    joiner.take(exchange(), touched, partition=2, now=100)
    joiner.advance("p1", touched["p1"], now=100)
    joiner.on_timer(now=100.5, owns=lambda p: True)
    assert traces(producer) == []
    joiner.lineage_current = True
    joiner.on_timer(now=101, owns=lambda p: True)
    [trace] = traces(producer)
    assert trace["complete"] and trace["event_id"] == trace_event_id("p1", to_micros(at(100)))


def test_read_to_end_needs_every_fetched_partition_decided() -> None:
    assert read_to_end({0: 4, 1: 9}, {0: 5, 1: 10})
    assert read_to_end({}, {0: 0})  # an empty partition
    assert read_to_end({}, {})  # no lineage partition on this worker
    assert not read_to_end({0: 3}, {0: 5})  # offset 4 unread
    assert not read_to_end({}, {0: 2})  # nothing read yet
    assert not read_to_end({0: 4}, {0: None})  # not fetched yet


def test_merged_positions_keeps_each_partitions_highest_decided_offset() -> None:
    peers, own = {0: 7, 1: 3}, {1: 5, 2: 0}
    assert merged_positions(peers, own) == {0: 7, 1: 5, 2: 0}
    assert merged_positions(own, peers) == {0: 7, 1: 5, 2: 0}
    assert merged_positions() == {}
