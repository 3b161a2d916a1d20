"""A minimal pooled HTTP/1.1 client for the one upstream a sidecar fronts.

    pool = UpstreamPool("127.0.0.1", 8000, max_connections=100, keepalive_s=4.0,
                        connect_timeout_s=5.0, read_timeout_s=30.0)
    reply = await pool.request(b"POST", b"/predict", [(b"host", b"m:8000")], b"{...}")
    try:
        body = await reply.read()        # or: async for chunk in reply.iter_chunks()
    finally:
        reply.release()                   # back to the pool only when fully read and keep-alive
    await pool.close()

Why not aiohttp: a proxy needs none of its conveniences (cookies, redirects, auto headers,
decompression, URL objects), and profiling showed the general client costing more CPU per
request than everything else the sidecar does. This one sends exactly the header bytes it is
given, parses replies with ``httptools`` (llhttp, the parser uvicorn uses) straight from an
asyncio Protocol, and writes a small request in a single ``transport.write``.

Rules: 1xx replies other than 101 are skipped; HEAD, 204 and 304 replies have no body; a body
without Content-Length or chunked framing lasts until the upstream closes. A connection goes
back to the pool only when its reply was read to the end and neither side said
``Connection: close``; idle connections older than ``keepalive_s`` are closed, not reused.

Errors (mapped to 502/504 in :func:`provline.sidecar.errors.upstream_error_from`): ``TimeoutError`` when
no connection (including the wait for a free one) within ``connect_timeout_s`` or no bytes for
``read_timeout_s`` while a reply is awaited; :class:`UpstreamProtocolError` (a ``ConnectionError``)
when the upstream closes early or sends bytes that are not HTTP/1.1; ``OSError`` when it cannot
be reached. Anything raised by a streamed request body propagates unchanged.

Not thread-safe: use a pool from the event loop that created it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as tls
from collections.abc import AsyncIterator

import httptools

Header = tuple[bytes, bytes]

# Past this many unread body bytes the socket stops being read until the consumer catches up.
READ_HIGH_WATER = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamProtocolError(ConnectionError):
    """The upstream closed the connection early or sent something that is not a valid HTTP/1.1 reply."""


class UpstreamResponse(asyncio.Protocol):
    """One upstream connection and the reply currently arriving on it.

    ``status``, ``headers`` (names lower case, in order, values as sent) and ``content_length``
    are set once :meth:`UpstreamPool.request` returns it. Read the body once, with :meth:`read`
    or :meth:`iter_chunks`, then call :meth:`release`.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        # One read timer per connection, re-armed only when it fires early: a timer per wait would
        # cost a call_later and a cancel on every request.
        self._read_deadline = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._error: BaseException | None = None
        self.closed = False
        self.leased = False
        self.idle_since = 0.0
        self._reset(b"")

    def _reset(self, method: bytes) -> None:
        self._method = method
        self.status = 0
        self.headers: list[Header] = []
        self.content_length: int | None = None
        self._chunked = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = True
        self._informational = False
        self._new_parser = False

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamProtocolError(f"the upstream sent an invalid HTTP/1.1 reply: {exc}"))
            return
        if self._new_parser:  # a HEAD reply: llhttp cannot be told that it has no body
            self._new_parser = False
            self._parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._headers_done and not self._complete and self.content_length is None and not self._chunked:
            self._complete, self._keep_alive = True, False  # a body delimited by the close
            self._wake()
        elif self._method and not self._complete:
            detail = f": {exc}" if exc else ""
            stage = "before its reply was complete" if self._headers_done else "before replying"
            self._fail(UpstreamProtocolError(f"the upstream closed the connection {stage}{detail}"))
        self._pool._lost(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamProtocolError("the upstream closed the connection while we wrote"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"content-length":
            try:
                self.content_length = int(value)
            except ValueError:  # llhttp refuses such replies itself; be safe anyway
                self.content_length = None
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim reply (103 Early Hints...): wait for the real one
            self._informational = True
            self.headers = []
            self.content_length, self._chunked = None, False
            return
        self.status = status
        self._headers_done = True
        if self._method == b"HEAD":
            self._complete, self._new_parser = True, True
            self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:  # bytes after a HEAD reply: the connection is out of step
            self._keep_alive = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:  # the HEAD reply was already complete at its headers
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # --- the consumer side ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._keep_alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _read_timer_fired(self) -> None:
        self._read_timer = None
        if self._waiter is None or self._waiter.done():
            return  # nothing awaited now; the next wait arms the timer again
        if self._loop.time() < self._read_deadline:  # news came since it was armed: a later wait is running
            self._read_timer = self._loop.call_at(self._read_deadline, self._read_timer_fired)
            return
        self._fail(TimeoutError(f"no bytes from the upstream for {self._pool.read_timeout_s:g} s"))

    async def _wait(self) -> None:
        """Until the protocol has news; raises the connection's error or TimeoutError after read_timeout_s."""
        if self._error is not None:
            raise self._error
        self._waiter = waiter = self._loop.create_future()
        self._read_deadline = self._loop.time() + self._pool.read_timeout_s
        if self._read_timer is None:
            self._read_timer = self._loop.call_at(self._read_deadline, self._read_timer_fired)
        try:
            await waiter
        finally:
            self._waiter = None

    async def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self.transport is None or self.transport.is_closing():
            raise UpstreamProtocolError("the upstream closed the connection while we wrote")
        self.transport.write(data)
        if self._paused_writing:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    async def _send(self, method: bytes, head: bytes, body: bytes | AsyncIterator[bytes] | None, *,
                    chunked: bool) -> None:
        self._reset(method)
        if body is None or isinstance(body, bytes):
            await self._write(head + body if body else head)
        else:
            await self._write(head)
            async for chunk in body:
                if chunk:
                    await self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                await self._write(b"0\r\n\r\n")
        while not self._headers_done:
            await self._wait()

    def _take(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body; raises TimeoutError or UpstreamProtocolError when it does not arrive."""
        while not self._complete:
            await self._wait()
        return self._take() if self._chunks else b""

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of any size; raises like :meth:`read`."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Give the connection back: pooled when its reply was read whole and it may be kept alive, else closed."""
        reusable = (self._complete and self._keep_alive and not self._chunks and self._error is None
                    and not self.closed)
        self._method = b""
        self._pool._release(self, reusable)

    def close(self) -> None:
        self._method = b""
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections to one ``host:port``, at most ``max_connections`` open at once.

    Create it inside the running event loop; :meth:`request` and :meth:`close` are coroutines.
    """

    def __init__(self, host: str, port: int, *, max_connections: int, keepalive_s: float,
                 connect_timeout_s: float, read_timeout_s: float, ssl: tls.SSLContext | None = None) -> None:
        self.host, self.port, self.ssl = host, port, ssl
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.loop = asyncio.get_running_loop()
        self._idle: collections.deque[UpstreamResponse] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._open = 0  # connected or connecting, idle or in use
        self._closed = False

    async def request(self, method: bytes, target: bytes, headers: list[Header],
                      body: bytes | AsyncIterator[bytes] | None = None, *, chunked: bool = False) -> UpstreamResponse:
        """Send one request and return once the reply's status line and headers have arrived.

        ``headers`` are sent exactly as given, in order: include ``host``, and ``content-length``
        for any body, unless a streamed body is sent ``chunked`` (then ``transfer-encoding:
        chunked`` is added here). ``target`` is the raw request target (path and query).
        """
        head = b"".join([method, b" ", target, b" HTTP/1.1\r\n",
                         *[b"%b: %b\r\n" % (name, value) for name, value in headers],
                         b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n"])
        connection = await self._acquire()
        try:
            await connection._send(method, head, body, chunked=chunked)
        except OSError:
            if connection._headers_done and connection._error is None:
                # The upstream answered before taking the whole body (e.g. 413): that reply is the answer.
                connection._keep_alive = False
                return connection
            connection.release()
            raise
        except BaseException:  # the body's own error (the client left) or cancellation
            connection.close()
            connection.release()
            raise
        return connection

    async def _acquire(self) -> UpstreamResponse:
        now = self.loop.time()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: its peer is least likely to close it
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                connection.leased = True
                return connection
            connection.close()
            self._open -= 1
        if self._closed:
            raise UpstreamProtocolError("the upstream connection pool is closed")
        async with asyncio.timeout(self.connect_timeout_s):
            while self._open >= self.max_connections:
                waiter = self.loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                if self._idle:
                    return await self._acquire()
            self._open += 1
            try:
                _, connection = await self.loop.create_connection(
                    lambda: UpstreamResponse(self), self.host, self.port, ssl=self.ssl)
            except BaseException:
                self._open -= 1
                self._wake_one()
                raise
        connection.leased = True
        return connection

    def _release(self, connection: UpstreamResponse, reusable: bool) -> None:
        if not connection.leased:
            return
        connection.leased = False
        if reusable and not self._closed:
            connection.idle_since = self.loop.time()
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1
        self._wake_one()

    def _lost(self, connection: UpstreamResponse) -> None:
        if connection in self._idle:  # closed by the upstream while idle
            self._idle.remove(connection)
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close idle connections; those in use close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1
