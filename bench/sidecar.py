"""Benchmark: the sidecar against nginx and against the model server it fronts, in the same run.

    apt-get install nginx-light wrk                    # the reference proxy and the load (Debian)
    .venv/bin/python bench/sidecar.py                  # local Kafka broker started for the run
    .venv/bin/python bench/sidecar.py --kafka none     # events built and encoded, then discarded
    .venv/bin/python bench/sidecar.py --clients        # also: aiohttp vs httpx as upstream client

A trivial upstream (by default a minimal ASGI app on uvicorn answering a fixed JSON prediction,
``--upstream raw`` for a bare asyncio protocol server) runs in its own process. In front of it,
each in a process of its own and up for the whole run: nginx (Debian's, one worker process,
keep-alive upstream connections, one header added each way: the reference proxy), two floors (a
byte relay: one more hop, no HTTP; an HTTP relay: requests and replies parsed with httptools, one
header added: what any Python HTTP proxy pays), and the sidecar with capture off and on.

Saturation: ``wrk`` (one thread, ``--connections`` keep-alive connections, closed loop) against
each target in turn for ``--rounds`` rounds; the best of each counts, so that other load on a
shared machine skews the ratios less. Over each run the proxy process's CPU time (user + system,
every thread, from /proc; nginx: master and worker; direct: the upstream's) is divided by the
requests wrk completed: CPU microseconds per request. Latency: ONE keep-alive connection, open
loop at ``--latency-rate`` requests/s (each request timed from its scheduled start, so queueing
counts), p50 and p99 of each target, best of the rounds; the sidecar's minus direct's is the
latency it adds. Printed: capture on / nginx throughput, proxied / direct, capture on / off,
CPU microseconds per request of each, and the latency added at one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REQUEST_BODY = json.dumps({"age": 41, "income": 52000.5, "city": "Oslo", "member": True}).encode()
REPLY_BODY = b'{"score": 0.8125, "label": "churn"}'
REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(REPLY_BODY)).encode() + b"\r\n\r\n" + REPLY_BODY)
console = Console()
SIDECAR_CPU = 0  # with --pin


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --- the trivial upstream ------------------------------------------------------------------------

class _Upstream(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(REPLY)


async def _asgi_model(scope: dict, receive: Any, send: Any) -> None:
    """The trivial model server: reads the request, answers a fixed prediction."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(REPLY_BODY)).encode())]})
    await send({"type": "http.response.body", "body": REPLY_BODY})


def run_upstream(port: int, kind: str) -> None:
    if kind == "asgi":
        import uvicorn

        from provline.sidecar.server import http_implementation

        uvicorn.run(_asgi_model, host="127.0.0.1", port=port, http=http_implementation(), loop="uvloop",
                    lifespan="off", access_log=False, log_level="warning", backlog=4096)
        return
    loop = new_loop()
    loop.run_until_complete(loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096))
    loop.run_forever()


# --- the relay: the floor of any proxy ----------------------------------------------------------

