"""uvicorn's httptools protocol with the sidecar's HTTP limits, sending a reply's head and body in one write.

Limits (:class:`~provline.sidecar.limits.HttpLimits`, from the ``sidecar`` settings), as Envoy and nginx set them:

- a request line and header block larger than ``max_header_bytes`` gets 431 and the connection
  is closed. The bytes are counted in ``data_received``, before httptools (llhttp) buffers them,
  and at most ``max_header_bytes + 1`` of them are ever fed to it, so a huge header costs no
  memory. (Bytes of a head that arrive in the same read as the end of the previous request
  are not counted: a head may pass the limit by at most one read, 256 KiB.)
- request headers that do not complete within ``header_timeout_s`` of the connection opening
  (or of the request's first byte, on a kept-alive connection) get 408 and the connection is
  closed; a connection that sent nothing is just closed (nginx ``client_header_timeout``).
- after a refusal the connection is half-closed and what the client still sends is read and
  discarded for at most :data:`LINGER_S`, so the client reads the refusal instead of a reset.
- idle keep-alive connections close after ``idle_timeout_s``, and requests get 503 while
  ``max_connections`` connections are open: uvicorn's ``timeout_keep_alive`` and
  ``limit_concurrency`` (see :mod:`provline.sidecar.server`).

Every refusal is counted in ``provline_sidecar_refused_requests_total{reason}``.

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
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from provline.sidecar.limits import HttpLimits, refusal
from provline.sidecar.metrics import REFUSED_REQUESTS

# Writes at least this large are sent at once: joining them would copy more than a system call costs.
IMMEDIATE_WRITE_BYTES = 16 * 1024
# How long a refused connection is still read (and what arrives discarded) before it is closed.
LINGER_S = 2.0


class CoalescingTransport:
    """Wraps a transport: writes made in one event-loop step become one ``write`` at its end.

    Everything but ``write``, ``writelines``, ``close``, ``write_eof`` and ``abort`` is the wrapped
    transport's own.
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

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol over a :class:`CoalescingTransport`, within :attr:`limits`.

    A reply is flushed the moment its last body message is sent, not at the end of the step: the
    app may go on working (the proxy builds its events) and the client must not wait for that.
    Use :meth:`with_limits` for limits other than the defaults.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[CoalescingHttpToolsProtocol]:
        """This protocol under ``limits`` (uvicorn builds protocols from a class and its own arguments)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # the next bytes are a request line and headers
        self._head_bytes = 0  # of the head being read, fed to the parser so far
        self._head_begun = False  # the parser holds part of a head, its end not yet seen
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering: read and discard
            return
        self._feed(data)
        # A head that began in these bytes and did not end in them is timed from now; one that
        # arrives whole, nearly every one, costs no timer.
        if self._head_begun and self._head_timer is None and not self._refused:
            self._arm_head_timer()

    def _feed(self, data: bytes) -> None:
        limit = self.limits.max_header_bytes
        while data:
            if not self._reading_head:  # a body: uvicorn's flow control bounds what it holds
                super().data_received(data)
                return
            room = limit + 1 - self._head_bytes  # one byte past the limit tells a head that is too large
            piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._refused or self.transport.is_closing():  # refused here, or by uvicorn (400)
                return
            if self._reading_head and self._head_bytes > limit:
                self._refuse(431, "header_too_large", self.limits.too_large())
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._reading_head = self._head_begun = False
        self._cancel_head_timer()
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            REFUSED_REQUESTS.labels("max_connections").inc()  # uvicorn answers 503 (the same test as its own)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self._refused or self.transport.is_closing():
            return
        # Whether a head has begun, not how many of its bytes were counted: those that arrived in the
        # same read as the end of the request before were not, and that client asked something too.
        self._refuse(408 if self._head_begun else None, "header_timeout", self.limits.too_slow())

    def _refuse(self, status: int | None, reason: str, message: str) -> None:
        """Refuse the request being read: reply ``status`` (None: nothing was asked, nothing is
        answered), half-close, discard what still comes for at most LINGER_S, close."""
        REFUSED_REQUESTS.labels(reason).inc()
        self._refused = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a reply is on its way: uvicorn closes the connection after it
            return
        if status is not None:
            self.transport.write(refusal(status, message))
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
