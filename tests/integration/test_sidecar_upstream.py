"""The sidecar's upstream client against a scripted HTTP/1.1 server on a real socket.

The server answers each request with the next scripted reply, byte for byte, so framing rules
(Content-Length, chunked, close-delimited, HEAD, 1xx, 204) and connection reuse are exercised
exactly as a model server could send them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from provline.sidecar.upstream import UpstreamPool, UpstreamProtocolError

pytestmark = pytest.mark.integration

HOST = [(b"host", b"m")]


@dataclass
class Request:
    head: bytes
    body: bytes


@dataclass
class Trickle:
    """A reply sent in ``pieces`` equal parts, ``gap_s`` apart."""

    reply: bytes
    pieces: int
    gap_s: float


@dataclass
class Scripted:
    """Replies in order; ``None`` closes the connection without answering; ``hang`` never answers."""

    replies: list[bytes | None | str | Trickle]
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.requests.append(Request(head, await _read_body(reader, head)))
                reply = self.replies.pop(0)
                if reply is None:
                    return
                if reply == "hang":
                    await asyncio.sleep(3600)
                if isinstance(reply, Trickle):
                    size = -(-len(reply.reply) // reply.pieces)
                    for start in range(0, len(reply.reply), size):
                        writer.write(reply.reply[start:start + size])
                        await writer.drain()
                        await asyncio.sleep(reply.gap_s)
                    continue
                writer.write(reply)  # type: ignore[arg-type]
                await writer.drain()
                if b"connection: close" in reply.lower():  # type: ignore[union-attr]
                    return
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lines = head.lower().split(b"\r\n")
    if b"transfer-encoding: chunked" in lines:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if not size:
                return body
            body += chunk[:-2]
    for line in lines:
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(extra) + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)


def run(replies: list[bytes | None | str | Trickle], test: Callable[[UpstreamPool, Scripted], Awaitable[None]],
        **options: float) -> Scripted:
    async def main() -> Scripted:
        scripted = Scripted(list(replies))
        port = await scripted.start()
        settings = {"max_connections": 10, "keepalive_s": 30.0, "connect_timeout_s": 5.0,
                    "read_timeout_s": 5.0, **options}
        pool = UpstreamPool("127.0.0.1", port, **settings)  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(test(pool, scripted), 30)
        finally:
            await pool.close()
            await scripted.stop()
        return scripted

    return asyncio.run(main())


async def get(pool: UpstreamPool, method: bytes = b"GET", body: bytes | None = None) -> tuple[int, bytes]:
    headers = HOST + ([(b"content-length", str(len(body)).encode())] if body is not None else [])
    reply = await pool.request(method, b"/p?q=1", headers, body)
    try:
        return reply.status, await reply.read()
    finally:
        reply.release()


def test_keep_alive_connections_are_reused_and_requests_go_out_exactly() -> None:
    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        assert await get(pool, b"POST", b'{"a": 1}') == (200, b"one")
        reply = await pool.request(b"GET", b"/p?q=1", HOST)
        assert (reply.status, reply.content_length) == (201, 3)
        assert reply.headers == [(b"x-custom", b"Yes"), (b"content-length", b"3")]
        assert await reply.read() == b"two"
        reply.release()

    scripted = run([ok(b"one"), b"HTTP/1.1 201 Created\r\nX-Custom: Yes\r\nContent-Length: 3\r\n\r\ntwo"], test)
    assert scripted.connections == 1
    assert scripted.requests[0].head == b"POST /p?q=1 HTTP/1.1\r\nhost: m\r\ncontent-length: 8\r\n\r\n"
    assert scripted.requests[0].body == b'{"a": 1}'
    assert scripted.requests[1].head == b"GET /p?q=1 HTTP/1.1\r\nhost: m\r\n\r\n"


def test_chunked_replies_stream_in_pieces_and_keep_the_connection() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n"

    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        reply = await pool.request(b"GET", b"/", HOST)
        assert reply.content_length is None
        assert b"".join([chunk async for chunk in reply.iter_chunks()]) == b"one,two"
        reply.release()
        assert await get(pool) == (200, b"next")

    assert run([chunked, ok(b"next")], test).connections == 1


def test_connection_close_head_204_and_interim_replies() -> None:
    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        assert await get(pool, b"HEAD") == (200, b"")  # Content-Length 5, but HEAD replies have no body
        assert await get(pool) == (204, b"")
        assert await get(pool) == (200, b"after hints")  # the 103 is skipped
        assert await get(pool) == (200, b"last")  # sent with Connection: close: not reused
        assert await get(pool) == (200, b"fresh")

    scripted = run([
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"after hints"),
        ok(b"last", b"Connection: close\r\n"),
        ok(b"fresh"),
    ], test)
    assert scripted.connections == 2


def test_a_body_delimited_by_the_close_is_read_whole() -> None:
    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        assert await get(pool) == (200, b"until the end")
        assert await get(pool) == (200, b"again")

    scripted = run([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", ok(b"again")], test)
    assert scripted.connections == 2


def test_streamed_request_bodies_with_and_without_length() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cde"):
            yield part

    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        for chunked, headers in ((True, HOST), (False, [*HOST, (b"content-length", b"5")])):
            reply = await pool.request(b"PUT", b"/s", headers, parts(), chunked=chunked)
            assert await reply.read() == b"ok"
            reply.release()

    scripted = run([ok(b"ok"), ok(b"ok")], test)
    assert [r.body for r in scripted.requests] == [b"abcde", b"abcde"]
    assert b"transfer-encoding: chunked" in scripted.requests[0].head.lower()


def test_early_close_and_garbage_are_protocol_errors() -> None:
    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        with pytest.raises(UpstreamProtocolError, match="before replying"):
            await get(pool)
        reply = await pool.request(b"GET", b"/", HOST)
        with pytest.raises(UpstreamProtocolError, match="before its reply was complete"):
            await reply.read()
        reply.release()
        with pytest.raises(UpstreamProtocolError, match="invalid HTTP/1.1"):
            await get(pool)
        assert await get(pool) == (200, b"fine")  # the pool recovered: every broken connection was dropped

    scripted = run([None, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
                    b"SPDY/9 what\r\n\r\n", ok(b"fine")], test)
    assert scripted.connections == 4


def test_silence_is_a_timeout_and_the_pool_limit_bounds_connections() -> None:
    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        with pytest.raises(TimeoutError, match="no bytes from the upstream"):
            await get(pool)
        held = await pool.request(b"GET", b"/", HOST)  # the only connection allowed, not yet released
        with pytest.raises(TimeoutError):  # waiting for a free connection counts as connecting
            await pool.request(b"GET", b"/", HOST)
        waiting = asyncio.ensure_future(get(pool))
        assert await held.read() == b"held"
        held.release()
        assert await waiting == (200, b"waited")

    scripted = run(["hang", ok(b"held"), ok(b"waited")], test, max_connections=1, read_timeout_s=0.2,
                   connect_timeout_s=0.2)
    assert scripted.connections == 2


def test_the_read_timeout_is_silence_between_bytes_on_every_use_of_a_connection() -> None:
    """A reply that trickles in for longer than read_timeout_s, never silent that long, is read whole;
    the same connection, silent on its next request, times out (one read timer per connection)."""
    async def test(pool: UpstreamPool, scripted: Scripted) -> None:
        assert await get(pool) == (200, b"slow but never silent for long")
        with pytest.raises(TimeoutError, match="no bytes from the upstream for 0.5 s"):
            await get(pool)

    scripted = run([Trickle(ok(b"slow but never silent for long"), pieces=16, gap_s=0.05), "hang"], test,
                   read_timeout_s=0.5)
    assert scripted.connections == 1


def test_refused_connections_raise_os_errors() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = UpstreamPool("127.0.0.1", port, max_connections=2, keepalive_s=1.0, connect_timeout_s=2.0,
                            read_timeout_s=2.0)
        for _ in range(3):  # a failed connect gives its slot back
            with pytest.raises(OSError):
                await pool.request(b"GET", b"/", HOST)
        await pool.close()

    asyncio.run(main())