class _RelayToUpstream(asyncio.Protocol):
    def __init__(self, client: Any) -> None:
        self.client = client

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Relay(asyncio.Protocol):
    """Bytes of each client connection relayed unchanged over a connection of its own to the upstream:
    no HTTP parsing, no headers added, nothing recorded: what one more hop costs on this machine, with
    the least work a Python proxy can do."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: Any = None
        self.early: list[bytes] = []  # what the client sent before the upstream connection was open

    def connection_made(self, transport: Any) -> None:
        self.client = transport
        asyncio.get_running_loop().create_task(self._connect())

    def upstream_protocol(self) -> asyncio.Protocol:
        return _RelayToUpstream(self.client)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(self.upstream_protocol, "127.0.0.1", self.upstream_port)
        upstream.writelines(self.early)
        self.upstream = upstream

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


class _HttpRelay(_Relay):
    """The floor of a Python HTTP proxy: each request and reply parsed with httptools (the parser
    uvicorn uses), one header added to each, sent on as one write; no streaming, no policy, no
    events, no metrics. What any Python proxy that reads HTTP pays on this machine."""

    def __init__(self, upstream_port: int) -> None:
        import httptools

        super().__init__(upstream_port)
        self.requests = httptools.HttpRequestParser(self)
        self.replies = httptools.HttpResponseParser(_ReplyParsing(self))
        self.parts: list[bytes] = []

    def upstream_protocol(self) -> asyncio.Protocol:
        return _HttpRelayToUpstream(self.client, self)

    def data_received(self, data: bytes) -> None:
        self.requests.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.parts = [self.requests.get_method(), b" ", url, b" HTTP/1.1\r\n"]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.parts.append(b"x-prediction-id: %032x\r\n\r\n" % random.getrandbits(128))

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        request, self.parts = b"".join(self.parts), []
        _Relay.data_received(self, request)


class _ReplyParsing:
    def __init__(self, relay: _HttpRelay) -> None:
        self.relay = relay
        self.parts: list[bytes] = []

    def on_status(self, status: bytes) -> None:
        self.parts = [b"HTTP/1.1 %d " % self.relay.replies.get_status_code(), status, b"\r\n"]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.parts.append(b"x-prediction-id: 0\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        reply, self.parts = b"".join(self.parts), []
        self.relay.client.write(reply)


class _HttpRelayToUpstream(_RelayToUpstream):
    def __init__(self, client: Any, relay: _HttpRelay) -> None:
        super().__init__(client)
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.replies.feed_data(data)


def run_relay(upstream_port: int, port: int, cpu: int | None, http: bool) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    loop = new_loop()
    relay = _HttpRelay if http else _Relay
    loop.run_until_complete(loop.create_server(lambda: relay(upstream_port), "127.0.0.1", port, backlog=4096))
    loop.run_forever()


# --- the sidecar ---------------------------------------------------------------------------------

def run_sidecar_process(upstream_port: int, port: int, admin_port: int, capture: bool, kafka: str | None,
                        spool_dir: str, cpu: int | None) -> None:
    import logging

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    logging.basicConfig(level=logging.WARNING)
    from provline.sidecar import SidecarSettings, run_sidecar

    publishing = ({"kafka": {"bootstrap": kafka}, "topics": {"prefix": "bench"},
                   "emitter": {"spool_dir": Path(spool_dir)}} if kafka else {"emitter": {"transport": "none"}})
    run_sidecar(SidecarSettings(
        sidecar={"upstream": f"http://127.0.0.1:{upstream_port}", "host": "127.0.0.1", "port": port,
                 "admin_port": admin_port, "kserve_metadata": False},
        capture={"sample_rate": 1.0 if capture else 0.0}, **publishing,
    ))


def wait_ready(admin_port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the sidecar did not become ready")


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- the load generator --------------------------------------------------------------------------

def request_bytes(port: int) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(REQUEST_BODY)}\r\n\r\n").encode() + REQUEST_BODY


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One request on a kept-alive connection; returns the reply's head (the body is read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected reply {head[:60]!r}")
    return head


async def load(host: str, port: int, request: bytes, *, connections: int, seconds: float,
               rate: float | None = None) -> list[float]:
    """Latencies (s) of every ``request`` started within ``seconds`` over ``connections`` kept-alive
    connections: closed loop, or open loop at ``rate`` requests/s (queueing counts)."""
    latencies: list[float] = []
    start = time.perf_counter() + 0.2
    deadline = start + seconds
    interval = connections / rate if rate else 0.0

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        await exchange(reader, writer, request)  # warm the connection up
        scheduled = start + index * interval / connections
        while True:
            now = time.perf_counter()
            if rate:
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                began, scheduled = scheduled, scheduled + interval
            else:
                began = now
            if began >= deadline:
                break
            await exchange(reader, writer, request)
            if began >= start:
                latencies.append(time.perf_counter() - began)
        writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return latencies


def run_load(port: int, connections: int, seconds: float, rate: float | None, out: Any) -> None:
    loop = new_loop()
    out.put(loop.run_until_complete(load("127.0.0.1", port, request_bytes(port), connections=connections,
                                         seconds=seconds, rate=rate)))


@dataclass
class Measured:
    rps: float
    p50_ms: float
    p99_ms: float


def measure(port: int, connections: int, seconds: float, rate: float | None = None) -> Measured:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=run_load, args=(port, connections, seconds, rate, out))
    process.start()
    latencies = np.array(out.get(timeout=seconds + 60))
    process.join()
    return Measured(len(latencies) / seconds, float(np.percentile(latencies, 50) * 1e3),
                    float(np.percentile(latencies, 99) * 1e3))


# --- nginx, the reference proxy -------------------------------------------------------------------

INSTALL_HINT = "apt-get update && apt-get install nginx-light wrk (Debian's packages, as root)"


def nginx_config(upstream_port: int, port: int, scratch: Path) -> str:
    """One worker process, keep-alive connections to the upstream, no access log; like the sidecar it
    adds one header to each request and each reply (nginx's own 32-hex ``$request_id``)."""
    temp = "\n".join(f"    {kind}_temp_path {scratch / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {scratch / 'nginx.pid'};
error_log {scratch / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_requests 1000000;
    upstream model {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Prediction-ID $request_id;
            add_header X-Prediction-ID $request_id;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Debian installs nginx in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which("nginx")
    return found or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def start_nginx(binary: str, upstream_port: int, scratch: Path, cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    scratch.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = scratch / "nginx.conf"
    config.write_text(nginx_config(upstream_port, port, scratch))
    process = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(scratch), "-e", str(scratch / "error.log")],
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    try:
        wait_listening(port)
    except OSError:
        process.kill()
        errors = scratch / "error.log"
        detail = errors.read_text().strip()[-500:] if errors.exists() else ""
        raise RuntimeError(f"nginx did not start listening on port {port}: {detail}") from None
    return process, port


# --- CPU time of a process and its children, from /proc ------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after ``pid (comm)`` (comm may hold spaces): field 3 (state) first."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) and of its descendants now alive."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))  # field 4: the parent's pid
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += ticks.get(current, 0)
        todo.extend(children.get(current, ()))
    return total / CLOCK_TICKS


# --- wrk, the load at saturation -----------------------------------------------------------------

WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{REQUEST_BODY.decode()}'
"""


@dataclass
class Saturated:
    rps: float
    requests: int
    cpu_us: float  # CPU microseconds of the measured process tree per request


def parse_wrk(report: str) -> tuple[int, float]:
    """Requests completed and seconds taken, from wrk's report; raises on socket errors or non-2xx replies."""
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)\b", report)
    if done is None:
        raise RuntimeError(f"wrk's report has no request count:\n{report}")
    if "Socket errors" in report or "Non-2xx" in report:
        raise RuntimeError(f"wrk saw failed requests:\n{report}")
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    return int(done.group(1)), float(done.group(2)) * scale


def saturate(port: int, connections: int, seconds: float, script: Path, measured_pid: int) -> Saturated:
    """wrk, one thread, against ``port``; CPU per request of ``measured_pid``'s process tree over the run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
               f"http://127.0.0.1:{port}/predict"]
    before = tree_cpu_seconds(measured_pid)
    report = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = tree_cpu_seconds(measured_pid)
    requests, took = parse_wrk(report)
    return Saturated(requests / took, requests, (after - before) * 1e6 / requests)


# --- the HTTP client comparison ------------------------------------------------------------------

async def _client_rps(name: str, port: int, concurrency: int, count: int) -> float:
    import aiohttp
    import httpx

    url = f"http://127.0.0.1:{port}/predict"
    if name == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def one() -> None:
            async with session.post(url, data=REQUEST_BODY) as reply:
                await reply.read()
        close = session.close
    else:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency))

        async def one() -> None:
            (await client.post(url, content=REQUEST_BODY)).read()
        close = client.aclose
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await one()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await close()
    return count / elapsed


def compare_clients(port: int, concurrency: int) -> dict[str, float]:
    loop = new_loop()
    return {name: loop.run_until_complete(_client_rps(name, port, concurrency, 5000))
            for name in ("aiohttp", "httpx")}


# --- the run -------------------------------------------------------------------------------------

def start_sidecar(ctx: Any, upstream_port: int, capture: bool, kafka: str | None, spool: str,
                  cpu: int | None) -> tuple[Any, int, int]:
    port, admin_port = free_port(), free_port()
    process = ctx.Process(target=run_sidecar_process,
                          args=(upstream_port, port, admin_port, capture, kafka, spool, cpu))
    process.start()
    wait_ready(admin_port)
    return process, port, admin_port


def events_dropped(admin_port: int) -> dict[str, float]:
    """The sidecar's provline_events_dropped_total by reason: a capture-on figure counts only if none were."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text) if family.name == "provline_events_dropped"
            for sample in family.samples if sample.name == "provline_events_dropped_total"}


def stop(process: Any) -> None:
    process.terminate()
    if isinstance(process, subprocess.Popen):
        process.wait(30)
    else:
        process.join(30)


def bench_kafka(choice: str, scratch: Path) -> tuple[Any, str | None]:
    """The broker of a benchmark (started when ``choice`` is 'local', with the bench topics) and its
    bootstrap; None for 'none' (events encoded, then discarded); else ``choice`` is host:port."""
    if choice == "none":
        return None, None
    if choice != "local":
        return None, choice
    from deploy.local.kafka import LocalKafka, create_topics
    from provline.schemas import Topics

    console.print("starting a local Kafka broker...")
    broker = LocalKafka(scratch / "kafka").start()
    create_topics(broker.bootstrap, Topics("bench").all)
    return broker, broker.bootstrap


def missing_tools() -> list[str]:
    return [name for name, found in (("nginx", nginx_binary()), ("wrk", shutil.which("wrk"))) if not found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of wrk at saturation")
    parser.add_argument("--rounds", type=int, default=3,
                        help="saturation and latency runs of every target, in turn; the best of each counts")
    parser.add_argument("--latency-rate", type=float, default=1000.0,
                        help="requests/s of the latency runs, open loop over one connection")
    parser.add_argument("--kafka", default="local", help="'local' (start a broker), 'none', or host:port")
    parser.add_argument("--clients", action="store_true", help="also compare aiohttp and httpx as clients")
    parser.add_argument("--upstream", choices=["asgi", "raw"], default="asgi",
                        help="asgi: a minimal ASGI app on uvicorn, the stack of a typical Python model server; "
                        "raw: a bare asyncio protocol, far faster than any real model server")
    parser.add_argument("--pin", action="store_true",
                        help="run the proxies (nginx, the relays, the sidecars) on CPU 0 and everything else (wrk, "
                        "upstream, broker) on the other CPUs, as a sidecar beside a model server has its own core; "
                        "without it all processes share every CPU")
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        parser.error(f"{' and '.join(missing)} not found (nginx is the reference proxy, wrk the load); "
                     f"install them: {INSTALL_HINT}")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs at least 2 CPUs")
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))  # inherited by every process started here

    ctx = multiprocessing.get_context("spawn")
    upstream_port = free_port()
    upstream = ctx.Process(target=run_upstream, args=(upstream_port, args.upstream), daemon=True)
    upstream.start()
    wait_listening(upstream_port)
    with tempfile.TemporaryDirectory(prefix="provline-bench-") as scratch:
        broker, kafka = bench_kafka(args.kafka, Path(scratch))
        try:
            results = run_all(ctx, args, upstream, upstream_port, kafka, Path(scratch))
        finally:
            if broker is not None:
                broker.stop()
            upstream.terminate()
    report(results, args)


LABELS = ("direct", "nginx", "relay", "http relay", "capture off", "capture on")
LATENCY_LABELS = ("direct", "nginx", "capture off", "capture on")


def run_all(ctx: Any, args: argparse.Namespace, upstream: Any, upstream_port: int, kafka: str | None,
            scratch: Path) -> dict:
    """Saturation of every target in turn, ``--rounds`` times, then latency at one connection in turn,
    ``--rounds`` times (the best of each counts: other load on the machine only ever worsens a figure)."""
    results: dict[str, Any] = {"kafka": kafka or "none (events encoded, then discarded)"}
    script = scratch / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=(len(LABELS) + len(LATENCY_LABELS)) * args.rounds + args.clients)
        if args.clients:
            progress.update(task, description="aiohttp vs httpx as the upstream client")
            results["clients"] = compare_clients(upstream_port, 64)
            progress.advance(task)
        cpu = SIDECAR_CPU if args.pin else None
        binary = nginx_binary()
        assert binary is not None  # checked in main
        nginx, nginx_port = start_nginx(binary, upstream_port, scratch / "nginx", cpu)
        processes: list[Any] = [nginx]
        ports = {"direct": upstream_port, "nginx": nginx_port}
        pids = {"direct": upstream.pid, "nginx": nginx.pid}
        try:
            for http, label in ((False, "relay"), (True, "http relay")):
                relay_port = free_port()
                relay = ctx.Process(target=run_relay, args=(upstream_port, relay_port, cpu, http), daemon=True)
                relay.start()
                processes.append(relay)
                wait_listening(relay_port)
                ports[label], pids[label] = relay_port, relay.pid
            admin_ports: dict[str, int] = {}
            for capture, label in ((False, "capture off"), (True, "capture on")):
                sidecar, ports[label], admin_ports[label] = start_sidecar(
                    ctx, upstream_port, capture, kafka, str(scratch / label), cpu)
                processes.append(sidecar)
                pids[label] = sidecar.pid
            rounds: dict[str, list[Saturated]] = {label: [] for label in LABELS}
            latency: dict[str, list[Measured]] = {label: [] for label in LATENCY_LABELS}
            for number in range(args.rounds):
                for label in LABELS:
                    progress.update(task, description=f"{label}: saturation, round {number + 1}/{args.rounds}")
                    rounds[label].append(saturate(ports[label], args.connections, args.seconds, script, pids[label]))
                    progress.advance(task)
            for number in range(args.rounds):
                for label in LATENCY_LABELS:
                    progress.update(task, description=f"{label}: latency at one connection, "
                                                      f"round {number + 1}/{args.rounds}")
                    latency[label].append(measure(ports[label], 1, args.seconds, args.latency_rate))
                    progress.advance(task)
            results["rounds"] = rounds
            for label in LABELS:
                results[label] = max(rounds[label], key=lambda saturated: saturated.rps)
            for label in LATENCY_LABELS:
                runs = latency[label]
                results[f"{label} latency"] = Measured(max(m.rps for m in runs), min(m.p50_ms for m in runs),
                                                       min(m.p99_ms for m in runs))
            results["dropped"] = events_dropped(admin_ports["capture on"])
        finally:
            for process in processes:
                stop(process)
    return results


