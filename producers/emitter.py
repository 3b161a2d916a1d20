"""The emitter: turns event fields into sealed, encoded Kafka messages, without blocking the caller.

    emitter = build_emitter(EmitterSettings(), producer_name="train-job")
    emitter.emit("RunEvent", {...fields of the event...})   # thread-safe, never blocks, never raises
    emitter.close(timeout=10.0)                              # True when everything was delivered

``emit`` adds the envelope (event id, time, producer identity), links the event into this
session's hash chain, encodes it with the current Avro schema and hands it to a transport.
A transport is two methods (``send`` and ``close``); Kafka, memory, console and none exist.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter

from producers.errors import ConfigurationError
from producers.settings import EmitterSettings
from schemas.events import Topics, key_for, new_envelope, producer_identity
from schemas.integrity import HashChain
from schemas.serde import Catalog, default_catalog

log = logging.getLogger("provline.emitter")

EVENTS_SENT = Counter("provline_events_emitted_total", "Events handed to the transport", ["kind"])
EVENTS_DELIVERED = Counter("provline_events_delivered_total", "Events the broker acknowledged")
EVENTS_DROPPED = Counter("provline_events_dropped_total", "Events lost, by reason", ["reason"])
DEFAULT_CLOSE_TIMEOUT_S = 10.0


class Transport(Protocol):
    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue one message; must not block and must not raise (count and log instead)."""

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

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.messages.append(Message(topic, key, value))

    def close(self, timeout: float) -> bool:
        return True


class ConsoleTransport:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        decoded = self._catalog.decode(value)
        print(f"{topic} {decoded.record} key={key.decode()} event_id={decoded.value['event_id']}", flush=True)

    def close(self, timeout: float) -> bool:
        return True


class NoTransport:
    def send(self, topic: str, key: bytes, value: bytes) -> None:
        pass

    def close(self, timeout: float) -> bool:
        return True


class KafkaTransport:
    """confluent-kafka producer: idempotent, acks=all, compressed; a thread serves delivery reports.

    librdkafka keeps its own bounded queue (``queue_max_messages``); when it is full, ``send``
    drops the message and counts it rather than blocking the caller.
    """

    def __init__(self, settings: EmitterSettings) -> None:
        from confluent_kafka import Producer

        if not settings.kafka_bootstrap:
            raise ConfigurationError("transport 'kafka' needs PROVLINE_KAFKA_BOOTSTRAP (host:port,...)")
        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": settings.linger_ms,
            "queue.buffering.max.messages": settings.queue_max_messages,
            "client.id": settings.producer_name or "provline",
        }
        for name, value in settings.kafka.items():
            config[name.replace("_", ".")] = value
        self._producer = Producer(config)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._serve_delivery_reports, name="provline-kafka", daemon=True)
        self._poller.start()

    def _serve_delivery_reports(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    @staticmethod
    def _on_delivery(error: Any, message: Any) -> None:
        if error is None:
            EVENTS_DELIVERED.inc()
        else:
            EVENTS_DROPPED.labels("delivery_failed").inc()
            log.error("provline event to %s was not delivered: %s", message.topic(), error)

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
        except BufferError:
            EVENTS_DROPPED.labels("queue_full").inc()
            log.warning("provline queue is full (%d messages); event to %s dropped", len(self._producer), topic)

    def close(self, timeout: float) -> bool:
        remaining = self._producer.flush(timeout)
        self._closing.set()
        self._poller.join(timeout=1.0)
        if remaining:
            EVENTS_DROPPED.labels("undelivered_at_close").inc(remaining)
            log.error("provline closed with %d events undelivered after %.1fs", remaining, timeout)
        return remaining == 0


class Emitter:
    """Seals, encodes and routes events; thread-safe; ``emit`` never blocks on the broker."""

    def __init__(
        self, transport: Transport, *, producer_name: str, topics: Topics | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.transport = transport
        self.topics = topics or Topics()
        self.catalog = catalog or default_catalog()
        self.session_id = str(uuid.uuid4())
        self.producer = producer_identity(producer_name, self.session_id)
        self._chain = HashChain(self.catalog)
        self._lock = threading.Lock()
        self._closed = False

    def emit(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> dict[str, Any]:
        """Publish one event; returns the full event (envelope included). Bad fields raise InvalidEventError."""
        value = {**new_envelope(self.producer, event_time=event_time), **fields}
        topic = self.topics.for_kind(kind)
        key = key_for(kind, value).encode()
        with self._lock:  # the chain order must be the order the transport receives events in
            if self._closed:
                EVENTS_DROPPED.labels("emitter_closed").inc()
                log.warning("provline emitter is closed; %s event dropped", kind)
                return value
            self._chain.seal(kind, value)
            self.transport.send(topic, key, self.catalog.encode(kind, value))
        EVENTS_SENT.labels(kind).inc()
        return value

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> bool:
        """Deliver queued events, waiting at most ``timeout`` seconds; True when all were delivered."""
        with self._lock:
            self._closed = True
        started = time.monotonic()
        delivered = self.transport.close(timeout)
        log.debug("provline emitter closed in %.3fs", time.monotonic() - started)
        return delivered

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_emitter(settings: EmitterSettings | None = None, *, producer_name: str = "provline") -> Emitter:
    """An emitter for the configured transport; ``none`` (no broker configured) warns once."""
    settings = settings or EmitterSettings()
    name = settings.producer_name or producer_name
    kind = settings.resolved_transport()
    transport: Transport
    if kind == "kafka":
        transport = KafkaTransport(settings)
    elif kind == "memory":
        transport = MemoryTransport()
    elif kind == "console":
        transport = ConsoleTransport(default_catalog())
    else:
        log.warning("provline: no broker configured (PROVLINE_KAFKA_BOOTSTRAP); lineage events are discarded")
        transport = NoTransport()
    return Emitter(transport, producer_name=name, topics=Topics(settings.topic_prefix))
