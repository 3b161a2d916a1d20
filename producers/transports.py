"""Where spooled messages go: Kafka, a file, memory or the console. I/O only.

A transport is driven by the :class:`~provline.producers.processor.BatchProcessor`'s worker thread
and by nothing else: the processor owns the queue, the spool, retries, drop counting and fork
handling; a transport only hands messages over and reports, through the ``delivered`` callback it
was given, when each one has arrived (or was refused for good). A transport never raises into the
worker for a message it cannot deliver.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO

from confluent_kafka import KafkaError, Producer

from provline.config import KafkaSettings
from provline.producers.settings import EmitterSettings
from provline.producers.spool import SpooledMessage
from provline.schemas.frames import events_in
from provline.schemas.serde import Catalog

log = logging.getLogger("provline.emitter")

Delivered = Callable[[int, "str | None"], None]  # (spool sequence, error or None)


class Transport(Protocol):
    """Moves messages to their destination; used from one thread (the processor's worker) only."""

    def send(self, message: SpooledMessage, delivered: Delivered) -> bool:
        """Hand one message over without waiting; False when the transport cannot take more now (the
        processor retries after :meth:`poll`). ``delivered(sequence, error)`` is called once it arrived
        (``error`` None) or was refused for good, from :meth:`send`, :meth:`poll` or :meth:`close`."""

    def poll(self, timeout: float) -> None:
        """Serve delivery reports, waiting at most ``timeout`` seconds for one."""

    def close(self, timeout: float) -> None:
        """Deliver what was handed over, waiting at most ``timeout`` seconds; give up the rest (the
        spool still has it: the next process using the spool sends it) and release resources."""


_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
_AUTHENTICATION = (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)


class KafkaTransport:
    """An idempotent, ``acks=all``, lz4-compressed confluent-kafka producer.

    librdkafka never expires a message (``message.timeout.ms=0``): while the broker is away
    messages wait, in order, and go out when it returns.
    """

    def __init__(self, kafka: KafkaSettings, options: EmitterSettings, *, client_id: str) -> None:
        self._kafka = kafka
        self._refused_logged = False
        self._producer = Producer(kafka.librdkafka(**{
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": options.linger_s * 1000,
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": options.max_in_flight,
            "client.id": client_id,
            "error_cb": self._on_error,
        }))

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _AUTHENTICATION:
            if not self._refused_logged:  # librdkafka retries every few seconds; say it once
                self._refused_logged = True
                log.error("Kafka refused provline's credentials (%s, user %r): %s; events wait in the spool until "
                          "PROVLINE_KAFKA__SASL_USERNAME / PROVLINE_KAFKA__SASL_PASSWORD are fixed",
                          self._kafka.sasl_mechanism, self._kafka.sasl_username, error.str())
        else:
            log.warning("Kafka client error (delivery goes on when the broker is back): %s", error.str())

    def send(self, message: SpooledMessage, delivered: Delivered) -> bool:
        try:
            self._producer.produce(message.topic, value=message.value, key=message.key,
                                   on_delivery=partial(self._report, message.sequence, delivered))
        except BufferError:
            return False
        return True

    @staticmethod
    def _report(sequence: int, delivered: Delivered, error: Any, message: Any) -> None:
        if error is not None and error.code() in _PURGED:
            return  # given up at close; still in the spool
        if error is not None:
            # With no message timeout only permanent errors arrive here (too large, not authorised).
            log.error("provline event to %s rejected by the broker: %s", message.topic(), error)
        delivered(sequence, None if error is None else str(error))

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)
        # What is still undelivered stays in the spool; purged so that this producer cannot deliver
        # it later too, when the next process replays the spool.
        self._producer.purge()
        self._producer.poll(0)
        del self._producer  # librdkafka's threads stop (and stop reconnecting) when the client goes


class LocalTransport:
    """A transport whose destination is in this process or on its disk: a message has arrived once written."""

    def send(self, message: SpooledMessage, delivered: Delivered) -> bool:
        self.write(message)
        delivered(message.sequence, None)
        return True

    def write(self, message: SpooledMessage) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> None:
        return None

    def close(self, timeout: float) -> None:
        return None


@dataclass
class FileTransport(LocalTransport):
    """Appends one JSON line per message: ``{"topic", "key", "value"}``, key and value base64."""

    path: Path
    _handle: TextIO | None = field(default=None, init=False, repr=False)

    def write(self, message: SpooledMessage) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - kept open until close()
        line = {"topic": message.topic, "key": base64.b64encode(message.key).decode(),
                "value": base64.b64encode(message.value).decode()}
        self._handle.write(json.dumps(line) + "\n")
        self._handle.flush()

    def close(self, timeout: float) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass
class Message:
    topic: str
    key: bytes
    value: bytes


@dataclass
class MemoryTransport(LocalTransport):
    """Keeps messages in a list: for tests, and for users who want to see what would be sent.

    Messages appear once the processor's worker handed them over: call ``emitter.flush()`` first.
    """

    messages: list[Message] = field(default_factory=list)

    def write(self, message: SpooledMessage) -> None:
        self.messages.append(Message(message.topic, message.key, message.value))


@dataclass
class ConsoleTransport(LocalTransport):
    """One line per event on standard output: topic, kind, key and event id."""

    catalog: Catalog

    def write(self, message: SpooledMessage) -> None:
        for event in events_in(self.catalog, message.value):  # an exchange frame: a line per event
            decoded = self.catalog.decode(event)
            print(f"{message.topic} {decoded.record} key={message.key.decode()} event_id={decoded.value['event_id']}",
                  flush=True)
