"""How the sidecar's ASGI apps are served: uvicorn's configuration, its HTTP protocol and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any, Literal

import uvicorn


class ServerWithoutSignals(uvicorn.Server):
    """A uvicorn server that leaves signals to its caller, which must stop several servers in order."""

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


def uvicorn_config(app: Callable[..., Any], *, host: str, port: int, lifespan: Literal["on", "off"]) -> uvicorn.Config:
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
