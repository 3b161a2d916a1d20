"""The admin port: ``/healthz`` (the process is alive), ``/readyz`` and ``/metrics``, an ASGI app.

One app serves both a single-process sidecar (ready while its proxy is) and the supervisor of
several workers (ready while every worker is; metrics summed over them); what differs is passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from provline.sidecar.asgi import Receive, Scope, Send, nothing, reply, serve_lifespan

Readiness = Callable[[], tuple[bool, bytes]]  # (ready?, JSON body of /readyz)


def default_metrics() -> bytes:
    return generate_latest(REGISTRY)


class AdminApp:
    """``/healthz``, ``/readyz`` (200 when ``readiness()`` says ready, else 503) and ``/metrics``."""

    def __init__(self, readiness: Readiness, *, metrics: Callable[[], bytes] = default_metrics) -> None:
        self.readiness = readiness
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, nothing, nothing)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            ready, body = self.readiness()
            await reply(send, 200 if ready else 503, body)
        elif path == "/metrics":
            await reply(send, 200, self.metrics(), content_type=CONTENT_TYPE_LATEST)
        else:
            await reply(send, 404, b'{"error":"not found; try /healthz, /readyz or /metrics"}')
