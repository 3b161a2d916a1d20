"""A worker decides no trace from lineage a stalled peer has not passed on yet.

Two workers share the lineage topic. One is frozen (SIGSTOP: no heartbeat, no changelog) just
before a rollout is published on a lineage partition it holds. The other still reads its own
lineage partitions to the end; its traces for requests after the rollout must wait until it has
the rollout too (once the frozen peer's session expires and its partitions come over), not go out
at once with the version the rollout replaced.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from provline.schemas import Topics
from provline.schemas.events import utcnow
from tests.integration.test_processors_join import (
    Events,
    WorkerProcess,
    start_worker,
    wait_settled,
)
from tests.integration.test_processors_stream import TraceReader

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_S = 6  # the frozen worker's partitions move to the other one after this long
LINEAGE_WAIT_S = 90  # longer than the hand-over: a held trace must not time out into the old version
PREDICTIONS = 40
TRACE_DEADLINE_S = 75.0


@pytest.fixture
def two_workers(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    env = {"PROVLINE_KAFKA__SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
           "PROVLINE_PROCESSORS__LINEAGE_WAIT_S": str(LINEAGE_WAIT_S)}
    started = [start_worker(kafka_bootstrap, topics, tmp_path / f"processors-{n}", tmp_path / f"worker-{n}.log",
                            extra_env=env) for n in range(2)]
    try:
        wait_settled(started, topics)
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
            worker.stop()


def prediction(events: Events, pid: str, at: Any) -> list[tuple[str, bytes]]:
    body = pid.encode()
    return [
        events("InferenceRequest", {"prediction_id": pid, "endpoint": "/predict", "method": "POST",
                                    "path": "/predict", "body_size": len(body),
                                    "body_sha256": hashlib.sha256(body).hexdigest(), "features": {}},
               event_time=at),
        events("InferenceResponse", {"prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 2,
                                     "body_sha256": hashlib.sha256(b"{}").hexdigest(), "latency_us": 900},
               event_time=at + timedelta(milliseconds=1)),
    ]


def send(producer: Producer, topic: str, messages: list[tuple[str, bytes]], partition: int) -> None:
    for key, value in messages:
        producer.produce(topic, key=key.encode(), value=value, partition=partition)
    assert producer.flush(10) == 0, "the test broker did not take every message"


def traces_of(reader: TraceReader, ids: set[str], workers: list[WorkerProcess]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + TRACE_DEADLINE_S
    while not ids <= set(found) and time.monotonic() < deadline:
        for worker in workers:
            if worker.process.poll() is not None:
                worker.check_alive()
        for _, trace in reader.poll():
            if trace.get("prediction_id") in ids:
                found.setdefault(trace["prediction_id"], []).append(trace)
    return found


def test_a_trace_waits_for_a_rollout_a_frozen_peer_holds_and_then_names_the_new_version(
    kafka_bootstrap: str, topics: Topics, two_workers: list[WorkerProcess]
) -> None:
    frozen, reading = two_workers
    if not frozen.assignment().get(topics.lineage):
        frozen, reading = reading, frozen
    frozen_lineage = frozen.assignment()[topics.lineage][0]
    reading_inference = reading.assignment()[topics.inference][0]

    events = Events()
    now = utcnow()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    lineage = [events("RunEvent", {"run_id": "run-1", "name": "train", "state": "COMPLETED",
                                   "code": {"repo": "git@example.com:acme/churn", "commit": "c0ffee"}},
                      event_time=now - timedelta(hours=1))]
    lineage += [events("ModelVersion", {"model_name": "churn", "version": version,
                                        "artifact_uri": f"s3://models/churn/{version}", "artifact_sha256": version * 64,
                                        "run_id": "run-1", "datasets": [], "feature_sets": []},
                       event_time=now - timedelta(hours=1)) for version in ("1", "2")]
    lineage.append(events("Deployment", {"model_name": "churn", "model_version": "1", "environment": "prod",
                                         "endpoint": "/predict", "action": "DEPLOY"},
                          event_time=now - timedelta(minutes=30)))
    send(producer, topics.lineage, lineage, frozen_lineage)

    reader = TraceReader(kafka_bootstrap, [topics.traces])
    try:
        # both workers have version 1 in force: a prediction before the rollout is traced with it
        send(producer, topics.inference, prediction(events, "before", now - timedelta(minutes=20)), reading_inference)
        [before] = traces_of(reader, {"before"}, two_workers)["before"]
        assert (before["complete"], before["model_version"]) == (True, "1"), before

        os.kill(frozen.process.pid, signal.SIGSTOP)
        rollout = events("Deployment", {"model_name": "churn", "model_version": "2", "environment": "prod",
                                        "endpoint": "/predict", "action": "PROMOTE"},
                         event_time=now - timedelta(minutes=10))
        send(producer, topics.lineage, [rollout], frozen_lineage)
        after = {f"after-{n:02d}" for n in range(PREDICTIONS)}
        send(producer, topics.inference,
             [half for n, pid in enumerate(sorted(after)) for half in
              prediction(events, pid, now - timedelta(minutes=5, milliseconds=-n))], reading_inference)

        found = traces_of(reader, after, two_workers)
    finally:
        reader.close()
    assert set(found) == after, (f"{len(after - set(found))} predictions after the rollout have no trace\n"
                                 f"--- worker\n{reading.log_path.read_text()[-3000:]}")
    versions = {pid: [(t["complete"], t["model_version"]) for t in traces] for pid, traces in sorted(found.items())}
    assert all(v == [(True, "2")] for v in versions.values()), (
        f"traces decided before the frozen peer's rollout was read (complete, version): {versions}")
