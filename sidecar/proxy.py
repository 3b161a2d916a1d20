"""The reverse proxy that records predictions, a raw ASGI 3 app.

    app = SidecarApp(settings)       # serve it with lifespan on: it owns the upstream pool and the emitter

No routing, no request object, every header byte under our control. Per request the proxy reads
the body (or streams it on, tapping its size, hash and head), forwards it over the pool
(:mod:`provline.sidecar.upstream`), sends the upstream's reply to the client and queues the
exchange for the :class:`~provline.sidecar.recorder.Recorder`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from provline.producers.emitter import Emitter, build_emitter
from provline.schemas.events import new_event_id
from provline.sidecar.asgi import Receive, Scope, Send, serve_lifespan
from provline.sidecar.deployments import DeploymentFollower
from provline.sidecar.errors import (
    StartupError,
    UpstreamAborted,
    UpstreamError,
    UpstreamUnreachable,
    upstream_error_from,
)
from provline.sidecar.events import capture_rules
from provline.sidecar.headers import (
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    Header,
    caller_traceparent,
    choose_prediction_id,
    downstream_response_headers,
    first,
    host_header,
    new_traceparent,
    upstream_request_headers,
    usable_request_id,
    values,
)
from provline.sidecar.metrics import (
    ADDED_LATENCY,
    EVENT_BACKLOG,
    NON_INFERENCE,
    REQUESTS,
    SAMPLED_OUT,
    UPSTREAM_ABORTED,
    UPSTREAM_LATENCY,
)
from provline.sidecar.mlflow_model import read_mlflow_model
from provline.sidecar.model_version import DeploymentIndex, ModelVersionResolver
from provline.sidecar.otel import OtelUnavailableError, SpanExport, build_export
from provline.sidecar.payload import BodyTap, ObservedBody
from provline.sidecar.policy import KEYED_MODES, Mode, RouteDecision
from provline.sidecar.recorder import Exchange, Recorder
from provline.sidecar.routes import classify
from provline.sidecar.settings import SidecarSettings
from provline.sidecar.upstream import UpstreamPool, UpstreamResponse

log = logging.getLogger("provline.sidecar")

PRODUCER_NAME = "sidecar"
BACKLOG_INTERVAL_S = 1.0
DECISION_CACHE_SIZE = 4096
# A sidecar publishes a message for every request: at 5 ms (a job's default) librdkafka's broker
# thread sends so many small batches that it takes more CPU per request than the recorder
# (bench/sidecar.py, capture on: about a fifth of the sidecar's CPU per request saved at 50 ms).
# Events reach the broker up to this much later; replies never wait for them.
SIDECAR_LINGER_S = 0.05


class ClientGone(Exception):
    """The client disconnected before its whole request body arrived."""


def worker_settings(settings: SidecarSettings, worker: int) -> SidecarSettings:
    """The settings of one worker's emitter: never wait for room (drop and count), one spool per worker,
    and unless ``PROVLINE_EMITTER__LINGER_S`` says otherwise, batches that linger :data:`SIDECAR_LINGER_S`.

    A spool has exactly one writer, so each worker process gets ``<spool_dir>/worker-<n>``; the
    same worker number replays its predecessor's spool after a restart.
    """
    update: dict[str, Any] = {"on_full": "drop"}
    if "linger_s" not in settings.emitter.model_fields_set:
        update["linger_s"] = SIDECAR_LINGER_S
    if settings.emitter.spool_dir is not None:
        update["spool_dir"] = settings.emitter.spool_dir / f"worker-{worker}"
    return settings.model_copy(update={"emitter": settings.emitter.model_copy(update=update)})


class SidecarApp:
    """The reverse proxy, an ASGI 3 app; serve it with lifespan on (it owns the upstream session).

    ``emitter``: when given, the caller owns it and closes it; otherwise one is built from the
    settings at start-up (always ``on_full="drop"``: serving never waits for room; with a
    ``spool_dir``, this worker's own ``<spool_dir>/worker-<worker>``) and closed at shutdown,
    waiting at most ``emitter.close_timeout_s`` for queued events.

    Raises PolicyError at construction when the capture policy cannot be used.
    """

    def __init__(self, settings: SidecarSettings, emitter: Emitter | None = None, *, worker: int = 0) -> None:
        self.settings = settings
        self.emitter = emitter
        self.worker = worker
        self.ready = False
        self._owns_emitter = emitter is None
        self._pool: UpstreamPool | None = None
        proxy, capture = settings.sidecar, settings.capture
        upstream = proxy.upstream
        self._upstream_address = ((upstream.host or "").strip("[]"), upstream.port or 80)
        self._upstream_tls = upstream.scheme == "https"
        self._upstream_host = host_header(self._upstream_address[0], upstream.port, upstream.scheme)
        self._upstream_origin = f"{upstream.scheme}://{self._upstream_host}"
        self._upstream_prefix = (upstream.path or "").rstrip("/").encode("latin-1")
        rules = capture_rules(capture, max_rows=proxy.max_rows)
        self.mlflow_model = read_mlflow_model(proxy.mlflow_model) if proxy.mlflow_model is not None else None
        self._capture, self.policy, self._redactor = rules.capture, rules.policy, rules.redactor
        self._default_capture = rules.default_mode
        self._request_id_action = self.policy.headers.named("x-request-id")
        self._decisions: dict[tuple[str, str], RouteDecision] = {}
        self._requests_by_status: dict[int, Any] = {}  # labelled children: labels() costs a lock and a lookup
        self._non_inference_by_kind: dict[str, Any] = {}
        self._deployments = DeploymentIndex() if proxy.follow_deployments else None
        self._follower: DeploymentFollower | None = None
        self._resolver = ModelVersionResolver(
            static=proxy.model_version,
            fetch_metadata=self._fetch_metadata if proxy.kserve_metadata else None,
            deployments=self._deployments,
            ttl_s=proxy.metadata_ttl_s,
        )
        self._backlog_task: asyncio.Task[None] | None = None
        self.recorder: Recorder | None = None
        self.spans: SpanExport | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await serve_lifespan(receive, send, self.startup, self.shutdown)
        else:  # websocket: refused until the proxy learns to tunnel upgrades
            await send({"type": "websocket.close", "code": 1003})

    def readiness(self) -> tuple[bool, bytes]:
        """For the admin port's ``/readyz``."""
        return self.ready, b'{"status":"ready"}' if self.ready else b'{"status":"not ready"}'

    async def startup(self) -> None:
        """Open the upstream connection pool and, unless one was given, build the emitter."""
        s = self.settings
        host, port = self._upstream_address
        self._pool = UpstreamPool(
            host, port, max_connections=s.sidecar.upstream_max_connections, keepalive_s=s.sidecar.upstream_keepalive_s,
            connect_timeout_s=s.sidecar.upstream_connect_timeout_s, read_timeout_s=s.sidecar.upstream_read_timeout_s,
            ssl=ssl.create_default_context() if self._upstream_tls else None,
        )
        if self.emitter is None:
            self.emitter = build_emitter(worker_settings(s, self.worker), producer_name=PRODUCER_NAME)
        if self._deployments is not None:
            if not s.kafka.bootstrap:
                raise StartupError("follow_deployments needs PROVLINE_KAFKA__BOOTSTRAP to read Deployment events")
            self._follower = DeploymentFollower(s.kafka, s.topics, self._deployments)
        try:
            self.spans = build_export(s.otel)
        except OtelUnavailableError as exc:
            raise StartupError(str(exc)) from exc
        self.recorder = Recorder(
            self.emitter, policy=self.policy, redactor=self._redactor, capture=self._capture,
            resolver=self._resolver, endpoint=self._endpoint, model_name=s.sidecar.model_name, spans=self.spans,
            mlflow_model_uuid=self.mlflow_model.model_uuid if self.mlflow_model is not None else None,
        )
        self.recorder.start()
        self._backlog_task = asyncio.create_task(self._report_backlog(), name="provline-sidecar-backlog")
        self.ready = True
        log.info("provline sidecar forwarding to %s", s.sidecar.upstream, extra={"worker": self.worker})

    async def shutdown(self) -> None:
        """Record what is queued; close the pool; flush and close an emitter this app built (blocking
        work runs in a thread)."""
        self.ready = False
        if self._backlog_task is not None:
            self._backlog_task.cancel()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.spans is not None:
            await asyncio.to_thread(self.spans.shutdown)
            self.spans = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._follower is not None:
            await asyncio.to_thread(self._follower.stop)
        if self._owns_emitter and self.emitter is not None:
            delivered = await asyncio.to_thread(self.emitter.close)
            if not delivered:
                log.error(
                    "provline sidecar stopped with events undelivered after %.1fs; they stay in the spool "
                    "(PROVLINE_EMITTER__SPOOL_DIR) for the next start; raise PROVLINE_EMITTER__CLOSE_TIMEOUT_S "
                    "or check the broker", self.emitter.close_timeout_s,
                )

    async def _report_backlog(self) -> None:
        while True:
            if self.emitter is not None:
                EVENT_BACKLOG.set(self.emitter.backlog)
            await asyncio.sleep(BACKLOG_INTERVAL_S)

    def _prediction_id(self, request_id: bytes | None, capture: Mode) -> str:
        """The client's X-Request-ID, or where redaction applies what the policy's ``headers`` make of it:
        its keyed hash (deterministic, so still joinable) or, dropped, a fresh UUIDv7."""
        action = self._request_id_action if capture in KEYED_MODES else None
        if action is None:
            return choose_prediction_id(request_id)
        client_id = usable_request_id(request_id) if action == "hash" else None
        return self._redactor.keyed_hash(client_id) if client_id is not None else new_event_id()

    def _decide(self, method: str, path: str) -> RouteDecision:
        key = (method, path)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self.policy.decide(
                method, path, default_capture=self._default_capture, default_rate=self.settings.capture.sample_rate
            )
            if len(self._decisions) < DECISION_CACHE_SIZE:  # paths may be unbounded (ids in them)
                self._decisions[key] = decision
        return decision

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        pool, recorder = self._pool, self.recorder
        if pool is None or recorder is None:
            raise RuntimeError("the sidecar received a request before its lifespan started; serve it with lifespan on")
        arrived = time.perf_counter_ns()
        client_headers: list[Header] = scope["headers"]
        decision = self._decide(scope["method"], scope["path"])
        route = classify(scope["method"], scope["path"])
        announced = route.recorded or self.settings.sidecar.record_non_inference
        if not route.recorded:
            self._count_non_inference(route.kind)
        prediction_id = (self._prediction_id(first(client_headers, REQUEST_ID_HEADER), decision.capture)
                         if announced else new_event_id())  # an unannounced id only names the call in logs
        caller = caller_traceparent(values(client_headers, TRACEPARENT_HEADER))
        traceparent = caller or new_traceparent()
        recorded = announced and (decision.sample_rate >= 1.0 or random.random() < decision.sample_rate)
        digest_key = self._redactor.digest_key(decision.capture)

        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client left before sending its body: nothing was forwarded
        data: bytes | AsyncIterator[bytes] | None
        tap: BodyTap | None = None
        if message.get("more_body", False):  # a long body: stream it on, tapping size, hash and head
            tap = BodyTap(self._capture.keep_bytes, key=digest_key)
            data = _stream_request(message.get("body", b""), receive, tap)
            content_length = first(client_headers, b"content-length")
            request = b""  # known once streamed: the tap's size, hash and head
        else:
            request = message.get("body", b"")
            data = request
            content_length = str(len(request)).encode() if request or _has_body(client_headers) else None
        exchange = Exchange(scope, prediction_id, traceparent, decision.capture, recorded, request, announced=announced,
                            caller_traced=caller is not None)

        started = time.perf_counter_ns()
        try:
            try:
                response = await pool.request(
                    scope["method"].encode("ascii"),
                    self._upstream_target(scope),
                    self._upstream_headers(scope, prediction_id if announced else None, traceparent, content_length),
                    data,
                    chunked=tap is not None and content_length is None,
                )
            except Exception as exc:
                if tap is not None and _client_gone(exc):
                    return  # nobody to reply to; the upstream saw an incomplete body and no request is recorded
                raise self._upstream_error(exc) from exc
            if tap is not None:
                exchange.request = ObservedBody.tapped(tap)
            try:
                await self._relay(exchange, response, send, started)
            finally:
                response.release()
        except UpstreamError as error:
            if tap is not None:  # as much of the body as the upstream took before failing
                exchange.request = ObservedBody.tapped(tap)
            exchange.upstream_ns = time.perf_counter_ns() - started
            exchange.error, exchange.status = error, error.status
            exchange.reply = _error_body(error, prediction_id if announced else None)
            exchange.headers = [(b"content-type", b"application/json"),
                                (b"content-length", str(len(exchange.reply)).encode())]
            await self._send_reply(exchange, send)
        finally:
            if exchange.status:
                counter = self._requests_by_status.get(exchange.status)
                if counter is None:
                    counter = self._requests_by_status[exchange.status] = REQUESTS.labels(str(exchange.status))
                counter.inc()
                UPSTREAM_LATENCY.observe(exchange.upstream_ns / 1e9)
                ADDED_LATENCY.observe(max(0, time.perf_counter_ns() - arrived - exchange.upstream_ns) / 1e9)
        if exchange.recorded:
            recorder.queue(exchange)
        elif announced:
            SAMPLED_OUT.inc()

    def _count_non_inference(self, kind: str) -> None:
        counter = self._non_inference_by_kind.get(kind)
        if counter is None:
            counter = self._non_inference_by_kind[kind] = NON_INFERENCE.labels(kind)
        counter.inc()

    async def _relay(self, exchange: Exchange, response: UpstreamResponse, send: Send, started: int) -> None:
        """Pass the upstream's reply on: whole when small and of known length, else streamed chunk by chunk."""
        exchange.status = response.status
        exchange.headers = response.headers
        length = response.content_length
        if length is not None and length <= self.settings.sidecar.stream_threshold_bytes:
            try:
                exchange.reply = await response.read()
            except Exception as exc:
                raise self._upstream_error(exc) from exc
            exchange.upstream_ns = time.perf_counter_ns() - started
            await self._send_reply(exchange, send)
            return
        await send({"type": "http.response.start", "status": exchange.status,
                    "headers": self._client_headers(exchange)})
        tap = BodyTap(self._capture.keep_bytes, key=self._redactor.digest_key(exchange.capture))
        try:
            async for chunk in response.iter_chunks():
                tap.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:
            error = self._upstream_error(exc)
            exchange.upstream_ns = time.perf_counter_ns() - started
            exchange.error, exchange.reply = error, ObservedBody.tapped(tap)
            UPSTREAM_ABORTED.inc()
            if exchange.recorded and self.recorder is not None:
                self.recorder.queue(dataclasses.replace(exchange))  # a copy: the status is zeroed below
            exchange.status = 0  # counted below as an abort, not as a reply
            # The status line is gone: the only honest signal left is to cut the connection.
            raise UpstreamAborted(f"{error.reason}; the reply to {exchange.prediction_id} was cut off") from exc
        exchange.upstream_ns = time.perf_counter_ns() - started
        exchange.reply = ObservedBody.tapped(tap)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_reply(self, exchange: Exchange, send: Send) -> None:
        body = exchange.reply if isinstance(exchange.reply, bytes) else b""
        headers = self._client_headers(exchange)
        await send({"type": "http.response.start", "status": exchange.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _client_headers(self, exchange: Exchange) -> list[Header]:
        if not exchange.announced:
            return downstream_response_headers(exchange.headers, prediction_id=None, model_version=None)
        scope = exchange.scope
        version = self._resolver.known(
            header=None, route=classify(scope["method"], scope["path"]), endpoint=self._endpoint(scope)
        )
        return downstream_response_headers(
            exchange.headers, prediction_id=exchange.prediction_id, model_version=version
        )

    def _upstream_headers(
        self, scope: Scope, prediction_id: str | None, traceparent: str, content_length: bytes | None
    ) -> list[Header]:
        client = scope.get("client")
        return upstream_request_headers(
            scope["headers"],
            upstream_host=self._upstream_host,
            client_ip=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            traceparent=traceparent,
            prediction_id=prediction_id,
            content_length=content_length,
        )

    def _upstream_error(self, exc: BaseException) -> UpstreamError:
        error = upstream_error_from(exc, upstream=self._upstream_origin)
        if error is None:
            return UpstreamUnreachable(f"upstream {self._upstream_origin} failed: {type(exc).__name__}: {exc}")
        return error

    def _upstream_target(self, scope: Scope) -> bytes:
        """The request target upstream: the prefix, then path and query byte for byte as the client sent them."""
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        query = scope.get("query_string")
        return self._upstream_prefix + raw_path + b"?" + query if query else self._upstream_prefix + raw_path

    def _endpoint(self, scope: Scope) -> str:
        """The endpoint events record: the setting, else the route's canonical endpoint (the path without
        a model version)."""
        return self.settings.sidecar.endpoint or classify(scope["method"], scope["path"]).endpoint

    async def _fetch_metadata(self, model: str) -> Any:
        """KServe V2 model metadata, ``GET <upstream>/v2/models/<model>``; raises when there is none."""
        if self._pool is None:
            raise RuntimeError("the upstream connection pool is closed")
        target = self._upstream_prefix + b"/v2/models/" + quote(model, safe="").encode("ascii")
        response = await self._pool.request(b"GET", target, [(b"host", self._upstream_host.encode("latin-1")),
                                                             (b"accept", b"application/json")])
        try:
            body = await response.read()
        finally:
            response.release()
        if response.status != 200:
            raise UpstreamUnreachable(f"model metadata {target.decode('latin-1')} answered {response.status}")
        return json.loads(body)


async def _stream_request(head: bytes, receive: Receive, tap: BodyTap) -> AsyncIterator[bytes]:
    tap.feed(head)
    yield head
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected before sending its whole body")
        chunk = message.get("body", b"")
        tap.feed(chunk)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _client_gone(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:  # in case the upstream client wraps what the body iterator raised
        if isinstance(seen, ClientGone):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _has_body(headers: list[Header]) -> bool:
    """Whether the client framed a body (even an empty one), so the upstream gets a Content-Length too."""
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)


def _error_body(error: UpstreamError, prediction_id: str | None) -> bytes:
    if prediction_id is None:
        return json.dumps({"error": error.client_message}).encode()
    return json.dumps({"error": error.client_message, "prediction_id": prediction_id}).encode()
