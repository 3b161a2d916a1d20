"""Traces the broker does not take, on the real broker with real workers.

A trace librdkafka gives up on (here: the traces topic refuses every write, its timestamps being
more than a millisecond old when they arrive) was dropped from its queue: the next flush returned and the
join released positions past it, so no worker ever made it again. Now the worker exits and its
successor, once the topic takes writes, makes every trace. A trace the broker refuses for its size
would be refused after every restart: it becomes a dead letter naming its prediction, and the
traces after it go out.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from provline.schemas import Topics, default_catalog
from provline.sink.queries import complete_trace
from provline.sink.verifier import verify_store
from provline.sink.verify import DEAD_LETTERED, MISSING, Trust
from tests.integration.test_processors_join import (
    Events,
    outputs,
    produce,
    read_from_start,
    start_worker,
    wait_settled,
)
from tests.integration.test_sink_store import run_writer_until, sink_settings

pytestmark = pytest.mark.integration

PREDICTIONS = 6
EXIT_DEADLINE_S = 60.0
TRACE_DEADLINE_S = 60.0


def set_topic_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    resource = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the answer: its futures die with it
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def lineage_and_predictions(events: Events, pids: list[str], *, features: dict[str, Any] | None = None,
                            ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    lineage = [
        events("RunEvent", {"run_id": "run-1", "name": "train", "state": "COMPLETED",
                            "code": {"repo": "git@example.com:acme/churn", "commit": "abc123"}}),
        events("ModelVersion", {"model_name": "churn", "version": "1", "artifact_uri": "s3://m/1",
                                "artifact_sha256": "f" * 64, "run_id": "run-1", "datasets": [], "feature_sets": []}),
        events("Deployment", {"model_name": "churn", "model_version": "1", "environment": "prod",
                              "endpoint": "/predict", "action": "DEPLOY"}),
    ]
    halves = []
    for pid in pids:
        body = pid.encode()
        halves.append(events("InferenceRequest", {
            "prediction_id": pid, "endpoint": "/predict", "method": "POST", "path": "/predict",
            "body_size": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "features": (features or {}).get(pid, {"x": 1.0})}))
        halves.append(events("InferenceResponse", {
            "prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 2,
            "body_sha256": hashlib.sha256(b"{}").hexdigest(), "latency_us": 1000}))
    return lineage, halves


def traced_and_dead(bootstrap: str, topics: Topics, until: Any, deadline_s: float, workers: list[Any],
                    ) -> tuple[set[str], list[Any]]:
    consumer = read_from_start(bootstrap, [topics.traces, topics.dlq])
    traced: set[str] = set()
    dead: list[Any] = []
    try:
        deadline = time.monotonic() + deadline_s
        for message in outputs(consumer, workers, lambda: deadline):
            if message.topic() == topics.dlq:
                dead.append(message)
            else:
                traced.add(default_catalog().decode(message.value()).value["prediction_id"])
            if until(traced, dead):
                break
    finally:
        consumer.close()
    return traced, dead


def test_a_worker_whose_trace_was_lost_exits_and_its_successor_makes_every_trace(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path,
) -> None:
    set_topic_config(kafka_bootstrap, topics.traces, "message.timestamp.before.max.ms", "1")  # INVALID_TIMESTAMP
    first = start_worker(kafka_bootstrap, topics, tmp_path / "processors-1", tmp_path / "worker-1.log")
    try:
        wait_settled([first], topics)
        events = Events()
        pids = [f"lost-{n}" for n in range(PREDICTIONS)]
        lineage, halves = lineage_and_predictions(events, pids)
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        produce(producer, topics.lineage, lineage)
        produce(producer, topics.inference, halves)
        deadline = time.monotonic() + EXIT_DEADLINE_S
        while first.process.poll() is None:
            assert time.monotonic() < deadline, "the worker whose traces were lost kept running (and released " \
                                                "its positions past them)"
            time.sleep(0.2)  # polling interval
        assert first.process.returncode != 0
        assert "a message was lost" in first.log_path.read_text()
    finally:
        first.stop()

    set_topic_config(kafka_bootstrap, topics.traces, "message.timestamp.before.max.ms", str(2**63 - 1))
    second = start_worker(kafka_bootstrap, topics, tmp_path / "processors-2", tmp_path / "worker-2.log")
    try:
        traced, _ = traced_and_dead(kafka_bootstrap, topics, lambda t, d: t >= set(pids), TRACE_DEADLINE_S, [second])
        assert traced >= set(pids), f"traced after the restart: {sorted(traced)}"
    finally:
        second.stop()


def test_a_trace_the_broker_refuses_for_its_size_becomes_a_dead_letter_and_the_rest_go_out(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, store: Client, chdb_path: str,
) -> None:
    """... and the sink stores the dead letter, so that verify names the trace's place in its worker's chain
    dead-lettered (TooLarge), not deleted."""
    set_topic_config(kafka_bootstrap, topics.traces, "max.message.bytes", "4000")
    worker = start_worker(kafka_bootstrap, topics, tmp_path / "processors", tmp_path / "worker.log")
    try:
        wait_settled([worker], topics)
        events = Events()
        pids = [f"sized-{n}" for n in range(PREDICTIONS)]
        huge = {"sized-2": {f"feature_{n}": float(n) for n in range(2000)}}  # a trace of tens of kB
        lineage, halves = lineage_and_predictions(events, pids, features=huge)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 10_000_000})
        set_topic_config(kafka_bootstrap, topics.inference, "max.message.bytes", "10000000")
        produce(producer, topics.lineage, lineage)
        produce(producer, topics.inference, halves)
        small = set(pids) - set(huge)
        traced, dead = traced_and_dead(kafka_bootstrap, topics, lambda t, d: t >= small and d, TRACE_DEADLINE_S,
                                       [worker])
        assert traced == small
        [letter] = dead
        headers = dict(letter.headers() or [])
        assert letter.key() == b"sized-2" and letter.value() is None
        assert headers["provline-dlq-reason"] == b"TooLarge"
        assert headers["provline-source-topic"] == topics.traces.encode()
        assert b"max.message.bytes" in headers["provline-dlq-error"]
        assert len(headers["provline-event-id"]) == 36 and len(headers["provline-event-hash"]) == 64  # verify's link
        worker.check_alive()
    finally:
        worker.stop()

    def stored() -> bool:
        letters = store.query("SELECT count() FROM dead_letters").result_rows[0][0]
        traces = store.query("SELECT uniqExact(prediction_id) FROM prediction_traces").result_rows[0][0]
        return bool(letters >= 1 and traces >= len(small))

    run_writer_until(sink_settings(kafka_bootstrap, topics, chdb_path), stored, "the dead letter and the traces stored")
    [(session, event_hash, reason)] = store.query(
        "SELECT producer_session, hash, reason FROM dead_letters FINAL").result_rows
    assert (session, event_hash, reason) == (headers["provline-event-session"].decode(),
                                             headers["provline-event-hash"].decode(), "TooLarge")
    report = verify_store(store, default_catalog(), Trust(), sessions=[session])
    gaps = [f for f in report.findings if f.problem in (DEAD_LETTERED, MISSING)]
    assert [f.problem for f in gaps] == [DEAD_LETTERED], report.findings
    assert event_hash[:16] in gaps[0].detail and "TooLarge" in gaps[0].detail and "max.message.bytes" in gaps[0].detail
    # the trace after the gap is verified: its predecessor was never stored, and the detail says so
    [(after,)] = store.query("SELECT prediction_id FROM prediction_traces WHERE prev_hash = {h:String}",
                             parameters={"h": event_hash}).result_rows
    found = complete_trace(store, after, catalog=default_catalog(), trust=Trust())
    assert found is not None
    [prediction] = [n for n in found["chain"]["nodes"] if n["kind"] == "prediction"]
    assert prediction["verification"]["status"] == "verified", prediction["verification"]
    assert f"linked to a predecessor ({event_hash[:16]}…) that was dead-lettered, never stored: TooLarge" in (
        prediction["verification"]["detail"])
