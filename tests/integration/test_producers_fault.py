"""Fault test: the broker is away while a job emits; nothing is lost, nothing is duplicated."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from deploy.local.kafka import LocalKafka
from provline.producers import JobSettings, build_emitter
from provline.schemas import Topics, default_catalog

pytestmark = pytest.mark.integration

EVENTS = 20_000
KEYS = 40


def feedback(index: int) -> dict:
    return {"prediction_id": f"prediction-{index % KEYS}", "label": str(index), "outcome": None,
            "source": "fault-test", "observed_time": 1_700_000_000_000_000 + index}


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 120.0) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fault-reader",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    received, deadline = [], time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.5)
            received.extend(m for m in batch if m.error() is None)
            if len(received) >= expected:
                # keep reading briefly: a duplicate would arrive after the expected count
                quiet_until = quiet_until or time.monotonic() + 2.0
                if time.monotonic() >= quiet_until:
                    break
    finally:
        consumer.close()
    return received


def test_events_emitted_while_the_broker_is_down_arrive_once_in_order(
    local_kafka: LocalKafka | None, topics: Topics, tmp_path: Path
) -> None:
    if local_kafka is None:
        pytest.fail("this test stops and restarts the broker: run it with the local broker, "
                    "not TEST_KAFKA_BOOTSTRAP")
    settings = JobSettings(kafka={"bootstrap": local_kafka.bootstrap}, topics={"prefix": topics.prefix},
                           emitter={"spool_dir": tmp_path / "spool"})
    local_kafka.stop()
    try:
        job = build_emitter(settings, producer_name="fault-job")
        for index in range(EVENTS):
            job.emit("Feedback", feedback(index))
        assert job.close(timeout=2.0) is False  # nothing could be delivered: all of it is in the spool
        assert job.backlog == EVENTS + 1  # and the session's final seal
    finally:
        local_kafka.start()

    next_process = build_emitter(settings, producer_name="fault-job-next")
    assert next_process.close(timeout=60.0) is True

    messages = read_all(local_kafka.bootstrap, topics.inference, EVENTS)
    decoded = [default_catalog().decode(m.value()).value for m in messages]
    assert len({event["event_id"] for event in decoded}) == len(decoded) == EVENTS
    per_key: dict[str, list[int]] = defaultdict(list)
    for message, event in zip(messages, decoded, strict=True):
        assert message.key().decode() == event["prediction_id"]
        per_key[event["prediction_id"]].append(int(event["label"]))
    assert len(per_key) == KEYS
    assert all(labels == sorted(labels) for labels in per_key.values())
