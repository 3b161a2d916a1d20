"""uvicorn's httptools protocol, sending a reply's head and body in one write.

uvicorn writes the status line and headers of ``http.response.start`` at once, then the body of
each ``http.response.body``: two system calls and two TCP segments for every small reply, and
the client is woken twice. The proxy sends both messages in the same event-loop step, so a
transport that gathers the writes of one step and sends them when the reply is complete (or,
for a streamed reply, when the step ends) halves that cost without changing a byte on the wire.
Large writes go out at once (with anything gathered before them), so streamed bodies are
neither copied nor delayed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Writes at least this large are sent at once: joining them would copy more than a system call costs.
IMMEDIATE_WRITE_BYTES = 16 * 1024


class CoalescingTransport:
    """Wraps a transport: writes made in one event-loop step become one ``write`` at its end.

    Everything but ``write``, ``writelines``, ``close`` and ``abort`` is the wrapped transport's own.
    """

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if len(data) >= IMMEDIATE_WRITE_BYTES:
            if pending:
                self._pending = None
                pending.append(data)
                self._transport.writelines(pending)
            else:
                self._transport.write(data)
            return
        if pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = None
        if self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol over a :class:`CoalescingTransport`.

    A reply is flushed the moment its last body message is sent, not at the end of the step: the
    app may go on working (the proxy builds its events) and the client must not wait for that.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
