"""The emitter: turns event fields into sealed, encoded Kafka messages, without blocking the caller.

    emitter = build_emitter(EmitterSettings(), producer_name="train-job")
    emitter.emit("RunEvent", {...fields of the event...})   # thread-safe, never blocks, never raises
    emitter.close(timeout=10.0)                              # True when everything was delivered

``emit`` adds the envelope (event id, time, producer identity), links the event into this
session's hash chain, encodes it with the current Avro schema and hands it to a transport.
A transport is two methods (``send`` and ``close``); Kafka, memory, console and none exist.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import KafkaError, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import Counter

from provline.producers.errors import ConfigurationError
from provline.producers.gaps import GapTracker
from provline.producers.settings import EmitterSettings
from provline.producers.spool import DEFAULT_SEGMENT_BYTES, Spool
from provline.schemas.errors import SchemaError
from provline.schemas.events import Topics, key_for, new_envelope, producer_identity
from provline.schemas.integrity import HashChain, load_private_key
from provline.schemas.serde import Catalog, default_catalog

log = logging.getLogger("provline.emitter")

EVENTS_SENT = Counter("provline_events_emitted_total", "Events handed to the transport", ["kind"])
EVENTS_DELIVERED = Counter("provline_events_delivered_total", "Events the broker acknowledged")
DEFAULT_CLOSE_TIMEOUT_S = 10.0
SHIP_INTERVAL_S = 0.05
# Waking the worker for every event would hand the GIL back and forth per event; it wakes on a
# full batch, or after linger_ms.
WAKE_BATCH = 512
SPOOL_BATCH_MAX = 5000
CHECKPOINT_INTERVAL_S = 0.5
CLOSE_GRACE_S = 5.0
SEGMENTS_PER_SPOOL = 8  # the spool's bound holds at least this many segments


class Transport(Protocol):
    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        """Queue one message; False when it was dropped by policy. Never waits on the broker, never raises."""

    def close(self, timeout: float) -> bool:
        """Deliver what is queued within ``timeout`` seconds; True when nothing is left."""


@dataclass
class Message:
    topic: str
    key: bytes
    value: bytes


@dataclass
class MemoryTransport:
    """Keeps messages in a list: for tests, and for users who want to inspect what would be sent."""

    messages: list[Message] = field(default_factory=list)

    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        self.messages.append(Message(topic, key, value))
        return True

    def close(self, timeout: float) -> bool:
        return True


class ConsoleTransport:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        decoded = self._catalog.decode(value)
        print(f"{topic} {decoded.record} key={key.decode()} event_id={decoded.value['event_id']}", flush=True)
        return True

    def close(self, timeout: float) -> bool:
        return True


class NoTransport:
    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        return True

    def close(self, timeout: float) -> bool:
        return True


class KafkaTransport:
    """confluent-kafka producer (idempotent, acks=all, compressed) behind a write-ahead spool.

    ``send`` appends to a bounded in-memory queue and returns. One worker thread moves queued
    messages into the on-disk :class:`~provline.producers.spool.Spool`, hands them to librdkafka (at most
    ``max_in_flight`` unacknowledged) and marks them acknowledged from delivery reports. While the
    broker is away nothing is lost and memory stays bounded: messages wait on disk, and are sent
    in order when it returns, or by the next process that opens the same spool directory.
    librdkafka never expires messages (``message.timeout.ms=0``), so order per partition holds.

    The queue fills only when the worker cannot write to disk as fast as events come (or the
    spool has reached ``spool_max_bytes``); then ``on_full`` applies: ``block`` waits for room
    (jobs: nothing is lost), ``drop`` returns at once and the event is counted and recorded as a
    delivery gap (servers: a request never waits on provline).
    """

    def __init__(self, settings: EmitterSettings, drops: GapTracker) -> None:
        if not settings.kafka_bootstrap:
            raise ConfigurationError("transport 'kafka' needs PROVLINE_KAFKA_BOOTSTRAP (host:port,...)")
        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": settings.linger_ms,
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": settings.max_in_flight,
            "client.id": settings.producer_name or "provline",
        }
        for name, value in settings.kafka.items():
            config[name.replace("_", ".")] = value
        self._settings = settings
        self._linger_s = max(settings.linger_ms / 1000, 0.001)
        self.drops = drops
        self._producer = Producer(config)
        self._spool = open_spool(settings)
        self._queue: deque[tuple[str, bytes, bytes]] = deque()
        self._room = threading.Condition()
        self._closing = threading.Event()
        self._cursor = self._spool.cursor_at(self._spool.committed)  # replay what an earlier process left
        self._in_flight = 0
        self._close_deadline = float("inf")
        self._worker = threading.Thread(target=self._run, name="provline-emitter", daemon=True)
        self._worker.start()

    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        with self._room:
            while len(self._queue) >= self._settings.queue_max_messages:
                if self._settings.on_full == "drop":
                    return False
                self._room.wait(0.1)
            self._queue.append((topic, key, value))
            if len(self._queue) == WAKE_BATCH:  # otherwise the worker wakes on its linger timer
                self._room.notify_all()
            return True

    def _spool_full(self) -> bool:
        return self._spool.size_bytes() >= self._settings.spool_max_bytes

    def _take_batch(self) -> list[tuple[str, bytes, bytes]]:
        with self._room:
            if not self._queue and not self._closing.is_set():
                self._room.wait(self._linger_s)
            if self._spool_full():
                return []
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), SPOOL_BATCH_MAX))]
            if batch:
                self._room.notify_all()
            return batch

    def _run(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            batch = self._take_batch()
            first = self._spool.append(batch) if batch else self._spool.next_sequence
            self._ship(batch, first)
            closing = self._closing.is_set()
            self._producer.poll(SHIP_INTERVAL_S if closing else 0)
            if time.monotonic() - last_checkpoint >= CHECKPOINT_INTERVAL_S:
                self._spool.checkpoint()
                last_checkpoint = time.monotonic()
            if closing and (
                (not self._queue and self._spool.backlog == 0) or time.monotonic() >= self._close_deadline
            ):
                break
        while self._queue and not self._spool_full():  # past the deadline: keep on disk what fits
            self._spool.append(self._take_batch())
        for _ in range(len(self._queue)):
            self.drops.record("spool_full_at_close")
        self._producer.flush(max(0.0, self._close_deadline - time.monotonic()))
        # What is still undelivered stays in the spool; purged here so that this producer cannot
        # deliver it later too, when the next process replays the spool.
        self._producer.purge()
        self._producer.poll(0)
        self._spool.close()

    def _ship(self, batch: list[tuple[str, bytes, bytes]], first: int) -> None:
        """Hand spooled, unsent messages to librdkafka, oldest first, up to max_in_flight.

        When nothing older waits, the batch just spooled goes from memory; otherwise records are
        read back from the spool (a backlog after an outage, or left by an earlier process).
        """
        room = self._settings.max_in_flight - self._in_flight
        if batch and self._cursor.sequence == first and room >= len(batch):
            for offset, (topic, key, value) in enumerate(batch):
                try:
                    self._produce(first + offset, topic, key, value)
                except BufferError:
                    self._cursor = self._spool.cursor_at(first + offset)
                    return
            self._cursor = self._spool.end()
            return
        while room > 0 and self._cursor.sequence < self._spool.next_sequence:
            records = self._spool.read(self._cursor, min(room, SPOOL_BATCH_MAX))
            if not records:
                return
            for record in records:
                try:
                    self._produce(record.sequence, record.topic, record.key, record.value)
                except BufferError:
                    self._cursor = self._spool.cursor_at(record.sequence)
                    return
            room -= len(records)

    def _produce(self, sequence: int, topic: str, key: bytes, value: bytes) -> None:
        self._producer.produce(topic, value=value, key=key, on_delivery=partial(self._on_delivery, sequence))
        self._in_flight += 1

    def _on_delivery(self, sequence: int, error: Any, message: Any) -> None:
        self._in_flight -= 1
        if error is not None and error.code() in _PURGED:
            return  # still in the spool: replayed by the next process
        if error is not None:
            # With no message timeout, only permanent errors arrive here (too large, not authorised):
            # retrying cannot help, so the event is recorded as dropped and the spool moves on.
            log.error("provline event to %s rejected by the broker: %s", message.topic(), error)
            self.drops.record("rejected_by_broker")
        else:
            EVENTS_DELIVERED.inc()
        self._spool.ack(sequence)

    @property
    def backlog(self) -> int:
        """Messages accepted by ``send`` and not yet acknowledged by the broker."""
        return len(self._queue) + self._spool.backlog

    def close(self, timeout: float) -> bool:
        """Spool everything queued, try to deliver within ``timeout``; what is left stays in the spool."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        with self._room:
            self._room.notify_all()
        self._worker.join(timeout + CLOSE_GRACE_S)
        remaining = self.backlog
        if remaining:
            log.warning("provline closed with %d events not yet delivered; they stay in %s and are sent "
                        "by the next process using that spool directory", remaining, self._spool.directory)
        return remaining == 0


