"""A librdkafka producer for the join's hot path: traces, join-table changelog records, dead letters.

Faust's own producer sends one message per event-loop turn and stalls the consumer while its
buffer is full, which caps a worker at a few thousand messages a second. The join produces up
to three messages per prediction, so it hands them to confluent-kafka instead (batched and
sent by librdkafka's own threads) and awaits :meth:`BatchProducer.flush` at the end of every
batch, before Faust may ack (and later commit) the batch's offsets: nothing is committed that
was not delivered.

A message librdkafka gave up on is gone from its queue: a flush after it would return and let the
join release positions past a trace never sent. So a lost message breaks the producer for good
(every later flush fails, :attr:`BatchProducer.lost`) and the worker restarts from its released
positions, making the message again. A message the broker refuses for its size would be refused
again after every restart; it becomes a dead letter instead (its key and why, not its bytes), once
it was refused on its own: the broker refuses a whole record batch, small messages with a big one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from provline.config import KafkaSettings
from provline.schemas.dead_letters import Headers, dead_letter_headers

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_SECONDS = 30.0
LINGER_MS = 5
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
TOO_LARGE_REASON = "TooLarge"


class Refused(NamedTuple):
    """A message the broker refused for its size, to send again on its own (partition -1: any)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Any
    partition: int


class DeliveryError(RuntimeError):
    """Some messages of a batch were not delivered; the batch must not be acked."""


class BatchProducer:
    """Non-blocking ``produce``, awaitable ``flush``. Use from one event loop.

    ``dead_letter_topic``: where a message the broker refuses for its size goes, as a dead letter
    without its value, with the headers ``on_too_large(value)`` gives (the event it held)."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str, dead_letter_topic: str,
                 on_too_large: Callable[[bytes | None], Headers] = lambda value: []) -> None:
        self._config = kafka.librdkafka(**{
            "client.id": client_id, "acks": "all", "enable.idempotence": True, "linger.ms": LINGER_MS,
            "compression.type": "lz4",
        })
        self._client: Producer | None = None  # made on first use: building an app connects to nothing
        self._dead_letter_topic = dead_letter_topic
        self._flushing = asyncio.Lock()
        self.pending = 0
        self.lost: str | None = None  # the first message librdkafka gave up on: the worker must restart
        self._refused: list[Refused] = []  # refused for their size within a record batch, to send alone
        self._on_too_large = on_too_large  # called once per message refused for its size

    @property
    def _producer(self) -> Producer:
        if self._client is None:
            self._client = Producer(self._config)
        return self._client

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            return
        if error.code() in TOO_LARGE and message.topic() != self._dead_letter_topic:
            # its record batch was too large, maybe not the message: sent alone by the flush
            partition = message.partition()
            self._refused.append(Refused(message.topic() or "", message.key(), message.value(), message.headers(),
                                         -1 if partition is None else partition))
            return
        self._lose(message, error)

    def _on_lone_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None and error.code() in TOO_LARGE:
            self._dead_letter_too_large(message.topic() or "", message.key(), message.value(), str(error))
        elif error is not None:
            self._lose(message, error)

    def _lose(self, message: Message, error: KafkaError) -> None:
        where = f"{message.topic()}[{message.partition()}]: {error}"
        if self.lost is None:
            self.lost = where
            log.critical("a message was lost by the producer (%s): this worker must restart to make it again", where)

    def _dead_letter_too_large(self, topic: str, key: bytes | None, value: bytes | None, error: str) -> None:
        """A dead letter in place of a message refused for its size: its key, no value, why, and what it held."""
        size = len(value or b"")
        log.error("%s refused a %d-byte message (key %r): %s; dead-lettered without its value", topic, size, key,
                  error)
        headers = dead_letter_headers(TOO_LARGE_REASON, f"{topic} refused a {size}-byte message: {error}; raise "
                                      "the topic's max.message.bytes (and the producer's message.max.bytes) to keep "
                                      "such messages", topic=topic, partition=-1, offset=-1)
        self.produce(self._dead_letter_topic, key, None, headers=headers + self._on_too_large(value))

    def produce(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
                headers: Headers | None = None) -> None:
        """Queue one message (``value=None`` is a tombstone); blocks only while librdkafka's queue is full.
        One larger than the producer's ``message.max.bytes`` is dead-lettered at once, as the broker's
        refusals are."""
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() not in TOO_LARGE or topic == self._dead_letter_topic:
                    raise
                self._dead_letter_too_large(topic, key, value, str(exc.args[0]))
                return
        self.pending += 1

    async def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:
        """Wait until every message queued before the call is delivered; DeliveryError if any was not.

        One flush at a time: the join's batch and its deadline timer both flush, and a second flush
        must not return while the first still waits for messages (its caller then releases changelog
        records covering them). Messages stay counted until a flush delivered them, so the flush after
        a failed one fails too, until they are delivered; after a message was lost, every flush fails."""
        async with self._flushing:
            queued = self.pending
            if queued and self.lost is None:
                try:
                    left = await asyncio.get_running_loop().run_in_executor(None, self._deliver, timeout)
                except KafkaException as exc:
                    raise DeliveryError(f"producer flush failed: {exc}") from exc
                if left and self.lost is None:
                    raise DeliveryError(f"{left} messages undelivered after {timeout}s; is the broker reachable? "
                                        "they stay queued and the next flush waits for them again")
            if self.lost is not None:
                raise DeliveryError(f"a message was lost ({self.lost}); nothing after it counts as delivered "
                                    "until this worker restarts")
            self.pending -= queued  # those queued during this flush are counted until the next one

    def _deliver(self, timeout: float) -> int:
        """librdkafka's flush, then each message refused for its size sent again on its own (the broker
        refuses a whole record batch larger than the topic's max.message.bytes, small messages with a
        large one): refused alone, it is dead-lettered. Returns the messages left undelivered. Blocks."""
        left = int(self._producer.flush(timeout))
        while not left and self._refused:
            again = self._refused.pop(0)
            self._producer.produce(again.topic, key=again.key, value=again.value, headers=again.headers,
                                   partition=again.partition, on_delivery=self._on_lone_delivery)
            left = int(self._producer.flush(timeout))
        return left

    def close(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:
        if self._client is None:
            return
        left = self._client.flush(timeout)
        self._client = None  # librdkafka's threads stop when the last reference goes
        if left:
            log.error("%d trace/changelog messages were not delivered at shutdown; they are re-made on restart",
                      left)
