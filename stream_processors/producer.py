"""A librdkafka producer for the join's hot path: traces, join-table changelog records, dead letters.

Faust's own producer sends one message per event-loop turn and stalls the consumer while its
buffer is full, which caps a worker at a few thousand messages a second. The join produces up
to three messages per prediction, so it hands them to confluent-kafka instead (batched and
sent by librdkafka's own threads) and awaits :meth:`BatchProducer.flush` at the end of every
batch, before Faust may ack (and later commit) the batch's offsets: nothing is committed that
was not delivered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from provline.config import KafkaSettings
from provline.schemas.dead_letters import Headers

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_SECONDS = 30.0
LINGER_MS = 5


class DeliveryError(RuntimeError):
    """Some messages of a batch were not delivered; the batch must not be acked."""


class BatchProducer:
    """Non-blocking ``produce``, awaitable ``flush``. Use from one event loop."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        self._config = kafka.librdkafka(**{
            "client.id": client_id, "acks": "all", "enable.idempotence": True, "linger.ms": LINGER_MS,
            "compression.type": "lz4",
        })
        self._client: Producer | None = None  # made on first use: building an app connects to nothing
        self._failed: list[str] = []
        self._flushing = asyncio.Lock()
        self.pending = 0

    @property
    def _producer(self) -> Producer:
        if self._client is None:
            self._client = Producer(self._config)
        return self._client

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failed.append(f"{message.topic()}[{message.partition()}]: {error}")

    def produce(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
                headers: Headers | None = None) -> None:
        """Queue one message (``value=None`` is a tombstone); blocks only while librdkafka's queue is full."""
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.pending += 1

    async def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:
        """Wait until every message queued before the call is delivered; DeliveryError if any was not.

        One flush at a time: the join's batch and its deadline timer both flush, and a second flush
        must not return while the first still waits for messages (its caller then releases changelog
        records covering them). Messages stay counted until a flush delivered them, so the flush after
        a failed one fails too, until they are delivered."""
        async with self._flushing:
            queued = self.pending
            if not queued:
                return
            try:
                left = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout)
            except KafkaException as exc:
                raise DeliveryError(f"producer flush failed: {exc}") from exc
            failed, self._failed = self._failed, []
            if left or failed:
                raise DeliveryError(
                    f"{left} messages undelivered after {timeout}s and {len(failed)} failed (first: "
                    f"{failed[:1]}); is the broker reachable? the batch will be consumed again"
                )
            self.pending -= queued  # those queued during this flush are counted until the next one

    def close(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:
        if self._client is None:
            return
        left = self._client.flush(timeout)
        self._client = None  # librdkafka's threads stop when the last reference goes
        if left:
            log.error("%d trace/changelog messages were not delivered at shutdown; they are re-made on restart",
                      left)
