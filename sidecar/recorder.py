"""The recorder: served exchanges into InferenceRequest and InferenceResponse events, off the response path.

The proxy queues each exchange once its reply has been sent; a background task records
everything queued at each turn of the event loop. Event encoding never delays a reply, and the
busier the sidecar, the more exchanges are recorded in one go, which costs less CPU than
recording each right after its reply (measured in bench/sidecar.py). At most
:data:`MAX_UNRECORDED` exchanges wait (they hold their bodies); beyond that new ones are dropped,
counted (reason ``recorder_behind``) and reported by a DeliveryGap record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from provline.producers.emitter import Emitter
from provline.sidecar.asgi import Scope
from provline.sidecar.errors import UpstreamError
from provline.sidecar.events import (
    BodyRecord,
    Capture,
    describe_body,
    not_captured,
    request_fields,
    response_fields,
)
from provline.sidecar.headers import (
    CLIENT_ID_HEADER,
    CONTENT_ENCODING_HEADER,
    MODEL_VERSION_HEADER,
    REPLY_REQUEST_ID_HEADERS,
    REQUEST_ID_HEADER,
    Header,
    firsts,
)
from provline.sidecar.metrics import DEGRADED_RECORDS, EVENT_ERRORS
from provline.sidecar.model_version import ModelMetadata, ModelVersionResolver
from provline.sidecar.otel import ExchangeSpan, SpanExport
from provline.sidecar.payload import ObservedBody
from provline.sidecar.policy import KEYED_MODES, Mode, Policy, Redactor
from provline.sidecar.routes import classify

log = logging.getLogger("provline.sidecar")

RECORD_INTERVAL_S = 0.0  # more gathers bigger batches, and holds up the requests that come meanwhile
MAX_UNRECORDED = 4096


@dataclass(slots=True)
class Exchange:
    """One proxied exchange, as the recorder needs it after the reply was sent."""

    scope: Scope
    prediction_id: str
    traceparent: str
    capture: Mode
    recorded: bool  # False when sampled out
    request: ObservedBody | bytes
    status: int = 0
    headers: list[Header] = field(default_factory=list)
    reply: ObservedBody | bytes = b""
    upstream_ns: int = 0
    error: UpstreamError | None = None
    # Whether upstream and client are told the prediction id: not for a known non-inference call
    # (health, metadata) that is not recorded, which is relayed as it is.
    announced: bool = True
    received_ns: int = field(default_factory=time.time_ns)  # wall clock when the request arrived
    caller_traced: bool = False  # whether ``traceparent`` is the caller's (else the sidecar began the trace)
    sent_ns: int = 0  # wall clock when the reply had been sent (set when queued for recording)

    def event_time(self, kind: str) -> datetime:
        """When the event's half happened: the request when it arrived, the reply when the upstream gave it."""
        ns = self.received_ns + (self.upstream_ns if kind == "InferenceResponse" else 0)
        return datetime.fromtimestamp(ns / 1e9, UTC)


