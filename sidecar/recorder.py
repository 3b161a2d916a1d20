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
from collections.abc import Callable
from dataclasses import dataclass, field

from provline.producers.emitter import Emitter
from provline.sidecar.asgi import Scope
from provline.sidecar.errors import UpstreamError
from provline.sidecar.events import Capture, describe_body, request_fields, response_fields
from provline.sidecar.headers import CLIENT_ID_HEADER, MODEL_VERSION_HEADER, Header, first
from provline.sidecar.metrics import EVENT_ERRORS
from provline.sidecar.model_version import ModelVersionResolver
from provline.sidecar.payload import ObservedBody
from provline.sidecar.policy import Mode, Policy, Redactor

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


class Recorder:
    """Queues exchanges and records them from a background task; use from one event loop."""

    def __init__(
        self, emitter: Emitter, *, policy: Policy, redactor: Redactor, capture: Capture,
        resolver: ModelVersionResolver, endpoint: Callable[[Scope], str], model_name: str | None,
    ) -> None:
        self.emitter = emitter
        self._policy = policy
        self._redactor = redactor
        self._capture = capture
        self._resolver = resolver
        self._endpoint = endpoint
        self._model_name = model_name
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
        """Emit the exchange's two events; a failure is logged and counted, never raised."""
        try:
            scope, capture = exchange.scope, self._capture
            client_headers: list[Header] = scope["headers"]
            request = _observed(exchange.request)
            reply = _observed(exchange.reply)
            request_type = _text(first(client_headers, b"content-type"))
            request_record = describe_body(
                request, request_type, mode=exchange.capture, rules=self._policy.inputs,
                redactor=self._redactor, capture=capture, role="input",
            )
            reply_record = describe_body(
                reply, _text(first(exchange.headers, b"content-type")), mode=exchange.capture,
                rules=self._policy.outputs, redactor=self._redactor, capture=capture, role="output",
            )
            endpoint = self._endpoint(scope)
            model_version = await self._resolver.resolve(
                header=_text(first(exchange.headers, MODEL_VERSION_HEADER)),
                reply_version=reply_record.model_version, path=scope["path"], endpoint=endpoint,
            )
            model_name = self._model_name or self._resolver.model_name(scope["path"], endpoint)
            self.emitter.emit("InferenceRequest", request_fields(
                prediction_id=exchange.prediction_id,
                endpoint=endpoint,
                method=scope["method"],
                path=scope["path"],
                observed=request,
                record=request_record,
                content_type=request_type,
                client_id=_text(first(client_headers, CLIENT_ID_HEADER)),
                traceparent=exchange.traceparent,
                model_name=model_name,
                model_version=model_version,
            ))
            self.emitter.emit("InferenceResponse", response_fields(
                prediction_id=exchange.prediction_id,
                endpoint=endpoint,
                status=exchange.status,
                observed=reply,
                record=reply_record,
                model_name=model_name,
                model_version=model_version,
                latency_us=exchange.upstream_ns // 1000,
                error=exchange.error.reason if exchange.error else None,
            ))
        except Exception:
            EVENT_ERRORS.inc()
            log.exception("provline sidecar could not record prediction %s; the reply was sent",
                          exchange.prediction_id, extra={"prediction_id": exchange.prediction_id})


def _observed(body: ObservedBody | bytes) -> ObservedBody:
    return body if isinstance(body, ObservedBody) else ObservedBody.whole(body)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
