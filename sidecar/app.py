"""The sidecar's ASGI apps (the reverse proxy that records predictions, the admin endpoints) and serving.

    run_sidecar(SidecarSettings(upstream="http://127.0.0.1:8000"))   # blocks until SIGTERM/SIGINT
    app = create_app(settings); admin = create_admin_app(app)       # to serve them yourself

The proxy is raw ASGI: no routing, no request object, every header byte under our control. Its
lifespan owns one pooled aiohttp session towards the upstream and the emitter. Per request it
reads the body, forwards it, sends the upstream's reply to the client, and only then builds and
emits the InferenceRequest and InferenceResponse events, so event encoding never delays a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import quote

import aiohttp
import uvicorn
import yarl
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from producers.emitter import Emitter, build_emitter
from sidecar.errors import StartupError, UpstreamError, upstream_error_from
from sidecar.events import Capture, request_fields, response_fields
from sidecar.headers import (
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
from sidecar.metrics import EVENT_ERRORS, REQUESTS, UPSTREAM_LATENCY
from sidecar.settings import SidecarSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("provline.sidecar")

PRODUCER_NAME = "sidecar"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# aiohttp adds these unless told not to; the upstream must see only what the client sent.
SKIPPED_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


class SidecarApp:
    """The reverse proxy, an ASGI 3 app; serve it with lifespan on (it owns the upstream session).

    ``emitter``: when given, the caller owns it and closes it; otherwise one is built from
    ``settings.emitter`` at start-up and closed at shutdown, waiting at most
    ``settings.flush_timeout_s`` for queued events.
    """

    def __init__(self, settings: SidecarSettings, emitter: Emitter | None = None) -> None:
        self.settings = settings
        self.emitter = emitter
        self.ready = False
        self._owns_emitter = emitter is None
        self._session: aiohttp.ClientSession | None = None
        upstream = yarl.URL(str(settings.upstream))
        self._upstream_origin = str(upstream.origin())
        self._upstream_prefix = upstream.raw_path.rstrip("/")
        self._upstream_host = host_header(upstream.raw_host or "", upstream.port, upstream.scheme)
        self._capture = Capture(settings.max_capture_bytes, settings.max_parse_bytes)

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
        connector = aiohttp.TCPConnector(
            limit=s.upstream_max_connections, limit_per_host=0, keepalive_timeout=s.upstream_keepalive_s
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=s.upstream_connect_timeout_s,  # includes waiting for a free pooled connection
            sock_connect=s.upstream_connect_timeout_s,
            sock_read=s.upstream_read_timeout_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=SKIPPED_AUTO_HEADERS,
            # A shared cookie jar would replay one client's cookies on another client's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        if self.emitter is None:
            self.emitter = build_emitter(s.emitter, producer_name=PRODUCER_NAME)
        self.ready = True
        log.info("provline sidecar forwarding to %s", s.upstream)

    async def shutdown(self) -> None:
        """Close the pool; flush and close an emitter this app built (blocking work runs in a thread)."""
        self.ready = False
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._owns_emitter and self.emitter is not None:
            delivered = await asyncio.to_thread(self.emitter.close, self.settings.flush_timeout_s)
            if not delivered:
                log.error(
                    "provline sidecar stopped with events undelivered after %.1fs; "
                    "raise PROVLINE_FLUSH_TIMEOUT_S or check the broker", self.settings.flush_timeout_s,
                )

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("the sidecar received a request before its lifespan started; serve it with lifespan on")
        client_headers: list[Header] = scope["headers"]
        prediction_id = choose_prediction_id(first(client_headers, REQUEST_ID_HEADER))
        traceparent = traceparent_for_upstream(values(client_headers, TRACEPARENT_HEADER))
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its whole body: nothing was forwarded
        started = time.perf_counter_ns()
        error: UpstreamError | None = None
        try:
            status, headers, reply = await self._call_upstream(session, scope, body, prediction_id, traceparent)
        except UpstreamError as exc:
            error = exc
            status, reply = exc.status, _error_body(exc, prediction_id)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]
        latency_us = (time.perf_counter_ns() - started) // 1000
        UPSTREAM_LATENCY.observe(latency_us / 1e6)
        model_version = _text(first(headers, MODEL_VERSION_HEADER)) or self.settings.model_version
        reply_headers = downstream_response_headers(
            headers, prediction_id=prediction_id, model_version=self.settings.model_version
        )
        try:
            await send({"type": "http.response.start", "status": status, "headers": reply_headers})
            await send({"type": "http.response.body", "body": reply})
        finally:
            REQUESTS.labels(str(status)).inc()
            # After the reply: the client is not kept waiting while events are built and encoded.
            self._record(
                scope, client_headers, body, prediction_id, traceparent,
                status, headers, reply, model_version, latency_us, error,
            )

    async def _call_upstream(
        self, session: aiohttp.ClientSession, scope: Scope, body: bytes, prediction_id: str, traceparent: str
    ) -> tuple[int, list[Header], bytes]:
        client = scope.get("client")
        headers = upstream_request_headers(
            scope["headers"],
            upstream_host=self._upstream_host,
            client_ip=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            traceparent=traceparent,
            prediction_id=prediction_id,
        )
        try:
            async with session.request(
                scope["method"],
                self._upstream_url(scope),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=body or None,
                allow_redirects=False,  # a redirect is the client's to follow
            ) as response:
                reply = await response.read()
                return response.status, [(k.lower(), v) for k, v in response.raw_headers], reply
        except Exception as exc:
            error = upstream_error_from(exc, upstream=self._upstream_origin)
            if error is None:
                raise
            raise error from exc

    def _upstream_url(self, scope: Scope) -> yarl.URL:
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        target = self._upstream_prefix + raw_path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        # encoded=True: the path and query go upstream byte for byte as the client sent them
        return yarl.URL(self._upstream_origin + target, encoded=True)

    def _record(
        self, scope: Scope, client_headers: list[Header], body: bytes, prediction_id: str, traceparent: str,
        status: int, headers: list[Header], reply: bytes, model_version: str | None, latency_us: int,
        error: UpstreamError | None,
    ) -> None:
        """Emit the exchange's two events; a failure is logged and counted, never raised."""
        s = self.settings
        try:
            if self.emitter is None:
                raise RuntimeError("no emitter: the sidecar's lifespan did not start")
            endpoint = s.endpoint or scope["path"]
            self.emitter.emit("InferenceRequest", request_fields(
                prediction_id=prediction_id,
                endpoint=endpoint,
                method=scope["method"],
                path=scope["path"],
                body=body,
                content_type=_text(first(client_headers, b"content-type")),
                client_id=_text(first(client_headers, CLIENT_ID_HEADER)),
                traceparent=traceparent,
                model_name=s.model_name,
                model_version=s.model_version,
                capture=self._capture,
            ))
            self.emitter.emit("InferenceResponse", response_fields(
                prediction_id=prediction_id,
                endpoint=endpoint,
                status=status,
                body=reply,
                content_type=_text(first(headers, b"content-type")),
                model_name=s.model_name,
                model_version=model_version,
                latency_us=latency_us,
                error=error.reason if error else None,
                capture=self._capture,
            ))
        except Exception:
            EVENT_ERRORS.inc()
            log.exception("provline sidecar could not record prediction %s; the reply was sent", prediction_id)


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
            await _reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            ready = self.proxy.ready
            await _reply(send, 200 if ready else 503, b'{"status":"ready"}' if ready else b'{"status":"not ready"}')
        elif path == "/metrics":
            await _reply(send, 200, generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
        else:
            await _reply(send, 404, b'{"error":"not found; try /healthz, /readyz or /metrics"}')


def create_app(settings: SidecarSettings, emitter: Emitter | None = None) -> SidecarApp:
    """The proxy ASGI app for ``settings``; see :class:`SidecarApp` for who owns the emitter."""
    return SidecarApp(settings, emitter)


def create_admin_app(proxy: SidecarApp) -> AdminApp:
    """The admin ASGI app reporting on ``proxy``; serve it on its own port."""
    return AdminApp(proxy)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve_sidecar`, which must stop two servers in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_implementation() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


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
        http=http_implementation(),
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
    proxy = _Server(uvicorn_config(app, host=settings.host, port=settings.port, lifespan="on"))
    admin = _Server(uvicorn_config(
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


def run_sidecar(settings: SidecarSettings) -> None:
    """Run the sidecar in this process until SIGTERM or SIGINT; blocks. Call from the main thread."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
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


async def _reply(send: Send, status: int, body: bytes, *, content_type: str = "application/json") -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_body(error: UpstreamError, prediction_id: str) -> bytes:
    return json.dumps({"error": error.client_message, "prediction_id": prediction_id}).encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
