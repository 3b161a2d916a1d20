"""The sidecar's ASGI apps (the reverse proxy that records predictions, the admin endpoints) and serving.

    run_sidecar(SidecarSettings(upstream="http://127.0.0.1:8000"))   # blocks until SIGTERM/SIGINT
    app = create_app(settings); admin = create_admin_app(app)       # to serve them yourself

The proxy is raw ASGI: no routing, no request object, every header byte under our control. Its
lifespan owns one connection pool towards the upstream (:mod:`provline.sidecar.upstream`) and the emitter.
Per request it reads the body, forwards it, sends the upstream's reply to the client and queues the exchange; a
background task, at its next turn of the event loop, turns everything queued into
InferenceRequest and InferenceResponse events. Event encoding never delays a reply, and the
busier the sidecar, the more exchanges are recorded in one go, which costs less CPU than
recording each right after its reply (measured in bench/sidecar.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import random
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from provline.producers.emitter import Emitter, build_emitter
from provline.producers.settings import EmitterSettings
from provline.sidecar.deployments import DeploymentFollower
from provline.sidecar.errors import (
    PolicyError,
    StartupError,
    UpstreamAborted,
    UpstreamError,
    UpstreamUnreachable,
    upstream_error_from,
)
from provline.sidecar.events import Capture, describe_body, request_fields, response_fields
from provline.sidecar.headers import (
    CLIENT_ID_HEADER,
    MODEL_VERSION_HEADER,
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    Header,
    choose_prediction_id,
    downstream_response_headers,
    first,
    host_header,
    traceparent_for_upstream,
    upstream_request_headers,
    values,
)
from provline.sidecar.logs import configure_logging
from provline.sidecar.metrics import (
    ADDED_LATENCY,
    EVENT_BACKLOG,
    EVENT_ERRORS,
    REQUESTS,
    SAMPLED_OUT,
    UPSTREAM_ABORTED,
    UPSTREAM_LATENCY,
)
from provline.sidecar.model_version import DeploymentIndex, ModelVersionResolver
from provline.sidecar.payload import BodyTap, ObservedBody
from provline.sidecar.policy import Mode, Policy, Redactor, RouteDecision, load_policy
from provline.sidecar.settings import SidecarSettings
from provline.sidecar.upstream import UpstreamPool, UpstreamResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("provline.sidecar")

PRODUCER_NAME = "sidecar"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BACKLOG_INTERVAL_S = 1.0
RECORD_INTERVAL_S = 0.0  # more gathers bigger batches, and holds up the requests that come meanwhile
# Exchanges waiting to be recorded hold their bodies; past this many, new ones are dropped and counted.
MAX_UNRECORDED = 4096
DECISION_CACHE_SIZE = 4096


class ClientGone(Exception):
    """The client disconnected before its whole request body arrived."""


@dataclass(slots=True)
class _Exchange:
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


class SidecarApp:
    """The reverse proxy, an ASGI 3 app; serve it with lifespan on (it owns the upstream session).

    ``emitter``: when given, the caller owns it and closes it; otherwise one is built from
    ``settings.emitter`` at start-up (always ``on_full="drop"``: serving never waits for room;
    with a ``spool_dir``, this worker's own ``<spool_dir>/worker-<worker>``) and closed at
    shutdown, waiting at most ``settings.flush_timeout_s`` for queued events.

    Raises PolicyError at construction when the capture policy cannot be used.
    """

    def __init__(self, settings: SidecarSettings, emitter: Emitter | None = None, *, worker: int = 0) -> None:
        self.settings = settings
        self.emitter = emitter
        self.worker = worker
        self.ready = False
        self._owns_emitter = emitter is None
        self._pool: UpstreamPool | None = None
        upstream = settings.upstream
        self._upstream_address = ((upstream.host or "").strip("[]"), upstream.port or 80)
        self._upstream_tls = upstream.scheme == "https"
        self._upstream_host = host_header(self._upstream_address[0], upstream.port, upstream.scheme)
        self._upstream_origin = f"{upstream.scheme}://{self._upstream_host}"
        self._upstream_prefix = (upstream.path or "").rstrip("/").encode("latin-1")
        self._capture = Capture(settings.max_capture_bytes, settings.max_parse_bytes, settings.max_features)
        self.policy = load_policy(settings.policy_file) if settings.policy_file else Policy()
        key = settings.redaction_key.get_secret_value().encode() if settings.redaction_key else None
        if self.policy.needs_key and not key:
            raise PolicyError(
                f"the capture policy {settings.policy_file} hashes fields but PROVLINE_REDACTION_KEY is not set; "
                "set it to a long random secret, the same for every worker and sidecar whose events you join"
            )
        self._redactor = Redactor(key)
        self._default_capture: Mode = settings.capture_mode or ("redacted" if settings.policy_file else "full")
        self._decisions: dict[tuple[str, str], RouteDecision] = {}
        self._requests_by_status: dict[int, Any] = {}  # labelled children: labels() costs a lock and a lookup
        self._deployments = DeploymentIndex() if settings.follow_deployments else None
        self._follower: DeploymentFollower | None = None
        self._resolver = ModelVersionResolver(
            static=settings.model_version,
            fetch_metadata=self._fetch_metadata if settings.kserve_metadata else None,
            deployments=self._deployments,
            ttl_s=settings.metadata_ttl_s,
        )
        self._backlog_task: asyncio.Task[None] | None = None
        self._unrecorded: collections.deque[_Exchange] = collections.deque()
        self._queued = asyncio.Event()
        self._recorder_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _serve_lifespan(receive, send, self.startup, self.shutdown)
        else:  # websocket: refused until the proxy learns to tunnel upgrades
            await send({"type": "websocket.close", "code": 1003})

    async def startup(self) -> None:
        """Open the upstream connection pool and, unless one was given, build the emitter."""
        s = self.settings
        host, port = self._upstream_address
        self._pool = UpstreamPool(
            host, port, max_connections=s.upstream_max_connections, keepalive_s=s.upstream_keepalive_s,
            connect_timeout_s=s.upstream_connect_timeout_s, read_timeout_s=s.upstream_read_timeout_s,
            ssl=ssl.create_default_context() if self._upstream_tls else None,
        )
        if self.emitter is None:
            self.emitter = build_emitter(worker_emitter_settings(s.emitter, self.worker), producer_name=PRODUCER_NAME)
        if self._deployments is not None:
            if not s.emitter.kafka_bootstrap:
                raise StartupError("follow_deployments needs PROVLINE_KAFKA_BOOTSTRAP to read Deployment events")
            self._follower = DeploymentFollower(s.emitter, self._deployments)
        self._backlog_task = asyncio.create_task(self._report_backlog(), name="provline-sidecar-backlog")
        self._recorder_task = asyncio.create_task(self._record_queued(), name="provline-sidecar-recorder")
        self.ready = True
        log.info("provline sidecar forwarding to %s", s.upstream, extra={"worker": self.worker})

    async def shutdown(self) -> None:
        """Record what is queued; close the pool; flush and close an emitter this app built (blocking
        work runs in a thread)."""
        self.ready = False
        if self._backlog_task is not None:
            self._backlog_task.cancel()
        if self._recorder_task is not None:
            self._recorder_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder_task
        await self._record_batch()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._follower is not None:
            await asyncio.to_thread(self._follower.stop)
        if self._owns_emitter and self.emitter is not None:
            delivered = await asyncio.to_thread(self.emitter.close, self.settings.flush_timeout_s)
            if not delivered:
                log.error(
                    "provline sidecar stopped with events undelivered after %.1fs; they stay in the spool "
                    "(PROVLINE_SPOOL_DIR) for the next start; raise PROVLINE_FLUSH_TIMEOUT_S or check the broker",
                    self.settings.flush_timeout_s,
                )

    async def _report_backlog(self) -> None:
        while True:
            backlog = getattr(self.emitter.transport, "backlog", None) if self.emitter is not None else None
            if isinstance(backlog, int):
                EVENT_BACKLOG.set(backlog)
            await asyncio.sleep(BACKLOG_INTERVAL_S)

    async def _record_queued(self) -> None:
        while True:
            await self._queued.wait()
            await asyncio.sleep(RECORD_INTERVAL_S)
            self._queued.clear()
            await self._record_batch()

    async def _record_batch(self) -> None:
        """Record everything queued: what was served since the last turn, so recording keeps pace
        with serving however busy. An exchange leaves the queue only once recorded, so a batch
        cancelled at shutdown loses nothing (``_record`` emits nothing before its one await)."""
        queue = self._unrecorded
        while queue:
            await self._record(queue[0])
            queue.popleft()

    def _queue_record(self, exchange: _Exchange) -> None:
        if len(self._unrecorded) < MAX_UNRECORDED:
            self._unrecorded.append(exchange)
            self._queued.set()
        elif self.emitter is not None:  # its two events are lost; the DeliveryGap record will say so
            self.emitter.drops.record("recorder_behind")
            self.emitter.drops.record("recorder_behind")

    def _decide(self, method: str, path: str) -> RouteDecision:
        key = (method, path)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self.policy.decide(
                method, path, default_capture=self._default_capture, default_rate=self.settings.sample_rate
            )
            if len(self._decisions) < DECISION_CACHE_SIZE:  # paths may be unbounded (ids in them)
                self._decisions[key] = decision
        return decision

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the sidecar received a request before its lifespan started; serve it with lifespan on")
        arrived = time.perf_counter_ns()
        client_headers: list[Header] = scope["headers"]
        prediction_id = choose_prediction_id(first(client_headers, REQUEST_ID_HEADER))
        traceparent = traceparent_for_upstream(values(client_headers, TRACEPARENT_HEADER))
        decision = self._decide(scope["method"], scope["path"])
        recorded = decision.sample_rate >= 1.0 or random.random() < decision.sample_rate

        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client left before sending its body: nothing was forwarded
        data: bytes | AsyncIterator[bytes] | None
        tap: BodyTap | None = None
        if message.get("more_body", False):  # a long body: stream it on, tapping size, hash and head
            tap = BodyTap(self._capture.keep_bytes)
            data = _stream_request(message.get("body", b""), receive, tap)
            content_length = first(client_headers, b"content-length")
            request: ObservedBody | bytes = b""
        else:
            request = message.get("body", b"")
            data, content_length = request, (str(len(request)).encode() if request or _has_body(client_headers)
                                             else None)
        exchange = _Exchange(scope, prediction_id, traceparent, decision.capture, recorded, request)

        started = time.perf_counter_ns()
        try:
            try:
                response = await pool.request(
                    scope["method"].encode("ascii"),
                    self._upstream_target(scope),
                    self._upstream_headers(scope, prediction_id, traceparent, content_length),
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
            exchange.reply = _error_body(error, prediction_id)
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
            self._queue_record(exchange)
        else:
            SAMPLED_OUT.inc()

    async def _relay(
        self, exchange: _Exchange, response: UpstreamResponse, send: Send, started: int
    ) -> None:
        """Pass the upstream's reply on: whole when small and of known length, else streamed chunk by chunk."""
        exchange.status = response.status
        exchange.headers = response.headers
        length = response.content_length
        if length is not None and length <= self.settings.stream_threshold_bytes:
            try:
                exchange.reply = await response.read()
            except Exception as exc:
                raise self._upstream_error(exc) from exc
            exchange.upstream_ns = time.perf_counter_ns() - started
            await self._send_reply(exchange, send)
            return
        await send({"type": "http.response.start", "status": exchange.status,
                    "headers": self._client_headers(exchange)})
        tap = BodyTap(self._capture.keep_bytes)
        try:
            async for chunk in response.iter_chunks():
                tap.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:
            error = self._upstream_error(exc)
            exchange.upstream_ns = time.perf_counter_ns() - started
            exchange.error, exchange.reply = error, ObservedBody.tapped(tap)
            UPSTREAM_ABORTED.inc()
            if exchange.recorded:
                self._queue_record(dataclasses.replace(exchange))  # a copy: the status is zeroed below
            exchange.status = 0  # counted below as an abort, not as a reply
            # The status line is gone: the only honest signal left is to cut the connection.
            raise UpstreamAborted(f"{error.reason}; the reply to {exchange.prediction_id} was cut off") from exc
        exchange.upstream_ns = time.perf_counter_ns() - started
        exchange.reply = ObservedBody.tapped(tap)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_reply(self, exchange: _Exchange, send: Send) -> None:
        body = exchange.reply if isinstance(exchange.reply, bytes) else b""
        headers = self._client_headers(exchange)
        await send({"type": "http.response.start", "status": exchange.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _client_headers(self, exchange: _Exchange) -> list[Header]:
        version = self._resolver.known(
            header=None, path=exchange.scope["path"], endpoint=self._endpoint(exchange.scope)
        )
        return downstream_response_headers(
            exchange.headers, prediction_id=exchange.prediction_id, model_version=version
        )

    def _upstream_headers(
        self, scope: Scope, prediction_id: str, traceparent: str, content_length: bytes | None
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
        return self.settings.endpoint or scope["path"]

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

    async def _record(self, exchange: _Exchange) -> None:
        """Emit the exchange's two events; a failure is logged and counted, never raised."""
        s = self.settings
        try:
            if self.emitter is None:
                raise RuntimeError("no emitter: the sidecar's lifespan did not start")
            scope, capture = exchange.scope, self._capture
            client_headers: list[Header] = scope["headers"]
            request = _observed(exchange.request)
            reply = _observed(exchange.reply)
            request_type = _text(first(client_headers, b"content-type"))
            request_record = describe_body(
                request, request_type, mode=exchange.capture, rules=self.policy.inputs,
                redactor=self._redactor, capture=capture, role="input",
            )
            reply_record = describe_body(
                reply, _text(first(exchange.headers, b"content-type")), mode=exchange.capture,
                rules=self.policy.outputs, redactor=self._redactor, capture=capture, role="output",
            )
            endpoint = self._endpoint(scope)
            model_version = await self._resolver.resolve(
                header=_text(first(exchange.headers, MODEL_VERSION_HEADER)),
                reply_version=reply_record.model_version, path=scope["path"], endpoint=endpoint,
            )
            model_name = s.model_name or self._resolver.model_name(scope["path"], endpoint)
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


def worker_emitter_settings(settings: EmitterSettings, worker: int) -> EmitterSettings:
    """The emitter settings of one worker: never wait for room (drop and count), one spool per worker.

    A spool has exactly one writer, so each worker process gets ``<spool_dir>/worker-<n>``; the
    same worker number replays its predecessor's spool after a restart.
    """
    update: dict[str, Any] = {"on_full": "drop"}
    if settings.spool_dir is not None:
        update["spool_dir"] = settings.spool_dir / f"worker-{worker}"
    return settings.model_copy(update=update)


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


def _observed(body: ObservedBody | bytes) -> ObservedBody:
    return body if isinstance(body, ObservedBody) else ObservedBody.whole(body)


class AdminApp:
    """``/healthz`` (process alive), ``/readyz`` (proxy started, not stopping) and ``/metrics``."""

    def __init__(self, proxy: SidecarApp) -> None:
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _serve_lifespan(receive, send, _nothing, _nothing)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            ready = self.proxy.ready
            await reply(send, 200 if ready else 503, b'{"status":"ready"}' if ready else b'{"status":"not ready"}')
        elif path == "/metrics":
            await reply(send, 200, generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
        else:
            await reply(send, 404, b'{"error":"not found; try /healthz, /readyz or /metrics"}')


def create_app(settings: SidecarSettings, emitter: Emitter | None = None, *, worker: int = 0) -> SidecarApp:
    """The proxy ASGI app for ``settings``; see :class:`SidecarApp` for who owns the emitter."""
    return SidecarApp(settings, emitter, worker=worker)


def create_admin_app(proxy: SidecarApp) -> AdminApp:
    """The admin ASGI app reporting on ``proxy``; serve it on its own port."""
    return AdminApp(proxy)


class ServerWithoutSignals(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve_sidecar`, which must stop two servers in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_implementation() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol, writing each small reply in one piece (see :mod:`provline.sidecar.transport`)."""
    if http_implementation() != "httptools":
        return "h11"
    from provline.sidecar.transport import CoalescingHttpToolsProtocol

    return CoalescingHttpToolsProtocol


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's default."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


def uvicorn_config(app: object, *, host: str, port: int, lifespan: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol(),
        lifespan=lifespan,
        # The client's address is appended to X-Forwarded-For by the proxy itself.
        proxy_headers=False,
        # The upstream's own Server and Date headers pass through; uvicorn must not add a second pair.
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,  # logging belongs to the program that calls run_sidecar
    )


async def serve_sidecar(settings: SidecarSettings, *, emitter: Emitter | None = None) -> None:
    """Serve until SIGTERM or SIGINT (in the main thread) or until one server stops; then stop in order.

    Order: ``/readyz`` turns 503; the proxy stops accepting and finishes in-flight requests; its
    lifespan closes the upstream pool and flushes events (at most ``settings.flush_timeout_s``);
    then the admin server stops. Raises StartupError when a server stopped without a signal.
    """
    app: SidecarApp = create_app(settings, emitter)
    proxy = ServerWithoutSignals(uvicorn_config(app, host=settings.host, port=settings.port, lifespan="on"))
    admin = ServerWithoutSignals(uvicorn_config(
        create_admin_app(app), host=settings.host, port=settings.admin_port, lifespan="off"
    ))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    proxy_task = asyncio.create_task(proxy.serve(), name="provline-sidecar-proxy")
    admin_task = asyncio.create_task(admin.serve(), name="provline-sidecar-admin")
    stop_task = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({stop_task, proxy_task, admin_task}, return_when=asyncio.FIRST_COMPLETED)
        log.info("provline sidecar stopping")
        app.ready = False
        proxy.should_exit = True
        await proxy_task
        admin.should_exit = True
        await admin_task
    finally:
        stop_task.cancel()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if stop_task not in done:
        raise StartupError(
            "the sidecar's proxy or admin server stopped without being asked to (lifespan start-up failed "
            "or a port is taken); see the log above and check PROVLINE_UPSTREAM, PROVLINE_SIDECAR_PORT "
            "and PROVLINE_SIDECAR_ADMIN_PORT"
        )


async def serve_worker(settings: SidecarSettings, *, worker: int, sock: socket.socket, ready_fd: int) -> None:
    """One worker process of :func:`provline.sidecar.workers.supervise`: the proxy on the shared socket.

    Writes one byte to ``ready_fd`` once it accepts requests; stops on SIGTERM or SIGINT,
    finishing in-flight requests and flushing its events like a single-process sidecar.
    """
    app = create_app(settings, worker=worker)
    proxy = ServerWithoutSignals(uvicorn_config(app, host=settings.host, port=settings.port, lifespan="on"))
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, lambda: setattr(proxy, "should_exit", True))
    task = asyncio.create_task(proxy.serve(sockets=[sock]), name=f"provline-sidecar-worker-{worker}")
    while not proxy.started and not task.done():
        await asyncio.sleep(0.01)
    if proxy.started:
        os.write(ready_fd, b"1")
    os.close(ready_fd)
    await task
    if not proxy.started:
        raise StartupError(f"sidecar worker {worker} failed to start; see the log above")


def run_sidecar(settings: SidecarSettings) -> None:
    """Run the sidecar until SIGTERM or SIGINT; blocks. Call from the main thread.

    With ``settings.workers > 1`` this process supervises that many worker processes
    (see :mod:`provline.sidecar.workers`); otherwise it serves the proxy and admin port itself.
    Logging is set up (``settings.log_format``) unless the program configured it already.
    """
    configure_logging(settings.log_format)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if settings.workers > 1:
            from provline.sidecar.workers import supervise

            runner.run(supervise(settings))
        else:
            runner.run(serve_sidecar(settings))


async def _serve_lifespan(
    receive: Receive, send: Send, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]]
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                log.exception("provline sidecar failed to start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _nothing() -> None:
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def reply(send: Send, status: int, body: bytes, *, content_type: str = "application/json") -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_body(error: UpstreamError, prediction_id: str) -> bytes:
    return json.dumps({"error": error.client_message, "prediction_id": prediction_id}).encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
