"""The emitter: turns event fields into sealed, encoded messages, without blocking the caller.

    emitter = build_emitter(JobSettings(), producer_name="train-job")
    emitter.emit("RunEvent", {...fields of the event...})   # thread-safe, never waits on the broker
    emitter.close(timeout=10.0)                              # True when everything was delivered

``emit`` adds the envelope (event id, time, producer identity), links the event into this
session's hash chain (sealed with a signed SessionSeal every ``seal_interval_s`` while events flow,
and once at close), encodes it with the current Avro schema and hands it to the
:class:`~provline.producers.processor.BatchProcessor`, which queues, spools and delivers it
through a transport (:mod:`provline.producers.transports`). Without a broker configured the
emitter still seals and encodes (a field that does not fit its schema is found at once) but
sends nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime
from functools import cache, partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import Counter

from provline.config import DEFAULT_TOPIC_PREFIX
from provline.producers.errors import ConfigurationError
from provline.producers.gaps import GapTracker
from provline.producers.processor import BatchProcessor, _call_weakly
from provline.producers.settings import DEFAULT_CLOSE_TIMEOUT_S, DEFAULT_SEAL_INTERVAL_S, PublishingSettings
from provline.producers.transports import (
    ConsoleTransport,
    FileTransport,
    KafkaTransport,
    MemoryTransport,
    Transport,
)
from provline.schemas.errors import SchemaError
from provline.schemas.events import Topics, key_for, new_envelope, producer_identity
from provline.schemas.frames import exchange_frame
from provline.schemas.integrity import HashChain, load_private_key
from provline.schemas.serde import Catalog, default_catalog

log = logging.getLogger("provline.emitter")

EVENTS_SENT = Counter("provline_events_emitted_total", "Events handed to the transport", ["kind"])
SEAL = "SessionSeal"


@cache
def _sent_counter(kind: str) -> Any:
    """The per-kind child of EVENTS_SENT, looked up once (labels() takes a lock on every call)."""
    return EVENTS_SENT.labels(kind)


class Emitter:
    """Seals, encodes and routes events; thread-safe; ``emit`` never waits on the broker.

    ``processor`` None: events are sealed and encoded, then discarded (no broker configured).
    """

    def __init__(
        self, processor: BatchProcessor | None, *, producer_name: str, topics: Topics | None = None,
        catalog: Catalog | None = None, signer: Ed25519PrivateKey | None = None,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S, seal_interval_s: float = DEFAULT_SEAL_INTERVAL_S,
    ) -> None:
        self.processor = processor
        self.close_timeout_s = close_timeout_s
        self.seal_interval_s = seal_interval_s
        self.topics = topics or Topics(DEFAULT_TOPIC_PREFIX)
        self.catalog = catalog or default_catalog()
        self._producer_name = producer_name
        self._routes: dict[str, tuple[str, bytes]] = {}  # kind -> (topic, wire-format header)
        self._signer = signer
        self._discarded = GapTracker()  # never records: a disabled emitter drops nothing by policy
        self._start_session()
        self._closed = False
        self._close_lock = threading.Lock()
        self._close_started = False
        self._delivered = True
        # Flush on exit; and a forked child starts a session (a hash chain) of its own. Weak
        # references let the emitter be collected.
        atexit.register(_call_weakly, weakref.WeakMethod(self.close))
        os.register_at_fork(after_in_child=partial(_call_weakly, weakref.WeakMethod(self._start_session)))

    def _start_session(self) -> None:
        self.session_id = str(uuid.uuid4())
        self.producer = producer_identity(self._producer_name, self.session_id)
        self._chain = HashChain(self.catalog, signer=self._signer)
        self._sealed_count = 0  # the chain's count at the last seal
        self._last_seal = time.monotonic()
        self._lock = threading.Lock()
        self._unsent_gaps: list[dict[str, Any]] = []  # DeliveryGap records that were dropped themselves
        self._gaps_lock = threading.Lock()

    @property
    def drops(self) -> GapTracker:
        """Where drops by policy are counted; each becomes a DeliveryGap record."""
        return self.processor.drops if self.processor is not None else self._discarded

    @property
    def transport(self) -> Transport | None:
        return self.processor.transport if self.processor is not None else None

    @property
    def backlog(self) -> int:
        """Messages accepted and not yet acknowledged by the destination (in memory or in the spool); an
        exchange is one message."""
        return self.processor.backlog if self.processor is not None else 0

    def emit(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> dict[str, Any]:
        """Publish one event; returns the full event (envelope included). Thread-safe; never waits on
        the broker. Fields that do not fit the schema raise InvalidEventError (a programming error)."""
        sent = self._send([(kind, fields, event_time)])
        return sent[0] if sent is not None else {**fields}

    def emit_spooled(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None,
                     on_spooled: Callable[[], None]) -> dict[str, Any] | None:
        """Publish one event as :meth:`emit` does, and call ``on_spooled()`` once it is in the on-disk spool
        (:meth:`BatchProcessor.when_spooled`: from the worker thread; quick, never raising). Returns the
        full event, or None when it was dropped (counted; ``on_spooled`` is then never called). Without a
        processor (no broker configured) nothing is spooled and ``on_spooled`` is called at once."""
        tickets: list[int] = []
        sent = self._send([(kind, fields, event_time)], tickets=tickets)
        if sent is None:
            return None
        if self.processor is None or not tickets:
            on_spooled()
        else:
            self.processor.when_spooled(tickets[0], on_spooled)
        return sent[0]

    def emit_exchange(self, request: dict[str, Any], response: dict[str, Any], *, request_time: datetime | None,
                      response_time: datetime | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Publish a served exchange's InferenceRequest and InferenceResponse as one message (an
        InferenceExchange frame, :mod:`provline.schemas.frames`); returns both full events. As
        :meth:`emit`: thread-safe, never waits on the broker; a drop drops (and counts) both."""
        sent = self._send([("InferenceRequest", request, request_time), ("InferenceResponse", response, response_time)])
        return (sent[0], sent[1]) if sent is not None else ({**request}, {**response})

    def _after_send(self, kinds: list[str]) -> None:
        for kind in kinds:
            _sent_counter(kind).inc()
        gaps = self.drops.take()
        if gaps or self._unsent_gaps:
            self._send_gaps(gaps)
        if self.seal_interval_s and self._chain.count > self._sealed_count \
                and time.monotonic() - self._last_seal >= self.seal_interval_s:
            self._send([(SEAL, {"final": False}, None)], report=False)

    def _send_gaps(self, gaps: list[dict[str, Any]]) -> None:
        """Send DeliveryGap records; one dropped itself is kept and sent again, so no count is lost."""
        with self._gaps_lock:
            gaps, self._unsent_gaps = self._unsent_gaps + gaps, []
            for gap in gaps:
                if self._send([("DeliveryGap", gap, None)], report=False) is None:
                    self._unsent_gaps.append(gap)

    def _route(self, kind: str) -> tuple[str, bytes]:
        route = self._routes.get(kind)
        if route is None:  # looked up once per kind: this runs for every event
            route = self._routes[kind] = (self.topics.for_kind(kind), self.catalog.header(kind))
        return route

    def _send(self, events: list[tuple[str, dict[str, Any], datetime | None]], *, closing: bool = False,
              report: bool = True, tickets: list[int] | None = None) -> list[dict[str, Any]] | None:
        """Seal ``events`` (one, or an exchange's two) into the chain and submit them as one message;
        the full events, or None when they were dropped (and counted). ``tickets``: where the
        processor's ticket of the message is appended."""
        values = []
        for _, fields, event_time in events:
            value = new_envelope(self.producer, event_time=event_time)
            value.update(fields)
            values.append(value)
        first_kind = events[0][0]
        topic = self._route(first_kind)[0]
        key = key_for(first_kind, values[0]).encode()
        with self._lock:  # the chain order must be the order the processor receives events in
            if self._closed:
                for _ in events:
                    self.drops.record("emitter_closed")
                return None
            if closing:
                self._closed = True
            if first_kind == SEAL:
                values[0]["count"] = self._chain.count
            previous = self._chain.position()
            try:
                encoded = [self._route(kind)[1] + self._chain.seal_encode(kind, value)
                           for (kind, _, _), value in zip(events, values, strict=True)]
                message = encoded[0] if len(encoded) == 1 else exchange_frame(
                    self.catalog, str(values[0]["prediction_id"]), encoded[0], encoded[1])
            except Exception:  # an exchange's second event did not fit: neither joins the chain
                self._chain.rewind(previous)
                raise
            if self.processor is not None:
                if tickets is None:
                    accepted = self.processor.submit(topic, key, message)
                else:  # the caller waits for the spool: it needs the message's ticket
                    ticket = self.processor.submit_ticket(topic, key, message)
                    accepted = ticket is not None
                    if ticket is not None:
                        tickets.append(ticket)
                if not accepted:
                    self._chain.rewind(previous)  # a dropped event is not part of the chain
                    for _ in events:
                        self.drops.record("queue_full")
                    return None
            if first_kind == SEAL:
                self._sealed_count, self._last_seal = self._chain.count, time.monotonic()
        if report:
            self._after_send([kind for kind, _, _ in events])
        return values

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for everything emitted to be delivered; True when it was."""
        return self.processor.flush(timeout) if self.processor is not None else True

    def close(self, timeout: float | None = None) -> bool:
        """Seal the session (a final SessionSeal, unless it emitted nothing), then deliver queued events,
        waiting at most ``timeout`` seconds (default: the configured ``close_timeout_s``); True when all
        were delivered. Later calls return the first call's answer (close also runs at interpreter exit)."""
        with self._close_lock:
            if self._close_started:
                return self._delivered
            self._close_started = True
        if self._chain.count:  # the session's last event, also when dropped
            self._send([(SEAL, {"final": True}, None)], closing=True, report=False)
        else:  # a session that emitted nothing has nothing to seal (serve, say, that published no Feedback)
            with self._lock:
                self._closed = True
        if self.processor is not None:
            self._delivered = self.processor.close(self.close_timeout_s if timeout is None else timeout)
        return self._delivered

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_transport(settings: PublishingSettings, *, client_id: str) -> Transport:
    """The configured transport (not ``none``). Raises ConfigurationError when it cannot work."""
    kind = settings.transport()
    if kind == "kafka":
        try:
            return KafkaTransport(settings.kafka, settings.emitter, client_id=client_id)
        except ValueError as exc:  # the Kafka settings name no broker
            raise ConfigurationError(str(exc)) from exc
    if kind == "file":
        assert settings.emitter.file is not None  # checked by the settings
        return FileTransport(settings.emitter.file)
    if kind == "memory":
        return MemoryTransport()
    if kind == "console":
        return ConsoleTransport(default_catalog())
    raise ConfigurationError(f"transport {kind!r} sends nothing; there is nothing to build")


