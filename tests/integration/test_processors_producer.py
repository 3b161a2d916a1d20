"""The join's librdkafka producer (stream_processors/producer.py) against the real broker: a flush that
returns has delivered everything queued before it, even while another flush is under way or after one
failed. The join releases a batch's changelog records (its position record among them) only after a
flush returns; the batch's agent and the deadline timer flush concurrently, so a flush that returned
early let a position record reach the changelog before the traces it covers. A worker killed then
lost those traces: its successor started past them (found by the worker-kill cluster test, 32 traces of
one partition never sent).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from deploy.local.kafka import create_topics
from deploy.local.kafka.broker import free_port
from provline.config import KafkaSettings
from provline.stream_processors.producer import BatchProducer, DeliveryError
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

MESSAGES = 20_000


def delivered(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watermarks-{uuid.uuid4().hex[:8]}"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions))
    finally:
        consumer.close()


def _led(bootstrap: str, topic: str) -> bool:
    try:
        return delivered(bootstrap, topic, 2) == 0
    except KafkaException:
        return False


async def flush_outcome(producer: BatchProducer, timeout: float) -> str:
    """delivered, undelivered (still queued: the next flush waits again) or lost (given up on)."""
    try:
        await producer.flush(timeout=timeout)
    except DeliveryError as exc:
        return "lost" if "was lost" in str(exc) else "undelivered"
    return "delivered"


def test_a_flush_called_while_another_runs_returns_only_when_everything_before_it_is_delivered(
    kafka_bootstrap: str,
) -> None:
    topic = f"producer-{uuid.uuid4().hex[:10]}"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    wait_until(lambda: _led(kafka_bootstrap, topic), "the new topic's partitions to have leaders", 30)

    async def flush_beside_another() -> int:
        producer = BatchProducer(KafkaSettings(bootstrap=kafka_bootstrap), client_id="flush-test",
                                 dead_letter_topic="dlq")
        try:
            for n in range(MESSAGES):
                producer.produce(topic, str(n).encode(), b"x" * 200)
            batch = asyncio.create_task(producer.flush())  # the batch's flush, under way
            await asyncio.sleep(0)
            await producer.flush()  # the timer's
            seen = delivered(kafka_bootstrap, topic, 2)
            await batch
            return seen
        finally:
            producer.close()

    assert asyncio.run(flush_beside_another()) == MESSAGES


def test_after_a_failed_flush_the_next_one_fails_too_until_the_messages_are_delivered() -> None:
    async def flush_twice() -> list[str]:
        producer = BatchProducer(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"), client_id="flush-test",
                                 dead_letter_topic="dlq")
        outcomes = []
        try:
            producer.produce("nowhere", None, b"trace")
            for _ in range(2):
                outcomes.append(await flush_outcome(producer, 0.5))
        finally:
            producer.close(timeout=0.1)
        return outcomes

    assert asyncio.run(flush_twice()) == ["undelivered", "undelivered"]


def test_once_a_message_is_lost_every_flush_fails_even_when_later_ones_are_delivered(kafka_bootstrap: str) -> None:
    """librdkafka drops a message it gave up on from its queue: the flush after the failed one returned
    and its caller released positions past the lost message (no worker made it again)."""
    from tests.integration.test_processors_lost import set_topic_config

    topic = f"producer-{uuid.uuid4().hex[:10]}"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    wait_until(lambda: _led(kafka_bootstrap, topic), "the new topic's partitions to have leaders", 30)
    set_topic_config(kafka_bootstrap, topic, "message.timestamp.before.max.ms", "1")  # refuses every write

    async def flush_after_loss() -> list[str]:
        producer = BatchProducer(KafkaSettings(bootstrap=kafka_bootstrap), client_id="flush-test",
                                 dead_letter_topic="dlq")
        outcomes = []
        try:
            producer.produce(topic, b"k", b"refused")
            for _ in range(2):
                outcomes.append(await flush_outcome(producer, 10))
            set_topic_config(kafka_bootstrap, topic, "message.timestamp.before.max.ms", str(2**63 - 1))
            producer.produce(topic, b"k", b"taken")
            outcomes.append(await flush_outcome(producer, 10))
        finally:
            producer.close(timeout=5)
        return outcomes

    assert asyncio.run(flush_after_loss()) == ["lost", "lost", "lost"]
