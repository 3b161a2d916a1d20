"""Issue 13, finding 11: the sidecar's HTTP limits, attacked over raw sockets.

A header block past ``max_header_bytes`` is refused with 431 before it is buffered, and never
forwarded; request heads that do not complete within ``header_timeout_s`` get 408 and are closed
while other clients are served; idle keep-alive connections close after ``idle_timeout_s``; past
``max_connections`` requests get 503. Memory stays bounded while hundreds of MB of headers arrive.
Only bounds are asserted, never speed.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import REGISTRY

from provline.sidecar import SidecarApp, SidecarSettings
from tests.helpers import memory_emitter
from tests.integration.test_sidecar_proxy import (
    LoopThread,
    Running,
    Upstream,
    start_server,
    stop_server,
    wait_for,
)
from tests.integration.test_sidecar_run import REPO, free_port, model_server, wait_ready  # noqa: F401 (fixture)

MiB = 1 << 20
HEAD = b"POST /predict HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
BOUND_S = 20.0  # how long a test waits for the sidecar to act: a bound on behaviour, not a speed


@pytest.fixture(scope="module")
def upstream(loop: LoopThread) -> Iterator[Upstream]:
    double = Upstream()
    runner = loop.run(double.start())
    yield double
    loop.run(runner.cleanup())


@contextmanager
def sidecar(loop: LoopThread, upstream: Upstream, **limits: object) -> Iterator[Running]:
    emitter, _ = memory_emitter("finding-11")
    settings = SidecarSettings(sidecar={"upstream": f"http://127.0.0.1:{upstream.port}", "kserve_metadata": False,
                                        **limits})
    server, task, url = loop.run(start_server(SidecarApp(settings, emitter)))
    try:
        yield Running(url, emitter, upstream)
    finally:
        loop.run(stop_server(server, task), timeout=60)
        emitter.close()


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=BOUND_S)
    return sock


def send_until_refused(sock: socket.socket, head: bytes, filler: int, *, chunk: int = MiB) -> None:
    """Send ``head`` then ``filler`` bytes of one header value; stop early once the sidecar stops reading."""
    block = b"a" * chunk
    try:
        sock.sendall(head)
        sent = 0
        while sent < filler:
            sock.sendall(block[: filler - sent])
            sent += chunk
        sock.sendall(b"\r\n\r\n")
    except OSError:  # the sidecar closed the connection: expected once it refused the request
        pass


def read_reply(sock: socket.socket) -> bytes:
    """Everything the sidecar sends until it closes the connection (or the bound passes)."""
    data = b""
    sock.settimeout(BOUND_S)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def read_replies(socks: list[socket.socket]) -> list[bytes]:
    """:func:`read_reply` for many sockets at once, within one bound."""
    replies = {sock: b"" for sock in socks}
    deadline = time.monotonic() + BOUND_S
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    replies[sock] += chunk
                else:
                    selector.unregister(sock)
        open_after_bound = len(selector.get_map())
    assert open_after_bound == 0, f"{open_after_bound} connections still open after {BOUND_S} s"
    return [replies[sock] for sock in socks]


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("provline_sidecar_refused_requests_total", {"reason": reason}) or 0.0


def test_an_8_mib_header_gets_431_and_is_never_forwarded(loop: LoopThread, upstream: Upstream) -> None:
    with sidecar(loop, upstream) as running:
        before, seen = refused("header_too_large"), len(upstream.seen)
        with connect(running.url) as sock:
            sender = threading.Thread(target=send_until_refused, args=(sock, HEAD + b"X-Big: ", 8 * MiB))
            sender.start()
            reply = read_reply(sock)
            sender.join(BOUND_S)
        assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), reply[:200]
        assert b"connection: close" in reply.lower() and b"PROVLINE_SIDECAR__MAX_HEADER_BYTES" in reply
        assert len(upstream.seen) == seen  # the upstream never saw it
        assert refused("header_too_large") == before + 1
        # many small headers adding up count too, and so does a long request line
        for head in (HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000)),
                     b"GET /" + b"p" * (100 * 1024) + b" HTTP/1.1\r\n"):
            with connect(running.url) as sock:
                send_until_refused(sock, head, 0)
                assert read_reply(sock).startswith(b"HTTP/1.1 431 ")
        assert len(upstream.seen) == seen
        padding = {f"X-Pad-{i}": "p" * 6000 for i in range(5)}  # 30 KB: the upstream's 8 KiB per line allow it
        reply = httpx.post(f"{running.url}/predict", content=b'{"x": 1}', headers=padding)
        assert reply.status_code == 200  # a large but reasonable header block is served
        assert len(upstream.seen) == seen + 1


def test_half_sent_requests_are_closed_after_the_header_timeout_while_others_are_served(
    loop: LoopThread, upstream: Upstream
) -> None:
    with sidecar(loop, upstream, header_timeout_s=1.0) as running:
        before = refused("header_timeout")
        stalled = [connect(running.url) for _ in range(300)]
        try:
            for index, sock in enumerate(stalled):
                if index % 3:  # a third never send a byte; the others stop inside their headers
                    sock.sendall(HEAD + b"X-Slow: never ends")
            reply = httpx.post(f"{running.url}/predict", content=b'{"x": 1}',
                               headers={"X-Request-ID": "served-meanwhile"})
            assert reply.status_code == 200
            assert set(running.events("served-meanwhile")) == {"InferenceRequest", "InferenceResponse"}
            replies = read_replies(stalled)  # once the sidecar closed each of them
        finally:
            for sock in stalled:
                sock.close()
        for index, reply in enumerate(replies):
            if index % 3:
                assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply[:100]
            else:
                assert reply == b""  # nothing was asked, nothing is answered: the connection is just closed
        assert refused("header_timeout") >= before + 200


@pytest.mark.parametrize("pipelined", [False, True], ids=["after-a-reply", "pipelined"])
def test_a_head_stalled_on_a_kept_alive_connection_gets_408(loop: LoopThread, upstream: Upstream,
                                                             pipelined: bool) -> None:
    """The header timeout runs from a kept-alive connection's next head, also one that arrived in the
    same read as the request before it."""
    served, stalled = HEAD + b"Content-Length: 2\r\n\r\n{}", HEAD + b"X-Slow: never ends"
    with sidecar(loop, upstream, header_timeout_s=1.0, idle_timeout_s=60.0) as running, \
            connect(running.url) as sock:
        if pipelined:
            sock.sendall(served + stalled)
        else:
            sock.sendall(served)
            first = b""
            while b"HTTP/1.1 200 OK" not in first or not first.endswith(b"}"):
                first += sock.recv(65536)
            sock.sendall(stalled)
        reply = read_reply(sock)  # returns once the sidecar closed the connection
    if not pipelined:
        reply = first + reply
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.count(b"HTTP/1.1 408 Request Timeout\r\n") == 1


def test_idle_keep_alive_connections_are_closed(loop: LoopThread, upstream: Upstream) -> None:
    with sidecar(loop, upstream, idle_timeout_s=1.0) as running, connect(running.url) as sock:
        sock.sendall(HEAD + b"Content-Length: 2\r\n\r\n{}")
        reply = read_reply(sock)  # returns once the idle connection is closed
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.count(b"HTTP/1.1") == 1


def test_past_max_connections_requests_get_503(loop: LoopThread, upstream: Upstream) -> None:
    with sidecar(loop, upstream, max_connections=4) as running:
        before = refused("max_connections")
        held = [httpx.Client(base_url=running.url) for _ in range(4)]  # four kept-alive connections
        try:
            for client in held:
                assert client.post("/predict", content=b"{}").status_code == 200
            assert httpx.post(f"{running.url}/predict", content=b"{}").status_code == 503  # a fifth
        finally:
            for client in held:
                client.close()
        assert refused("max_connections") == before + 1
        reply = wait_for(lambda: httpx.post(f"{running.url}/predict", content=b"{}"),
                         lambda reply: reply.status_code == 200, BOUND_S)
        assert reply.status_code == 200


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_memory_stays_bounded_under_hundreds_of_mb_of_headers(model_server: str) -> None:  # noqa: F811
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVLINE_")}
    env.update({"PROVLINE_SIDECAR__UPSTREAM": model_server, "PROVLINE_SIDECAR__HOST": "127.0.0.1",
                "PROVLINE_SIDECAR__PORT": str(port), "PROVLINE_SIDECAR__ADMIN_PORT": str(admin_port),
                "PROVLINE_EMITTER__TRANSPORT": "console", "PYTHONPATH": str(REPO)})
    script = "from provline.sidecar import SidecarSettings, run_sidecar\nrun_sidecar(SidecarSettings())\n"
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"http://127.0.0.1:{admin_port}", process)
        for _ in range(20):  # warm up: imports, pools and buffers that every sidecar has
            assert httpx.post(f"{url}/predict", content=b'{"x": 2}').status_code == 200
        baseline = rss_kib(process.pid)

        def attack() -> None:
            for _ in range(4):  # 4 threads x 4 connections x 25 MiB: 400 MiB of header bytes offered
                with connect(url) as sock:
                    send_until_refused(sock, HEAD + b"X-Huge: ", 25 * MiB)
                    read_reply(sock)

        attackers = [threading.Thread(target=attack) for _ in range(4)]
        for thread in attackers:
            thread.start()
        peak = baseline
        while any(thread.is_alive() for thread in attackers):
            peak = max(peak, rss_kib(process.pid))
            time.sleep(0.05)
        peak = max(peak, rss_kib(process.pid))
        assert httpx.post(f"{url}/predict", content=b'{"x": 2}').status_code == 200  # still serving
        assert peak - baseline < 50 * 1024, f"RSS grew from {baseline} KiB to {peak} KiB"
    finally:
        process.terminate()
        process.wait(30)
