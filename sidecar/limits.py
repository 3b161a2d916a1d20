"""What one client connection may cost the sidecar: the HTTP limits, and the replies that refuse a request.

Pure; the protocol in :mod:`provline.sidecar.transport` enforces them, :mod:`provline.sidecar.server`
hands them to uvicorn. The defaults follow Envoy and nginx: Envoy allows 60 KiB of request
headers, nginx closes a connection whose headers take longer than ``client_header_timeout``; the
idle timeout is uvicorn's own default.
"""

from __future__ import annotations

import http
from dataclasses import dataclass

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 5.0
DEFAULT_MAX_CLIENT_CONNECTIONS = 1000


@dataclass(frozen=True)
class HttpLimits:
    """``max_header_bytes``: request line and headers; ``header_timeout_s``: for them to arrive;
    ``idle_timeout_s``: of a kept-alive connection; ``max_connections``: served at once."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CLIENT_CONNECTIONS

    def too_large(self) -> str:
        return (f"request line and headers exceed the sidecar's limit of {self.max_header_bytes} bytes; send fewer "
                "or smaller headers, or raise PROVLINE_SIDECAR__MAX_HEADER_BYTES")

    def too_slow(self) -> str:
        return (f"request headers not complete within the sidecar's {self.header_timeout_s:g} s; send them at once, "
                "or raise PROVLINE_SIDECAR__HEADER_TIMEOUT_S")


def refusal(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` reply with a plain-text ``message``."""
    body = message.encode("ascii")
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii") + body
