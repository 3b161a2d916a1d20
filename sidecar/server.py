"""How the sidecar's ASGI apps are served: uvicorn's configuration, its HTTP protocol and limits, and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any, Literal

import uvicorn

from provline.sidecar.limits import HttpLimits
from provline.sidecar.settings import ProxySettings


class ServerWithoutSignals(uvicorn.Server):
    """A uvicorn server that leaves signals to its caller, which must stop several servers in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def bound_port(self, serving: asyncio.Task[None]) -> int | None:
        """The port the server listens on once it started (the OS's choice for port 0); None if it stopped first."""
        while not self.started:
            if serving.done():
                return None
            await asyncio.sleep(0.01)
        return int(self.servers[0].sockets[0].getsockname()[1])


def http_implementation() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def http_limits(proxy: ProxySettings) -> HttpLimits:
    """The client-side limits the ``sidecar`` settings name."""
    return HttpLimits(proxy.max_header_bytes, proxy.header_timeout_s, proxy.idle_timeout_s, proxy.max_connections)


def http_protocol(limits: HttpLimits) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol within ``limits``, writing each small reply in one piece (see
    :mod:`provline.sidecar.transport`); h11 where httptools is missing (no header timeout then)."""
    if http_implementation() != "httptools":
        return "h11"
    from provline.sidecar.transport import CoalescingHttpToolsProtocol

    return CoalescingHttpToolsProtocol.with_limits(limits)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's default."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


def uvicorn_config(
    app: Callable[..., Any], *, host: str, port: int, lifespan: Literal["on", "off"], limits: HttpLimits | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration for one of the sidecar's servers; ``limits``: the defaults when None."""
    limits = limits or HttpLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol(limits),
        lifespan=lifespan,
        timeout_keep_alive=limits.idle_timeout_s,  # type: ignore[arg-type]  # typed int; any float works
        # uvicorn answers 503 once this many connections are open, counting the one asking: one more
        # than max_connections, so that max_connections are served.
        limit_concurrency=limits.max_connections + 1,
        h11_max_incomplete_event_size=limits.max_header_bytes,  # the header limit where h11 is used
        # The client's address is appended to X-Forwarded-For by the proxy itself.
        proxy_headers=False,
        # The upstream's own Server and Date headers pass through; uvicorn must not add a second pair.
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,  # logging belongs to the program that calls run_sidecar
    )
