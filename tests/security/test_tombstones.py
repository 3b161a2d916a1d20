"""Finding 10: a null-value message (a tombstone) on the inference topic stopped the join.

catalog.decode(None) raised TypeError inside the agent: it crashed and restarted (30 tombstones gave
19 crashes and ~70 s without joins) and a prediction whose halves were in the topic got no trace.
Any message a consumer cannot use goes to the dead-letter topic with a reason, under one header
convention for the sink and the processors, and nothing else is lost.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from provline.schemas import Topics, default_catalog
from provline.schemas import dead_letters as dlq
from provline.schemas.events import utcnow
from provline.sink.writer import plan_batch
from tests.helpers import StoredMessage
from tests.integration.test_processors_join import Events, produce, start_worker

pytestmark = pytest.mark.integration

TOMBSTONES = 30
PREDICTIONS = 5
DEADLINE_S = 90


def test_tombstones_are_dead_lettered_and_every_prediction_around_them_is_traced(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    events, now = Events(), utcnow()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    produce(producer, topics.lineage, [
        events("RunEvent", {"run_id": "run-1", "name": "train", "state": "COMPLETED",
                            "code": {"repo": "r", "commit": "c1"}}, event_time=now - timedelta(minutes=3)),
        events("ModelVersion", {"model_name": "m", "version": "1", "artifact_uri": "s3://m/1",
                                "artifact_sha256": "a" * 64, "run_id": "run-1", "datasets": [], "feature_sets": []},
               event_time=now - timedelta(minutes=2)),
        events("Deployment", {"model_name": "m", "model_version": "1", "environment": "prod",
                              "endpoint": "/p", "action": "DEPLOY"}, event_time=now - timedelta(minutes=1)),
    ])
    ids = [f"tomb-{n}" for n in range(PREDICTIONS)]
    for index, prediction_id in enumerate(ids):  # every prediction's key also gets tombstones, in between its halves
        key = prediction_id.encode()
        producer.produce(topics.inference, key=key, value=events("InferenceRequest", {
            "prediction_id": prediction_id, "endpoint": "/p", "method": "POST", "path": "/p", "body_size": 2,
            "body_sha256": "b" * 64})[1])
        for _ in range(TOMBSTONES // PREDICTIONS):
            producer.produce(topics.inference, key=key, value=None)
        producer.produce(topics.inference, key=key, value=events("InferenceResponse", {
            "prediction_id": prediction_id, "endpoint": "/p", "status": 200, "body_size": 2,
            "body_sha256": "c" * 64, "latency_us": index})[1])
    assert producer.flush(10) == 0

    log = tmp_path / "worker.log"
    worker = start_worker(kafka_bootstrap, topics, tmp_path / "data", log)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{topics.prefix}-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.traces, topics.dlq])
    traced: set[str] = set()
    letters = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        while (len(traced) < PREDICTIONS or len(letters) < TOMBSTONES) and time.monotonic() < deadline:
            worker.check_alive()
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if message.topic() == topics.dlq:
                letters.append(message)
            else:
                trace = default_catalog().decode(message.value()).value
                assert trace["complete"] is True, trace
                traced.add(trace["prediction_id"])
    finally:
        consumer.close()
        worker.stop()
    assert traced == set(ids)
    assert len(letters) == TOMBSTONES
    for letter in letters:
        headers = dict(letter.headers() or [])
        assert letter.value() is None and letter.key().decode() in ids
        assert headers[dlq.REASON] == b"CorruptEventError"
        assert b"tombstone" in headers[dlq.ERROR]
        assert headers[dlq.SOURCE_TOPIC] == topics.inference.encode()
    assert "crashed" not in log.read_text().lower()


def test_the_sink_dead_letters_a_tombstone_under_the_same_headers() -> None:
    plan = plan_batch([StoredMessage("provline.inference.v1", 1, 7, None, b"k")], default_catalog())
    [letter] = plan.dead_letters
    headers = dict(letter.headers())
    assert headers == {dlq.REASON: b"CorruptEventError", dlq.ERROR: headers[dlq.ERROR],
                       dlq.SOURCE_TOPIC: b"provline.inference.v1", dlq.SOURCE_PARTITION: b"1",
                       dlq.SOURCE_OFFSET: b"7"}
    assert b"tombstone" in headers[dlq.ERROR]