NAMES = {"direct": "direct (CPU: the upstream's)", "nginx": "nginx, 1 worker", "relay": "byte relay (no HTTP)",
         "http relay": "HTTP relay (parse, add a header)", "capture off": "sidecar, capture off",
         "capture on": "sidecar, capture on"}
RATIOS = (  # text, numerator, denominator, goal
    ("capture on / nginx throughput", "capture on", "nginx", ">= 0.50"),
    ("proxied / direct throughput (capture on)", "capture on", "direct", "-"),
    ("capture on / capture off throughput", "capture on", "capture off", "-"),
    ("nginx / direct throughput", "nginx", "direct", "-"),
    ("byte relay / direct throughput (the floor: one more hop, no proxy work)", "relay", "direct", "-"),
    ("HTTP relay / direct throughput (the floor of a Python HTTP proxy)", "http relay", "direct", "-"),
)


def report(results: dict, args: argparse.Namespace) -> None:
    placement = "proxies pinned to CPU 0, the rest on the others" if args.pin else "all processes share all CPUs"
    table = Table(title=f"sidecar benchmark ({args.upstream} upstream; saturation: wrk -t1 -c{args.connections}; "
                        f"latency: 1 connection at {args.latency_rate:,.0f} req/s; {args.seconds:g} s each, best of "
                        f"{args.rounds}; {os.cpu_count()} CPUs, {placement}; kafka: {results['kafka']})")
    for column in ("run", "req/s (saturation)", "CPU us/request", "p50 ms @ 1 conn", "p99 ms @ 1 conn"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for label in LABELS:
        saturated: Saturated = results[label]
        latency: Measured | None = results.get(f"{label} latency")
        table.add_row(NAMES[label], f"{saturated.rps:,.0f}", f"{saturated.cpu_us:,.1f}",
                      *((f"{latency.p50_ms:.3f}", f"{latency.p99_ms:.3f}") if latency else ("", "")))
    console.print(table)
    if "clients" in results:
        clients = results["clients"]
        console.print(f"upstream client, 64 concurrent: aiohttp {clients['aiohttp']:,.0f} req/s, "
                      f"httpx {clients['httpx']:,.0f} req/s (ratio {clients['aiohttp'] / clients['httpx']:.1f}x)")
    rounds = results["rounds"]
    for text, top, bottom, goal in RATIOS:
        per_round = [t.rps / b.rps for t, b in zip(rounds[top], rounds[bottom], strict=True)]
        console.print(f"{text}: [bold]{results[top].rps / results[bottom].rps:.2f}[/bold]  (goal {goal}; round by "
                      f"round {', '.join(f'{ratio:.2f}' for ratio in per_round)})")
    on, off, nginx = results["capture on"], results["capture off"], results["nginx"]
    console.print(f"CPU per request: sidecar capture on [bold]{on.cpu_us:,.0f} us[/bold], capture off "
                  f"{off.cpu_us:,.0f} us, nginx {nginx.cpu_us:,.0f} us; capture on / nginx "
                  f"[bold]{on.cpu_us / nginx.cpu_us:.1f}x[/bold] (Istio's published figure for its sidecar: "
                  "350 us, 0.35 vCPU per 1,000 req/s)")
    dropped = {reason: count for reason, count in results["dropped"].items() if count}
    console.print("events dropped by the capture-on sidecar: "
                  + (", ".join(f"{reason} {count:,.0f}" for reason, count in dropped.items()) or "none"))
    base = results["direct latency"]
    for label, goal in (("capture on", "  (goal p50 <= 0.1, p99 <= 0.5 ms)"), ("capture off", ""), ("nginx", "")):
        proxied = results[f"{label} latency"]
        console.print(f"added latency at one connection, {label}: p50 [bold]{proxied.p50_ms - base.p50_ms:+.3f} "
                      f"ms[/bold], p99 [bold]{proxied.p99_ms - base.p99_ms:+.3f} ms[/bold]{goal}  "
                      f"[direct p50 {base.p50_ms:.3f} / p99 {base.p99_ms:.3f} ms]")


if __name__ == "__main__":
    main()
