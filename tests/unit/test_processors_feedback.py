"""Ground truth: Feedback joined to its prediction's trace, before or after the trace is emitted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provline.schemas.serde import default_catalog
from provline.stream_processors.join import (
    REQUEST,
    RESPONSE,
    Step,
    Timing,
    absorb,
    absorb_feedback,
    apply_late_feedback,
    deadline,
    is_feedback_only,
    label_fields,
    labelled_event_id,
    mark_done,
    newest_feedback,
    next_step,
    summarize,
    summarize_feedback,
    trace_event_id,
)
from provline.stream_processors.lineage import to_micros
from tests.unit.test_processors_join import at, lineage, request, response
from tests.unit.test_processors_joiner import both, changelog, make_joiner, traces

TIMING = Timing(ttl=30, lineage_wait=10, retention=300)
LABEL_FIELDS = ["label", "outcome", "feedback_source", "feedback_time", "feedback_event_id"]


def feedback(event_id: str = "fb-1", *, pid: str = "p1", label: str | None = "churned", outcome: float | None = None,
             observed: float = 500, when: float = 501) -> dict[str, Any]:
    return summarize_feedback({
        "event_id": event_id, "event_time": at(when), "prediction_id": pid, "label": label, "outcome": outcome,
        "source": "crm", "observed_time": at(observed),
    })


def done_marker(now: float = 100) -> dict[str, Any]:
    trace = {"prediction_id": "p1", "model_name": "churn", "model_version": "2", "features": {"age": 41.0}}
    return mark_done(both(), trace, now=now)


# ---------------------------------------------------------------- pure state machine


def test_the_v2_trace_schema_is_v1_plus_optional_label_fields() -> None:
    v1 = json.loads(open("schemas/avsc/PredictionTrace.v1.avsc").read())["fields"]
    v2 = json.loads(open("schemas/avsc/PredictionTrace.v2.avsc").read())["fields"]
    assert v2[: len(v1)] == v1
    assert [f["name"] for f in v2[len(v1):]] == LABEL_FIELDS
    assert all(f["default"] is None and f["type"][0] == "null" for f in v2[len(v1):])


def test_summary_and_label_fields_carry_the_ground_truth() -> None:
    fb = feedback(outcome=12.5)
    assert fb["observed_time"] == to_micros(at(500)) and fb["event_time"] == to_micros(at(501))
    assert label_fields(fb) == {"label": "churned", "outcome": 12.5, "feedback_source": "crm",
                                "feedback_time": to_micros(at(500)), "feedback_event_id": "fb-1"}


def test_feedback_without_a_prediction_waits_alone_until_the_retention() -> None:
    entry = absorb_feedback(None, feedback(), partition=3, now=100)
    assert entry is not None and is_feedback_only(entry) and entry["p"] == 3
    assert deadline(entry, TIMING) == 400
    assert next_step(entry, {}, now=10_000, timing=TIMING) is Step.WAIT  # no half: never a trace of its own


def test_a_half_after_feedback_starts_its_own_time_to_live() -> None:
    entry = absorb_feedback(None, feedback(), partition=3, now=100)
    entry = absorb(entry, REQUEST, summarize(REQUEST, request()), partition=3, now=150)
    assert entry is not None and not is_feedback_only(entry)
    assert deadline(entry, TIMING) == 180 and entry["b"] == [feedback()]


def test_the_same_feedback_twice_is_a_noop_pending_or_done() -> None:
    pending = absorb_feedback(both(), feedback(), partition=2, now=100)
    assert pending is not None and absorb_feedback(pending, feedback(), partition=2, now=101) is None
    marker = mark_done(pending, {"prediction_id": "p1"}, now=102)
    assert marker["f"] == ["fb-1"] and "b" not in marker
    assert absorb_feedback(marker, feedback(), partition=2, now=103) is None
    assert absorb_feedback(marker, feedback("fb-2"), partition=2, now=103) is not None


def test_the_newest_observation_rides_on_the_trace() -> None:
    entry = absorb_feedback(both(), feedback("fb-b", label="stayed", observed=600), partition=2, now=100)
    entry = absorb_feedback(entry, feedback("fb-a", label="churned", observed=550), partition=2, now=100)
    assert entry is not None and newest_feedback(entry)["event_id"] == "fb-b"  # type: ignore[index]
    assert newest_feedback(both()) is None


def test_late_feedback_labels_the_kept_trace_with_an_id_derived_from_the_feedback() -> None:
    marker = absorb_feedback(done_marker(), feedback(), partition=2, now=200)
    assert marker is not None
    rest, [(event_id, trace)] = apply_late_feedback(marker)
    assert event_id == labelled_event_id("p1", feedback()) != labelled_event_id("p1", feedback("fb-2"))
    assert event_id == labelled_event_id("p1", feedback())  # a redelivery after a crash: the same id
    assert trace["model_version"] == "2" and trace["features"] == {"age": 41.0} and trace["label"] == "churned"
    assert "b" not in rest and rest["t"] == trace and rest["d"] == 100 and rest["f"] == ["fb-1"]


def test_late_feedback_survives_the_changelog_round_trip() -> None:
    marker = json.loads(json.dumps(done_marker()))
    marker = absorb_feedback(marker, feedback(), partition=2, now=200)
    assert marker is not None
    _, [(_, trace)] = apply_late_feedback(marker)
    assert trace["label"] == "churned" and trace["model_name"] == "churn"


def test_late_feedback_needs_a_done_marker() -> None:
    with pytest.raises(ValueError, match="done marker only"):
        apply_late_feedback(both())


# ---------------------------------------------------------------- the Joiner


def test_feedback_before_the_response_rides_on_the_one_trace() -> None:
    joiner, producer = make_joiner(lineage())
    entry = absorb(None, REQUEST, summarize(REQUEST, request()), partition=2, now=100)
    entry = absorb_feedback(entry, feedback(), partition=2, now=100)
    assert entry is not None
    joiner.advance("p1", entry, now=100)
    assert traces(producer) == []
    entry = absorb(joiner.table.data["p1"], RESPONSE, summarize(RESPONSE, response()), partition=2, now=101)
    assert entry is not None
    joiner.advance("p1", entry, now=101)
    [trace] = traces(producer)
    assert trace["event_id"] == trace_event_id("p1", to_micros(at(100)))
    assert trace["label"] == "churned" and trace["feedback_event_id"] == "fb-1" and trace["model_version"] == "2"
    assert joiner.metrics.feedback_joined.labels("trace")._value.get() == 1
    # a redelivery of that Feedback after the trace adds nothing
    assert absorb_feedback(joiner.table.data["p1"], feedback(), partition=2, now=102) is None


def test_feedback_after_the_trace_sends_one_labelled_copy() -> None:
    joiner, producer = make_joiner(lineage())
    joiner.advance("p1", both(), now=100)
    [plain] = traces(producer)
    assert plain["label"] is None and plain["feedback_event_id"] is None
    entry = absorb_feedback(joiner.table.data["p1"], feedback(outcome=1.0), partition=2, now=200)
    assert entry is not None
    joiner.advance("p1", entry, now=200)
    _, labelled = traces(producer)
    assert labelled["event_id"] == labelled_event_id("p1", feedback())
    assert {k: labelled[k] for k in LABEL_FIELDS} == {
        "label": "churned", "outcome": 1.0, "feedback_source": "crm", "feedback_time": at(500),
        "feedback_event_id": "fb-1",
    }
    same = ("model_name", "model_version", "request_event_id", "response_event_id", "features", "outputs")
    assert {k: labelled[k] for k in same} == {k: plain[k] for k in same}
    assert joiner.metrics.feedback_joined.labels("late")._value.get() == 1
    assert joiner.metrics.traces_out._value.get() == 1  # a labelled copy is not a new prediction
    marker = changelog(producer, joiner)[-1][1]
    assert marker["f"] == ["fb-1"] and "b" not in marker and marker["d"] == 100
    # the done marker keeps its retention: it is forgotten at the same time as before
    joiner.on_timer(now=400, owns=lambda p: True)
    assert "p1" not in joiner.table.data


def test_feedback_for_a_prediction_that_never_comes_is_dropped_after_the_retention() -> None:
    joiner, producer = make_joiner(lineage())
    entry = absorb_feedback(None, feedback(pid="p7"), partition=1, now=100)
    assert entry is not None
    joiner.advance("p7", entry, now=100)
    joiner.on_timer(now=399, owns=lambda p: True, caught_up=lambda p: True)
    assert "p7" in joiner.table.data
    joiner.on_timer(now=400, owns=lambda p: True, caught_up=lambda p: True)
    assert "p7" not in joiner.table.data and traces(producer) == []
    assert joiner.metrics.feedback_dropped._value.get() == 1


def test_a_marker_without_a_kept_trace_drops_late_feedback_and_stays_done() -> None:
    joiner, producer = make_joiner(lineage())
    old_marker = {"p": 2, "d": 100, "m": "churn", "v": "2"}  # written before markers kept their trace
    entry = absorb_feedback(old_marker, feedback(), partition=2, now=200)
    assert entry is not None
    joiner.advance("p1", entry, now=200)
    assert traces(producer) == [] and joiner.table.data["p1"] == {**old_marker, "f": ["fb-1"]}
    assert joiner.metrics.feedback_dropped._value.get() == 1


def test_traces_are_encoded_with_the_newest_revision() -> None:
    catalog = default_catalog()
    newest = max(int(path.name.split(".")[1][1:]) for path in Path("schemas/avsc").glob("PredictionTrace.v*.avsc"))
    assert newest >= 2 and catalog.current("PredictionTrace").revision == newest
