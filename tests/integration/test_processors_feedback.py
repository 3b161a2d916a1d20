"""Ground truth on the real broker: Feedback joined to its prediction's trace, before or after it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from provline.schemas import Topics
from tests.integration.test_processors_join import Events, WorkerProcess, start_worker
from tests.integration.test_processors_stream import (
    DRAIN_SECONDS,
    ROLLBACK_AT_MS,
    ROLLOUT_AT_MS,
    TraceReader,
    halves_of,
    lineage_events,
    produce,
    wait_ready,
)

pytestmark = pytest.mark.integration

PREDICTIONS = 100
SPACING_MS = 500  # 100 predictions over 50 s of event time: the rollout and the rollback in the middle
DEADLINE_SECONDS = 30


@pytest.fixture
def worker(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[WorkerProcess]:
    started = start_worker(kafka_bootstrap, topics, tmp_path / "data", tmp_path / "worker.log")
    try:
        wait_ready(started)
        yield started
    finally:
        started.stop()


def expected_version(index: int) -> str:
    return "2" if ROLLOUT_AT_MS <= index * SPACING_MS < ROLLBACK_AT_MS else "1"


def feedback(events: Events, base: datetime, index: int) -> tuple[str, bytes]:
    return events("Feedback", {
        "prediction_id": f"p-{index:05d}", "label": f"label-{index}", "outcome": float(index), "source": "crm",
        "observed_time": base + timedelta(milliseconds=index * SPACING_MS + 1_000),
    })


def test_feedback_before_and_after_the_trace_labels_each_prediction_once(
    kafka_bootstrap: str, topics: Topics, worker: WorkerProcess
) -> None:
    events = Events()
    base = datetime.now(UTC) - timedelta(minutes=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    produce(producer, topics.lineage, lineage_events(events, base))
    requests, responses = halves_of(events, base, PREDICTIONS, spacing_ms=SPACING_MS)

    early = set(range(0, PREDICTIONS, 10))  # feedback between the request and the response
    late = set(range(5, PREDICTIONS, 10))  # feedback once the trace is out
    early_duplicated, late_duplicated = 20, 35
    early_feedback = {i: feedback(events, base, i) for i in early}
    late_feedback = {i: feedback(events, base, i) for i in late}

    # same key, same partition: each early Feedback lands after its request and before its response
    first = requests + [early_feedback[i] for i in sorted(early)] + [early_feedback[early_duplicated]]
    first += [r for i, r in enumerate(responses) if i not in early]
    produce(producer, topics.inference, first)

    traces: dict[str, list[dict[str, Any]]] = {}
    reader = TraceReader(kafka_bootstrap, [topics.traces])

    def collect(until: Any) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not until():
            assert time.monotonic() < deadline, f"only {len(traces)} predictions traced"
            worker.check_alive()
            for _, value in reader.poll():
                traces.setdefault(value["prediction_id"], []).append(value)

    def labelled() -> dict[str, list[dict[str, Any]]]:
        return {pid: [t for t in found if t["feedback_event_id"]] for pid, found in traces.items()
                if any(t["feedback_event_id"] for t in found)}

    try:
        collect(lambda: len(traces) == PREDICTIONS - len(early))
        late_stream = [late_feedback[i] for i in sorted(late)] + [late_feedback[late_duplicated]]
        late_stream += [r for i, r in enumerate(responses) if i in early]
        produce(producer, topics.inference, late_stream)
        collect(lambda: len(traces) == PREDICTIONS and len(labelled()) == len(early) + len(late))
        drain_until = time.monotonic() + DRAIN_SECONDS  # a second labelled copy would show up by now
        while time.monotonic() < drain_until:
            for _, value in reader.poll():
                traces.setdefault(value["prediction_id"], []).append(value)
    finally:
        reader.close()

    assert len(traces) == PREDICTIONS
    for pid, found in traces.items():
        index = int(pid.split("-")[1])
        assert all(t["model_version"] == expected_version(index) and t["complete"] for t in found), found
        with_label = [t for t in found if t["feedback_event_id"]]
        if index in early:  # the one trace carries the label
            assert len(found) == 1, (pid, len(found))
            key, sent = early_feedback[index]
        elif index in late:  # the trace, then one labelled copy with an id of its own
            assert len(found) == 2 and len(with_label) == 1, (pid, [t["feedback_event_id"] for t in found])
            assert found[0]["label"] is None and found[0]["event_id"] != with_label[0]["event_id"]
            key, sent = late_feedback[index]
        else:
            assert len(found) == 1 and not with_label, (pid, found)
            continue
        [trace] = with_label
        assert key == pid
        feedback_value = events.catalog.decode(sent).value
        assert trace["feedback_event_id"] == feedback_value["event_id"]
        assert (trace["label"], trace["outcome"], trace["feedback_source"]) == (f"label-{index}", float(index), "crm")
        assert trace["feedback_time"] == feedback_value["observed_time"]
        assert trace["request_event_id"] is not None and trace["response_event_id"] is not None
    versions = {expected_version(i) for i in early | late}
    assert versions == {"1", "2"}  # labels are joined on both sides of the rollout