_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def open_spool(settings: EmitterSettings) -> Spool:
    """The configured spool directory, or a private temporary one (no replay across processes)."""
    directory = settings.spool_dir or Path(tempfile.mkdtemp(prefix="provline-spool-"))
    # Only whole acknowledged segments are deleted: with segments as large as the spool's bound, a
    # spool that once filled up would stay full after its backlog was delivered, and drop for ever.
    segment_bytes = max(1, min(DEFAULT_SEGMENT_BYTES, settings.spool_max_bytes // SEGMENTS_PER_SPOOL))
    return Spool(directory, fsync=settings.spool_fsync, segment_bytes=segment_bytes)


@cache
def _sent_counter(kind: str) -> Any:
    """The per-kind child of EVENTS_SENT, looked up once (labels() takes a lock on every call)."""
    return EVENTS_SENT.labels(kind)


def _call_weakly(method: weakref.WeakMethod[Callable[[], Any]]) -> None:
    bound = method()
    if bound is not None:
        bound()


class Emitter:
    """Seals, encodes and routes events; thread-safe; ``emit`` never blocks on the broker."""

    def __init__(
        self, transport: Transport, *, producer_name: str, topics: Topics | None = None,
        catalog: Catalog | None = None, signer: Ed25519PrivateKey | None = None, drops: GapTracker | None = None,
        transport_in_child: Callable[[GapTracker], Transport] | None = None,
    ) -> None:
        self.transport = transport
        self.topics = topics or Topics()
        self.catalog = catalog or default_catalog()
        self._producer_name = producer_name
        self._routes: dict[str, tuple[str, bytes]] = {}  # kind -> (topic, wire-format header)
        self._signer = signer
        self._transport_in_child = transport_in_child
        self.drops = drops or GapTracker()
        self._start_session()
        self._closed = False
        self._delivered = True
        # Flush on exit; and a forked child (whose copy of the worker thread and librdkafka are
        # dead) starts its own session and transport. Weak references let the emitter be collected.
        atexit.register(_call_weakly, weakref.WeakMethod(self.close))
        os.register_at_fork(after_in_child=partial(_call_weakly, weakref.WeakMethod(self._after_fork)))

    def _start_session(self) -> None:
        self.session_id = str(uuid.uuid4())
        self.producer = producer_identity(self._producer_name, self.session_id)
        self._chain = HashChain(self.catalog, signer=self._signer)
        self._lock = threading.Lock()
        self._unsent_gaps: list[dict[str, Any]] = []  # DeliveryGap records that were dropped themselves
        self._gaps_lock = threading.Lock()

    def _after_fork(self) -> None:
        self._start_session()
        if self._transport_in_child is not None and not self._closed:
            self.drops = GapTracker()
            self.transport = self._transport_in_child(self.drops)

    def emit(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> dict[str, Any]:
        """Publish one event; returns the full event (envelope included). Thread-safe; never waits on
        the broker. Fields that do not fit the schema raise InvalidEventError (a programming error)."""
        value = self._send(kind, fields, event_time)
        if value is not None:
            _sent_counter(kind).inc()
            gaps = self.drops.take()
            if gaps or self._unsent_gaps:
                self._send_gaps(gaps)
        return value if value is not None else {**fields}

    def _send_gaps(self, gaps: list[dict[str, Any]]) -> None:
        """Send DeliveryGap records; one dropped itself is kept and sent again, so no count is lost."""
        with self._gaps_lock:
            gaps, self._unsent_gaps = self._unsent_gaps + gaps, []
            for gap in gaps:
                if self._send("DeliveryGap", gap, None) is None:
                    self._unsent_gaps.append(gap)

    def _send(self, kind: str, fields: dict[str, Any], event_time: datetime | None) -> dict[str, Any] | None:
        value = new_envelope(self.producer, event_time=event_time)
        value.update(fields)
        route = self._routes.get(kind)
        if route is None:  # looked up once per kind: this runs for every event
            route = self._routes[kind] = (self.topics.for_kind(kind), self.catalog.header(kind))
        topic, header = route
        key = key_for(kind, value).encode()
        with self._lock:  # the chain order must be the order the transport receives events in
            if self._closed:
                self.drops.record("emitter_closed")
                return None
            previous = self._chain.last_hash
            message = header + self._chain.seal_encode(kind, value)
            if not self.transport.send(topic, key, message):
                self._chain.last_hash = previous  # a dropped event is not part of the chain
                self.drops.record("queue_full")
                return None
        return value

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> bool:
        """Deliver queued events, waiting at most ``timeout`` seconds; True when all were delivered.

        Later calls return the first call's answer (close also runs at interpreter exit)."""
        with self._lock:
            if self._closed:
                return self._delivered
            self._closed = True
        self._delivered = self.transport.close(timeout)
        return self._delivered

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_emitter(settings: EmitterSettings | None = None, *, producer_name: str = "provline") -> Emitter:
    """An emitter for the configured transport; ``none`` (no broker configured) warns once.

    Raises ConfigurationError at once for settings that cannot work (a bad signing key...).
    """
    settings = settings or EmitterSettings()
    name = settings.producer_name or producer_name
    signer = None
    if settings.signing_key is not None:
        try:
            signer = load_private_key(settings.signing_key.get_secret_value())
        except (SchemaError, ValueError) as exc:
            raise ConfigurationError(f"PROVLINE_SIGNING_KEY cannot be used: {exc}") from exc
    drops = GapTracker()
    kind = settings.resolved_transport()
    transport: Transport
    in_child = None
    if kind == "kafka":
        transport = KafkaTransport(settings, drops)
        # a spool has one writer: a forked child spools to a private directory of its own
        child_settings = settings.model_copy(update={"spool_dir": None})
        in_child = partial(KafkaTransport, child_settings)
    elif kind == "memory":
        transport = MemoryTransport()
    elif kind == "console":
        transport = ConsoleTransport(default_catalog())
    else:
        log.warning("provline: no broker configured (PROVLINE_KAFKA_BOOTSTRAP); lineage events are discarded")
        transport = NoTransport()
    return Emitter(transport, producer_name=name, topics=Topics(settings.topic_prefix), signer=signer, drops=drops,
                   transport_in_child=in_child)
