"""Offsets Faust skipped are read again: a restarted worker whose group committed past unread events.

faust-streaming can ack, so commit, messages it never hands to an agent. The test makes that
happen on purpose: with the worker stopped, it commits the group's offsets past a Deployment on
the lineage topic and a prediction's halves on the inference topic. The restarted worker must see
from the positions in its tables that those offsets were never decided, and read them again.
"""

from __future__ import annotations

import hashlib
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from provline.schemas import Topics
from provline.schemas.events import utcnow
from tests.integration.test_processors_join import Events, free_port, start_worker
from tests.integration.test_processors_stream import TraceReader, wait_ready

pytestmark = pytest.mark.integration

PARTITION = 0  # every event of this test goes to partition 0 of its topic
REWIND_DEADLINE_SECONDS = 60  # the stall time (10 s) plus recovery, on a loaded machine
TRACE_DEADLINE_SECONDS = 60


def produce(producer: Producer, topic: str, messages: list[tuple[str, bytes]]) -> None:
    for key, value in messages:
        producer.produce(topic, key=key.encode(), value=value, partition=PARTITION)
    assert producer.flush(10) == 0, "the test broker did not take every message"


def prediction(events: Events, pid: str, at: object) -> list[tuple[str, bytes]]:
    body = pid.encode()
    return [
        events("InferenceRequest", {
            "prediction_id": pid, "endpoint": "/predict", "method": "POST", "path": "/predict",
            "body_size": len(body), "body_sha256": hashlib.sha256(body).hexdigest(), "features": {"x": 1.0},
        }, event_time=at),
        events("InferenceResponse", {
            "prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 2,
            "body_sha256": hashlib.sha256(b"{}").hexdigest(), "latency_us": 900,
        }, event_time=at),
    ]


def deployment(events: Events, version: str, at: object) -> tuple[str, bytes]:
    return events("Deployment", {"model_name": "churn", "model_version": version, "environment": "prod",
                                 "endpoint": "/predict", "action": "DEPLOY"}, event_time=at)


def commit_to_end(bootstrap: str, group: str, topics: list[str]) -> None:
    """Commit the (empty) group's offsets at the end of partition 0 of ``topics``: what Faust does
    when it acks messages it skipped."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        ends = [TopicPartition(topic, PARTITION, consumer.get_watermark_offsets(TopicPartition(topic, PARTITION))[1])
                for topic in topics]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def rewinds(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("provline_processors_rewinds_total "):
                return float(line.split()[1])
    return 0.0


def traces_of(reader: TraceReader, wanted: set[str]) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + TRACE_DEADLINE_SECONDS
    while not wanted <= found.keys() and time.monotonic() < deadline:
        for _, trace in reader.poll():
            found[str(trace["prediction_id"])] = trace
    return found


def test_a_restarted_worker_reads_again_what_its_group_committed_unread(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    events = Events()
    t0 = utcnow() - timedelta(minutes=10)
    t1 = t0 + timedelta(minutes=5)  # version 2 replaces version 1 here
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    produce(producer, topics.lineage, [
        events("RunEvent", {"run_id": "run-1", "name": "train", "state": "COMPLETED",
                            "code": {"repo": "git@example.com:acme/churn", "commit": "c0ffee"}}, event_time=t0),
        *(events("ModelVersion", {"model_name": "churn", "version": version, "artifact_uri": f"s3://m/{version}",
                                  "artifact_sha256": version * 64, "run_id": "run-1", "datasets": [],
                                  "feature_sets": []}, event_time=t0) for version in ("1", "2")),
        deployment(events, "1", t0 + timedelta(seconds=1)),
    ])
    produce(producer, topics.inference, prediction(events, "before-stop", t0 + timedelta(minutes=1)))
    reader = TraceReader(kafka_bootstrap, [topics.traces])
    try:
        first = start_worker(kafka_bootstrap, topics, tmp_path / "data", tmp_path / "first.log")
        try:
            wait_ready(first)
            assert traces_of(reader, {"before-stop"}).get("before-stop", {}).get("model_version") == "1"
        finally:
            first.stop()  # graceful: its positions are in the changelog, the group is empty

        # what a skipping Faust leaves behind: events the group's committed offsets say were read
        produce(producer, topics.lineage, [deployment(events, "2", t1)])
        produce(producer, topics.inference, prediction(events, "skipped", t0 + timedelta(minutes=2)))
        commit_to_end(kafka_bootstrap, f"{topics.prefix}-processors", [topics.lineage, topics.inference])

        metrics_port = free_port()
        second = start_worker(kafka_bootstrap, topics, tmp_path / "data-2", tmp_path / "second.log",
                              extra_env={"PROVLINE_PROCESSORS__METRICS_PORT": str(metrics_port)})
        try:
            wait_ready(second)
            deadline = time.monotonic() + REWIND_DEADLINE_SECONDS
            while rewinds(metrics_port) < 2:  # one per topic
                second.check_alive()
                assert time.monotonic() < deadline, (
                    f"the worker did not read the skipped offsets again:\n{second.log_path.read_text()[-3000:]}")
                time.sleep(0.5)  # polling interval
            produce(producer, topics.inference, prediction(events, "after-restart", t1 + timedelta(minutes=1)))
            found = traces_of(reader, {"skipped", "after-restart"})
        finally:
            second.stop()
    finally:
        reader.close()

    assert found.keys() >= {"skipped", "after-restart"}, f"traced only {sorted(found)}"
    assert (found["skipped"]["complete"], found["skipped"]["model_version"]) == (True, "1")
    # the skipped Deployment was read again: a later prediction is served by version 2
    assert (found["after-restart"]["complete"], found["after-restart"]["model_version"]) == (True, "2")
