"""``provline ingest``: payload loggers' CloudEvents in, InferenceRequest / InferenceResponse events out.

    app = IngestApp(settings)   # an ASGI 3 app; serve it with lifespan on (it owns the emitter)
    run_ingest(settings)        # blocks until SIGTERM/SIGINT

KServe's InferenceLogger and Seldon's request logger send each request and each response of a
model as its own CloudEvent (:mod:`provline.sidecar.cloudevents`). Each becomes the event the
sidecar would have made of that half, built by the sidecar's own functions (body digest over the
bytes received, payload parsing, capture policy and redaction: :mod:`provline.sidecar.events`),
and both halves get one prediction id derived from the logger's event id, so the processors join
them and a retried event is a duplicate they swallow.

A logger is answered ``200`` only once its event is in the on-disk spool, fsynced (the emitter
runs with ``spool_fsync=always``; every event the worker appends in one go shares one fsync), so
a retry after anything else means something. When an event cannot be made durable within
``durable_timeout_s`` (the queue is full: the spool is at ``spool_max_bytes`` or the disk is slow)
the answer is ``503`` with ``Retry-After``; the drop is counted and, for a full queue, recorded
as a DeliveryGap. Memory is bounded by the emitter's queue; while the broker is away events wait
in the spool and are sent when it returns. Requests that are not recordable events get a 4xx JSON
error saying what was wrong; ``/healthz``, ``/readyz`` (ready while the spool is writable) and
``/metrics`` are served on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

from provline.producers.emitter import Emitter, build_emitter
from provline.schemas.events import Topics
from provline.sidecar.asgi import Receive, Scope, Send, serve_lifespan
from provline.sidecar.cloudevents import CloudEventError, LoggedHalf, parse_event
from provline.sidecar.errors import StartupError
from provline.sidecar.events import (
    BodyRecord,
    capture_rules,
    describe_body,
    not_captured,
    request_fields,
    response_fields,
)
from provline.sidecar.limits import HttpLimits
from provline.sidecar.logs import configure_logging
from provline.sidecar.payload import ObservedBody, Role
from provline.sidecar.policy import KEYED_MODES, Mode
from provline.sidecar.server import ServerWithoutSignals, loop_factory, uvicorn_config
from provline.sidecar.settings import IngestSettings

log = logging.getLogger("provline.ingest")

PRODUCER_NAME = "ingest"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_FRACTION = re.compile(r"\.\d+")
RESPONSE_STATUS = 200  # KServe and Seldon log a response only when the model answered 200

RECEIVED = Counter("provline_ingest_events_received_total", "HTTP requests received on the ingest route")
RECORDED = Counter("provline_ingest_events_recorded_total", "Events made durable in the spool and answered 200")
REFUSED = Counter("provline_ingest_events_refused_total", "Requests refused with a 4xx, by reason", ["reason"])
DROPPED = Counter("provline_ingest_events_dropped_total",
                  "Events answered 503 because they could not be made durable in time, by reason", ["reason"])
SAMPLED_OUT = Counter("provline_ingest_events_sampled_out_total", "Events answered 200 but not recorded, by sampling")
DEGRADED = Counter("provline_ingest_degraded_records_total",
                   "Events recorded without their body because the full record could not be built")
SPOOL_BACKLOG = Gauge("provline_ingest_spool_backlog",
                      "Events accepted and not yet acknowledged by the broker: in memory or in the disk spool")


def ingest_emitter_settings(settings: IngestSettings) -> IngestSettings:
    """The emitter the service needs: never wait for room (answer 503 instead), fsync every append."""
    emitter = settings.emitter.model_copy(update={"on_full": "drop", "spool_fsync": "always"})
    return settings.model_copy(update={"emitter": emitter})


def endpoint_of(template: str, half: LoggedHalf) -> str:
    """The endpoint an event records: the configured template filled from the event's attributes."""
    return template.format(namespace=half.namespace or "", service=half.service or "",
                           component=half.component or "", endpoint=half.endpoint or "", model=half.model_name or "")


def sampled_in(prediction_id: str, rate: float) -> bool:
    """Whether a prediction is recorded at sampling ``rate``: decided by its id, so both halves agree."""
    if rate >= 1.0:
        return True
    return int(prediction_id.replace("-", "")[:8], 16) / 2**32 < rate


def event_time(half: LoggedHalf, received: datetime) -> datetime:
    """The CloudEvent's own time when it is a usable RFC 3339 time, else when it was received."""
    if half.time:
        text = half.time.replace("Z", "+00:00")
        text = _FRACTION.sub(lambda match: match.group(0)[:7], text)  # Go sends nanoseconds; Python takes micro
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
    return received