def build_emitter(
    settings: PublishingSettings, *, producer_name: str = "provline", transport: Transport | None = None,
) -> Emitter:
    """An emitter for ``settings``; without a broker configured (transport ``none``) it warns once.

    ``transport`` replaces the configured one (a test's :class:`MemoryTransport`, say); a forked
    child keeps using it. Raises ConfigurationError at once for settings that cannot work.
    """
    name = settings.emitter.producer_name or producer_name
    signer = None
    if settings.signing.key is not None:
        try:
            signer = load_private_key(settings.signing.key.get_secret_value())
        except (SchemaError, ValueError) as exc:
            raise ConfigurationError(f"PROVLINE_SIGNING__KEY cannot be used: {exc}") from exc
    processor = None
    if transport is not None:
        processor = BatchProcessor(lambda: transport, settings.emitter)
    elif settings.transport() != "none":
        processor = BatchProcessor(partial(make_transport, settings, client_id=name), settings.emitter)
    else:
        log.warning("provline: no broker configured (PROVLINE_KAFKA__BOOTSTRAP); lineage events are discarded")
    return Emitter(processor, producer_name=name, topics=Topics(settings.topics.prefix), signer=signer,
                   close_timeout_s=settings.emitter.close_timeout_s, seal_interval_s=settings.emitter.seal_interval_s)