class Recorder:
    """Queues exchanges and records them from a background task; use from one event loop."""

    def __init__(
        self, emitter: Emitter, *, policy: Policy, redactor: Redactor, capture: Capture,
        resolver: ModelVersionResolver, endpoint: Callable[[Scope], str], model_name: str | None,
        spans: SpanExport | None = None, mlflow_model_uuid: str | None = None,
    ) -> None:
        self.emitter = emitter
        self._spans = spans
        self._policy = policy
        self._redactor = redactor
        self._capture = capture
        self._resolver = resolver
        self._endpoint = endpoint
        self._model_name = model_name
        self._mlflow_model_uuid = mlflow_model_uuid  # of the model directory the upstream serves, when given
        self._unrecorded: collections.deque[Exchange] = collections.deque()
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._record_queued(), name="provline-sidecar-recorder")

    async def stop(self) -> None:
        """Stop the background task and record what is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.record_batch()

    def queue(self, exchange: Exchange) -> None:
        """Queue a served exchange for recording; never waits. Past MAX_UNRECORDED it is dropped and counted."""
        if len(self._unrecorded) < MAX_UNRECORDED:
            exchange.sent_ns = exchange.sent_ns or time.time_ns()
            self._unrecorded.append(exchange)
            self._queued.set()
        else:  # its two events are lost; the DeliveryGap record will say so
            self.emitter.drops.record("recorder_behind")
            self.emitter.drops.record("recorder_behind")

    async def _record_queued(self) -> None:
        while True:
            await self._queued.wait()
            await asyncio.sleep(RECORD_INTERVAL_S)
            self._queued.clear()
            await self.record_batch()

    async def record_batch(self) -> None:
        """Record everything queued: what was served since the last turn, so recording keeps pace
        with serving however busy. An exchange leaves the queue only once recorded, so a batch
        cancelled at shutdown loses nothing (``record`` emits nothing before its one await)."""
        queue = self._unrecorded
        while queue:
            await self.record(queue[0])
            queue.popleft()

    async def record(self, exchange: Exchange) -> None:
        """Emit the exchange's two events, as one message (:meth:`Emitter.emit_exchange`); never raises.

        When the full pair cannot be built or emitted (any exception), the half that failed is
        emitted degraded instead (both, when the pair could not be built or either way fails): no
        body, features or outputs, the reason in ``parse_error`` (and the response's ``error``),
        everything else kept. Only when even that fails are the events counted as dropped (reason
        ``record_failed``), so a DeliveryGap record says so.
        """
        known = _Known(endpoint=exchange.scope.get("path", ""), model_name=self._model_name,
                       mlflow_model_uuid=self._mlflow_model_uuid)
        try:
            pair = await self._full_pair(exchange, known)
        except Exception as exc:
            self._record_degraded(exchange, known, exc, None)
            return
        try:
            self._emit_pair(exchange, pair)
        except Exception as exc:
            self._record_degraded(exchange, known, exc, pair)

    def _emit_pair(self, exchange: Exchange, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
        self.emitter.emit_exchange(*pair, request_time=exchange.event_time("InferenceRequest"),
                                   response_time=exchange.event_time("InferenceResponse"))
        if self._spans is not None:  # the exchange is recorded: its span names the recorded fields
            request, response = pair
            self._spans.export(ExchangeSpan(
                prediction_id=exchange.prediction_id, endpoint=request["endpoint"],
                start_ns=exchange.received_ns, end_ns=exchange.sent_ns or time.time_ns(),
                traceparent=exchange.traceparent if exchange.caller_traced else None,
                began=None if exchange.caller_traced else exchange.traceparent,
                model_name=request.get("model_name"), model_version=request.get("model_version"),
                status=response.get("status"), input_sha256=request.get("body_sha256"), error=response.get("error"),
            ))

    async def _full_pair(self, exchange: Exchange, known: _Known) -> tuple[dict[str, Any], dict[str, Any]]:
        """Both events' fields, with bodies captured per the exchange's mode; fills ``known`` as it goes."""
        scope, capture = exchange.scope, self._capture
        seen = _Seen.of(exchange)
        route = classify(scope["method"], scope["path"])
        known.endpoint = endpoint = self._endpoint(scope)
        known.model_name = model_name = self._model_name or self._resolver.model_name(route, endpoint)
        key = self._redactor.digest_key(exchange.capture)
        request, reply = _observed(exchange.request, key), _observed(exchange.reply, key)
        client_id, traceparent = self._recorded_headers(exchange, seen)
        request_type, request_encoding = seen.request.get(b"content-type"), seen.request.get(CONTENT_ENCODING_HEADER)
        reply_encoding = seen.reply.get(CONTENT_ENCODING_HEADER)
        metadata = _NO_METADATA  # the model's names for a single 2-D tensor's columns
        if route.protocol == "kserve_v2" and exchange.capture != "hash-only":
            metadata = await self._resolver.metadata(route)
        request_record = describe_body(
            request, request_type, mode=exchange.capture, rules=self._policy.inputs,
            redactor=self._redactor, capture=capture, role="input", content_encoding=request_encoding,
            names=metadata.inputs,
        )
        reply_record = describe_body(
            reply, seen.reply.get(b"content-type"), mode=exchange.capture,
            rules=self._policy.outputs, redactor=self._redactor, capture=capture, role="output",
            content_encoding=reply_encoding, batch_hint=request_record.row_count or None, names=metadata.outputs,
        )
        known.model_version = model_version = await self._resolver.resolve(
            header=seen.reply.get(MODEL_VERSION_HEADER), reply_version=reply_record.model_version, route=route,
            endpoint=endpoint,
        )
        request_id, reply_id = self._request_ids(exchange, seen, request_record.request_id, reply_record.request_id)
        return (
            request_fields(
                prediction_id=exchange.prediction_id,
                endpoint=endpoint,
                method=scope["method"],
                path=scope["path"],
                observed=request,
                record=request_record,
                content_type=request_type,
                client_id=client_id,
                traceparent=traceparent,
                model_name=model_name,
                model_version=model_version,
                request_id=request_id,
                content_encoding=request_encoding,
                mlflow_model_uuid=known.mlflow_model_uuid,
            ),
            response_fields(
                prediction_id=exchange.prediction_id,
                endpoint=endpoint,
                status=exchange.status,
                observed=reply,
                record=reply_record,
                model_name=model_name,
                model_version=model_version,
                latency_us=exchange.upstream_ns // 1000,
                error=exchange.error.reason if exchange.error else None,
                request_id=reply_id,
                content_encoding=reply_encoding,
                mlflow_model_uuid=known.mlflow_model_uuid,
            ),
        )

    def _record_degraded(self, exchange: Exchange, known: _Known, failure: Exception,
                         full: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
        """Emit the pair with the half that failed without its body (each half in turn, then both; both
        when there is no ``full`` pair); count both events dropped when even that fails."""
        reason = not_captured(failure)
        DEGRADED_RECORDS.labels(type(failure).__name__).inc()
        if known.model_version is None:  # recording failed before the version was resolved
            with contextlib.suppress(Exception):
                known.model_version = self._resolver.known(
                    header=_Seen.of(exchange).reply.get(MODEL_VERSION_HEADER),
                    route=classify(exchange.scope["method"], exchange.scope["path"]), endpoint=known.endpoint,
                )
        # No traceback: hostile bodies must not turn into a flood of them; the reason names the exception.
        log.warning("provline sidecar recorded prediction %s without its bodies: %s", exchange.prediction_id,
                    reason, extra={"prediction_id": exchange.prediction_id})
        try:
            seen = _Seen.of(exchange)
            client_id, traceparent = self._recorded_headers(exchange, seen)
            key = self._redactor.digest_key(exchange.capture)
            request_ids = self._request_ids(exchange, seen, None, None)
            degraded = degraded_pair(exchange, known, reason, key=key, client_id=client_id,
                                     traceparent=traceparent, request_ids=request_ids, seen=seen)
            tries = [(full[0], degraded[1]), (degraded[0], full[1])] if full is not None else []
            for pair in tries:
                with contextlib.suppress(Exception):
                    self._emit_pair(exchange, pair)
                    return
            self._emit_pair(exchange, degraded)
        except Exception:
            EVENT_ERRORS.inc()
            for _ in range(2):  # lost: the DeliveryGap record will say so
                self.emitter.drops.record("record_failed")
            log.exception("provline sidecar could not record prediction %s; the reply was sent",
                          exchange.prediction_id, extra={"prediction_id": exchange.prediction_id})

    def _recorded_headers(self, exchange: Exchange, seen: _Seen) -> tuple[str | None, str | None]:
        """The client id and traceparent the events record: as sent in ``full`` mode, else under the
        policy's ``headers`` rules."""
        client_id = seen.request.get(CLIENT_ID_HEADER)
        if exchange.capture not in KEYED_MODES:
            return client_id, exchange.traceparent
        rules, redactor = self._policy.headers, self._redactor
        return (redactor.header(rules.named("x-client-id"), client_id),
                redactor.header(rules.named("traceparent"), exchange.traceparent))

    def _request_ids(self, exchange: Exchange, seen: _Seen, request_body_id: str | None,
                     reply_body_id: str | None) -> tuple[str | None, str | None]:
        """The request ids the two events record: a KServe V2 body's own ``id``, else the request's
        X-Request-ID header (the reply's ce-requestid, ce-id or X-Request-ID); as sent in ``full``
        mode, else under the stronger of the policy's rules for the x-request-id header and a body ``id``."""
        request_id = request_body_id or seen.request.get(REQUEST_ID_HEADER)
        reply_id = reply_body_id or next((seen.reply[name] for name in REPLY_REQUEST_ID_HEADERS if name in seen.reply),
                                         None)
        if exchange.capture not in KEYED_MODES:
            return request_id, reply_id
        policy, redactor = self._policy, self._redactor
        return (redactor.header(policy.request_id_action(policy.inputs), request_id),
                redactor.header(policy.request_id_action(policy.outputs), reply_id))


_NO_METADATA = ModelMetadata()
_REQUEST_HEADERS = frozenset({b"content-type", CONTENT_ENCODING_HEADER, CLIENT_ID_HEADER, REQUEST_ID_HEADER})
_REPLY_HEADERS = frozenset({b"content-type", CONTENT_ENCODING_HEADER, MODEL_VERSION_HEADER, *REPLY_REQUEST_ID_HEADERS})


@dataclass(frozen=True, slots=True)
class _Seen:
    """The request and reply header values the events use (first value of each), read in one pass each."""

    request: dict[bytes, str]
    reply: dict[bytes, str]

    @classmethod
    def of(cls, exchange: Exchange) -> _Seen:
        request: list[Header] = exchange.scope.get("headers", [])
        return cls(firsts(request, _REQUEST_HEADERS), firsts(exchange.headers, _REPLY_HEADERS))


@dataclass(slots=True)
class _Known:
    """What the recorder learnt of an exchange before recording it failed: kept in a degraded record."""

    endpoint: str
    model_name: str | None
    model_version: str | None = None
    mlflow_model_uuid: str | None = None


def degraded_pair(
    exchange: Exchange, known: _Known, reason: str, *, key: bytes | None, client_id: str | None,
    traceparent: str | None, request_ids: tuple[str | None, str | None], seen: _Seen,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two events of an exchange whose bodies could not be captured: ids, endpoint, method and
    path, status, sizes, digests (keyed with ``key``), latency, model, the recorded headers and
    request ids; no body, features or outputs (no rows); ``reason`` says why."""
    scope = exchange.scope
    request, reply = _observed(exchange.request, key), _observed(exchange.reply, key)
    error = f"{exchange.error.reason}; {reason}" if exchange.error else reason
    return (
        request_fields(
            prediction_id=exchange.prediction_id, endpoint=known.endpoint, model_name=known.model_name,
            model_version=known.model_version, method=str(scope.get("method", "")), path=str(scope.get("path", "")),
            observed=request, record=BodyRecord(error=reason),
            content_type=seen.request.get(b"content-type"), client_id=client_id, traceparent=traceparent,
            request_id=request_ids[0], content_encoding=seen.request.get(CONTENT_ENCODING_HEADER),
            mlflow_model_uuid=known.mlflow_model_uuid,
        ),
        response_fields(
            prediction_id=exchange.prediction_id, endpoint=known.endpoint, model_name=known.model_name,
            model_version=known.model_version, status=exchange.status, observed=reply, record=BodyRecord(),
            latency_us=exchange.upstream_ns // 1000, error=error, request_id=request_ids[1],
            content_encoding=seen.reply.get(CONTENT_ENCODING_HEADER), mlflow_model_uuid=known.mlflow_model_uuid,
        ),
    )


def _observed(body: ObservedBody | bytes, key: bytes | None) -> ObservedBody:
    """A body held whole digested now (keyed with ``key``); a streamed one was digested as it passed."""
    return body if isinstance(body, ObservedBody) else ObservedBody.whole(body, key=key)