class NotDurable(Exception):
    """The event could not be put in the spool in time; ``reason`` labels the dropped metric."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IngestApp:
    """The ingest service, an ASGI 3 app; serve it with lifespan on.

    ``emitter``: when given, the caller owns it (and should build it with
    :func:`ingest_emitter_settings`); otherwise one is built at start-up and closed at shutdown.
    Raises PolicyError at construction when the capture policy cannot be used.
    """

    def __init__(self, settings: IngestSettings, emitter: Emitter | None = None) -> None:
        self.settings = settings
        self.emitter = emitter
        self._owns_emitter = emitter is None
        self.ready = False
        self._rules = capture_rules(settings.capture, max_rows=settings.ingest.max_rows)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, self.startup, self.shutdown)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method in ("GET", "HEAD") and path in ("/healthz", "/readyz", "/metrics"):
            await self._admin(path, send)
            return
        RECEIVED.inc()
        try:
            status, body, headers = await self._ingest(scope, receive)
        except CloudEventError as exc:
            REFUSED.labels(exc.reason).inc()
            status, headers = exc.status, []
            body = {"error": str(exc), "reason": exc.reason}
            if exc.status == 405:
                headers = [(b"allow", b"POST")]
        except NotDurable as exc:
            DROPPED.labels(exc.reason).inc()
            retry = str(self.settings.ingest.retry_after_s).encode()
            status, headers = 503, [(b"retry-after", retry)]
            body = {"error": f"the event could not be made durable ({exc.reason}); nothing was recorded, send it "
                    f"again after Retry-After. If this persists, the spool is full or its disk is slow: check "
                    f"the broker and PROVLINE_EMITTER__SPOOL_MAX_BYTES", "reason": exc.reason}
        await _reply(send, status, json.dumps(body).encode(), headers)

    async def startup(self) -> None:
        if self.emitter is None:
            self.emitter = build_emitter(ingest_emitter_settings(self.settings), producer_name=PRODUCER_NAME)
        emitter = self.emitter
        SPOOL_BACKLOG.set_function(lambda: emitter.backlog)
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        if self._owns_emitter and self.emitter is not None:
            emitter = self.emitter
            await asyncio.get_running_loop().run_in_executor(None, emitter.close)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while started and the spool's directory is writable and not at its bound."""
        processor = self.emitter.processor if self.emitter is not None else None
        if not self.ready or self.emitter is None:
            return False, {"status": "starting or stopping"}
        if processor is None:
            return True, {"status": "ready", "spool": "none (no broker configured: events are discarded)"}
        directory = processor.spool_directory
        if not processor.alive:
            return False, {"status": "the spool's writer stopped (see the log); restart the service",
                           "spool": str(directory)}
        if not os.access(directory, os.W_OK):
            return False, {"status": "spool not writable", "spool": str(directory)}
        if processor.spool_full:
            return False, {"status": "spool full", "spool": str(directory)}
        return True, {"status": "ready", "spool": str(directory), "backlog": processor.backlog}

    async def _admin(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await _reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            ready, body = self.readiness()
            await _reply(send, 200 if ready else 503, json.dumps(body).encode())
        else:
            await _reply(send, 200, generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

    async def _ingest(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        if scope["method"] != "POST":
            raise CloudEventError("method_not_allowed", f"{scope['method']} is not accepted; payload loggers POST "
                                  "their CloudEvents here", status=405)
        received = datetime.now(UTC)
        body = await self._read_body(scope, receive)
        half = parse_event(scope.get("headers", []), body)
        prediction_id = half.prediction_id
        settings = self.settings
        endpoint = endpoint_of(settings.ingest.endpoint, half)
        decision = self._rules.policy.decide("POST", endpoint, default_capture=self._rules.default_mode,
                                             default_rate=settings.capture.sample_rate)
        answer = {"prediction_id": prediction_id, "type": half.event_type}
        if not sampled_in(prediction_id, decision.sample_rate):
            SAMPLED_OUT.inc()
            return 200, {**answer, "recorded": False}, []
        kind = "InferenceRequest" if half.half == "request" else "InferenceResponse"
        try:
            fields = self._fields(half, prediction_id, endpoint, decision.capture)
        except Exception as exc:  # hostile payloads must not lose the record: keep it without its body
            DEGRADED.inc()
            log.warning("provline ingest recorded prediction %s without its body: %s", prediction_id,
                        not_captured(exc), extra={"prediction_id": prediction_id})
            fields = self._fields(half, prediction_id, endpoint, decision.capture, degraded=not_captured(exc))
        await self._emit_durably(kind, fields, event_time(half, received))
        RECORDED.inc()
        return 200, {**answer, "recorded": True}, [(b"x-prediction-id", prediction_id.encode())]

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.ingest.max_body_bytes
        too_large = CloudEventError("body_too_large", f"the event is larger than {limit} bytes; raise "
                                    "PROVLINE_INGEST__MAX_BODY_BYTES or log smaller payloads", status=413)
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise CloudEventError("client_gone", "the logger disconnected before sending the whole event")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _fields(self, half: LoggedHalf, prediction_id: str, endpoint: str, mode: Mode, *,
                degraded: str | None = None) -> dict[str, Any]:
        """The event's fields, as the sidecar's recorder builds them for that half of an exchange."""
        rules, ingest = self._rules, self.settings.ingest
        observed = ObservedBody.whole(half.data, key=rules.redactor.digest_key(mode))
        role: Role = "input" if half.half == "request" else "output"
        if degraded is None:
            record = describe_body(observed, half.content_type, mode=mode,
                                   rules=rules.policy.inputs if role == "input" else rules.policy.outputs,
                                   redactor=rules.redactor, capture=rules.capture, role=role)
        else:
            record = BodyRecord(error=degraded)
        model_version = record.model_version or ingest.model_version
        request_id = self._request_id(half, record.request_id, mode, role)
        if half.half == "request":
            client_id, traceparent = self._headers(half, mode)
            return request_fields(
                prediction_id=prediction_id, endpoint=endpoint, method="POST", path=endpoint, observed=observed,
                record=record, content_type=half.content_type, client_id=client_id, traceparent=traceparent,
                model_name=half.model_name, model_version=model_version, request_id=request_id,
            )
        return response_fields(
            prediction_id=prediction_id, endpoint=endpoint, status=RESPONSE_STATUS, observed=observed, record=record,
            model_name=half.model_name, model_version=model_version, latency_us=0, error=None, request_id=request_id,
        )

    def _headers(self, half: LoggedHalf, mode: Mode) -> tuple[str | None, str | None]:
        """The client id (a forwarded X-Client-Id metadata header) and traceparent, under the policy's
        ``headers`` rules where redaction applies, as the sidecar records them."""
        client_id = half.header("x-client-id")
        if mode not in KEYED_MODES:
            return client_id, half.traceparent
        rules, redactor = self._rules.policy.headers, self._rules.redactor
        return (redactor.header(rules.named("x-client-id"), client_id),
                redactor.header(rules.named("traceparent"), half.traceparent))

    def _request_id(self, half: LoggedHalf, body_id: str | None, mode: Mode, role: str) -> str | None:
        """A KServe V2 body's own ``id``, else a forwarded X-Request-Id, Seldon's requestid or the event id
        (KServe's logger uses the request's id as the event id); redacted as the sidecar redacts it."""
        found = body_id or half.header("x-request-id") or half.request_id or half.event_id
        if mode not in KEYED_MODES:
            return found
        policy = self._rules.policy
        action = policy.request_id_action(policy.inputs if role == "input" else policy.outputs)
        return self._rules.redactor.header(action, found)

    async def _emit_durably(self, kind: str, fields: dict[str, Any], when: datetime) -> None:
        """Emit one event and wait, without blocking the loop, until the spool holds it (fsynced)."""
        assert self.emitter is not None, "serve IngestApp with lifespan on"
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()

        def spooled() -> None:  # in the emitter's worker thread
            loop.call_soon_threadsafe(_resolve, durable)

        if self.emitter.emit_spooled(kind, fields, event_time=when, on_spooled=spooled) is None:
            raise NotDurable("queue_full")  # counted by the emitter too, and recorded as a DeliveryGap
        try:
            await asyncio.wait_for(asyncio.shield(durable), self.settings.ingest.durable_timeout_s)
        except TimeoutError as exc:  # still queued: it may yet be spooled, and a retry is a duplicate the join drops
            raise NotDurable("spool_timeout") from exc


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None, *,
                 content_type: str = "application/json") -> None:
    out = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def serve_ingest(settings: IngestSettings, *, emitter: Emitter | None = None) -> None:
    """Serve until SIGTERM or SIGINT (in the main thread) or until the server stops; then drain in order.

    Order: ``/readyz`` turns 503; the server stops accepting and finishes in-flight requests; the
    lifespan closes the emitter (at most ``emitter.close_timeout_s``; what is left stays spooled).
    Raises StartupError when the server stopped without a signal.
    """
    app = IngestApp(settings, emitter)
    limits = HttpLimits(max_connections=settings.ingest.max_connections)
    server = ServerWithoutSignals(uvicorn_config(app, host=settings.ingest.host, port=settings.ingest.port,
                                                 lifespan="on", limits=limits))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve(), name="provline-ingest")
    stop_task = asyncio.create_task(stop.wait())
    try:
        port = await server.bound_port(serving)
        if port is not None:
            log.info("provline ingest: CloudEvents, /healthz /readyz /metrics listening on http://%s:%d",
                     settings.ingest.host, port)
        done, _ = await asyncio.wait({stop_task, serving}, return_when=asyncio.FIRST_COMPLETED)
        log.info("provline ingest stopping")
        app.ready = False
        server.should_exit = True
        started = time.monotonic()
        await serving
        log.info("provline ingest stopped in %.1f s", time.monotonic() - started)
    finally:
        stop_task.cancel()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if stop_task not in done:
        raise StartupError("the ingest server stopped without being asked to (lifespan start-up failed or the port "
                           "is taken); see the log above and check PROVLINE_INGEST__PORT")


def run_ingest(settings: IngestSettings) -> None:
    """Run ``provline ingest`` until SIGTERM or SIGINT; blocks. Call from the main thread."""
    from provline.topics import keep_ensuring

    configure_logging(settings.ingest.log_format)
    if settings.transport() == "kafka":  # in the background: answering loggers never waits on Kafka
        topics = Topics(settings.topics.prefix)
        keep_ensuring(settings.kafka, settings.topics, service="provline ingest", names=[topics.inference])
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve_ingest(settings))
