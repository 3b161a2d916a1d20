"""Benchmark: the sidecar against the model server it fronts, measured in the same run.

    .venv/bin/python bench/sidecar.py                  # local Kafka broker started for the run
    .venv/bin/python bench/sidecar.py --kafka none     # events built and encoded, then discarded
    .venv/bin/python bench/sidecar.py --clients        # also: aiohttp vs httpx as upstream client

A trivial upstream (by default a minimal ASGI app on uvicorn answering a fixed JSON prediction,
``--upstream raw`` for a bare asyncio protocol server) runs in its own process; so do the
sidecars (one worker each, capture off and on, both up for the whole run) and the load generator,
which is the same for every run: ``--connections`` keep-alive connections, closed loop for
saturation throughput, open loop at a fixed rate (latency measured from each request's scheduled
time, so queueing counts) for percentiles at half of the direct saturation rate and at half of
the sidecar's. Saturation runs take turns (direct, capture off, capture on) for ``--rounds``
rounds and the best of each counts, so that other load on a shared machine skews the ratios
less. Printed: proxied/direct throughput, capture on/off throughput (also round by round), and
the latency the sidecar adds at p50 and p99.

Two floors run in the same turns: a byte relay (one more hop, no HTTP) and an HTTP relay (requests
and replies parsed with httptools, one header added): what any proxy, and any Python HTTP proxy,
keeps of direct throughput on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
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
    process.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the load")
    parser.add_argument("--rounds", type=int, default=3,
                        help="saturation runs of direct, capture off and capture on, in turn; the best of each counts")
    parser.add_argument("--kafka", default="local", help="'local' (start a broker), 'none', or host:port")
    parser.add_argument("--clients", action="store_true", help="also compare aiohttp and httpx as clients")
    parser.add_argument("--upstream", choices=["asgi", "raw"], default="asgi",
                        help="asgi: a minimal ASGI app on uvicorn, the stack of a typical Python model server; "
                        "raw: a bare asyncio protocol, far faster than any real model server")
    parser.add_argument("--pin", action="store_true",
                        help="run the sidecar on CPU 0 and everything else (load generator, upstream, broker) on "
                        "the other CPUs, as a sidecar beside a model server has its own core; without it all "
                        "processes share every CPU, and on a small machine the sidecar competes with its own load")
    args = parser.parse_args()
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs at least 2 CPUs")
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))  # inherited by every process started here

    ctx = multiprocessing.get_context("spawn")
    upstream_port = free_port()
    upstream = ctx.Process(target=run_upstream, args=(upstream_port, args.upstream), daemon=True)
    upstream.start()
    wait_listening(upstream_port)
    broker = None
    with tempfile.TemporaryDirectory(prefix="provline-bench-") as scratch:
        kafka: str | None = None
        if args.kafka == "local":
            from deploy.local.kafka import LocalKafka, create_topics
            from provline.schemas import Topics

            console.print("starting a local Kafka broker...")
            broker = LocalKafka(Path(scratch) / "kafka").start()
            kafka = broker.bootstrap
            create_topics(kafka, Topics("bench").all)
        elif args.kafka != "none":
            kafka = args.kafka
        try:
            results = run_all(ctx, args, upstream_port, kafka, scratch)
        finally:
            if broker is not None:
                broker.stop()
            upstream.terminate()
    report(results, args)


def run_all(ctx: Any, args: argparse.Namespace, upstream_port: int, kafka: str | None, scratch: str) -> dict:
    """Saturation of direct, capture off and capture on in turn, ``--rounds`` times (the best of each
    counts: other load on the machine only ever lowers a figure), then latency at fixed rates."""
    results: dict[str, Any] = {"kafka": kafka or "none (events encoded, then discarded)"}
    seconds, connections = args.seconds, args.connections
    labels = ("direct", "relay", "http relay", "capture off", "capture on")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(labels) * args.rounds + 6 + args.clients)
        if args.clients:
            progress.update(task, description="aiohttp vs httpx as the upstream client")
            results["clients"] = compare_clients(upstream_port, 64)
            progress.advance(task)
        cpu = SIDECAR_CPU if args.pin else None
        relays: list[tuple[Any, int, int | None]] = []
        for http in (False, True):
            relay_port = free_port()
            relay = ctx.Process(target=run_relay, args=(upstream_port, relay_port, cpu, http), daemon=True)
            relay.start()
            wait_listening(relay_port)
            relays.append((relay, relay_port, None))
        sidecars: list[tuple[Any, int, int | None]] = [
            start_sidecar(ctx, upstream_port, capture, kafka, str(Path(scratch) / label), cpu)
                    for capture, label in ((False, "capture off"), (True, "capture on"))]
        ports = {"direct": upstream_port, "relay": relays[0][1], "http relay": relays[1][1],
                 "capture off": sidecars[0][1], "capture on": sidecars[1][1]}
        sidecars += relays
        try:
            rounds: dict[str, list[Measured]] = {label: [] for label in labels}
            for number in range(args.rounds):
                for label in labels:
                    progress.update(task, description=f"{label}: saturation, round {number + 1}/{args.rounds}")
                    rounds[label].append(measure(ports[label], connections, seconds))
                    progress.advance(task)
            results["rounds"] = rounds
            for label in labels:
                results[label] = max(rounds[label], key=lambda measured: measured.rps)
            rate = results["rate"] = results["direct"].rps / 2
            low = results["low_rate"] = results["capture on"].rps / 2  # what the sidecar sustains
            for label, key, at in (("direct", "direct_half", rate), ("capture off", "capture off half", rate),
                                   ("capture on", "capture on half", rate), ("capture on", "capture on low", low),
                                   ("direct", "direct low", low)):
                progress.update(task, description=f"{label}: latency at {at:.0f} req/s")
                results[key] = measure(ports[label], connections, seconds, at)
                progress.advance(task)
            capture_on_admin = sidecars[1][2]
            assert capture_on_admin is not None  # a sidecar, not a relay
            results["dropped"] = events_dropped(capture_on_admin)
        finally:
            for process, *_ in sidecars:
                stop(process)
    return results


def report(results: dict, args: argparse.Namespace) -> None:
    direct, relay, http_relay, off, on = (results[label] for label in ("direct", "relay", "http relay",
                                                                         "capture off", "capture on"))
    half_direct, half_on, half_off = results["direct_half"], results["capture on half"], results["capture off half"]
    placement = "sidecar pinned to CPU 0, the rest on the others" if args.pin else "all processes share all CPUs"
    table = Table(title=f"sidecar benchmark ({args.upstream} upstream, {args.connections} connections, "
                        f"{args.seconds:.0f} s each, {os.cpu_count()} CPUs, {placement}, kafka: {results['kafka']})")
    for column in ("run", "req/s (saturation)", "p50 ms @ half", "p99 ms @ half"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for label, saturated, half in (("direct", direct, half_direct), ("byte relay (no HTTP)", relay, None),
                                   ("HTTP relay (parse, add a header)", http_relay, None),
                                   ("sidecar, capture off", off, half_off), ("sidecar, capture on", on, half_on)):
        table.add_row(label, f"{saturated.rps:,.0f}", *((f"{half.p50_ms:.3f}", f"{half.p99_ms:.3f}") if half
                                                         else ("", "")))
    console.print(table)
    if "clients" in results:
        clients = results["clients"]
        console.print(f"upstream client, 64 concurrent: aiohttp {clients['aiohttp']:,.0f} req/s, "
                      f"httpx {clients['httpx']:,.0f} req/s (ratio {clients['aiohttp'] / clients['httpx']:.1f}x)")
    rounds = results["rounds"]
    lines = [
        ("proxied / direct throughput (capture on)", on.rps / direct.rps, ">= 0.60",
         [o.rps / d.rps for o, d in zip(rounds["capture on"], rounds["direct"], strict=True)]),
        ("capture on / capture off throughput", on.rps / off.rps, ">= 0.85",
         [o.rps / f.rps for o, f in zip(rounds["capture on"], rounds["capture off"], strict=True)]),
        ("byte relay / direct throughput (the floor: one more hop, no proxy work)", relay.rps / direct.rps, "-",
         [r.rps / d.rps for r, d in zip(rounds["relay"], rounds["direct"], strict=True)]),
        ("HTTP relay / direct throughput (the floor of a Python HTTP proxy)", http_relay.rps / direct.rps, "-",
         [r.rps / d.rps for r, d in zip(rounds["http relay"], rounds["direct"], strict=True)]),
        ("capture off / HTTP relay throughput", off.rps / http_relay.rps, "-",
         [f.rps / r.rps for f, r in zip(rounds["capture off"], rounds["http relay"], strict=True)]),
    ]
    for text, value, goal, per_round in lines:
        console.print(f"{text}: [bold]{value:.2f}[/bold]  (goal {goal}; round by round "
                      f"{', '.join(f'{ratio:.2f}' for ratio in per_round)})")
    dropped = {reason: count for reason, count in results["dropped"].items() if count}
    console.print("events dropped by the capture-on sidecar: "
                  + (", ".join(f"{reason} {count:,.0f}" for reason, count in dropped.items()) or "none"))
    low_direct, low_on = results["direct low"], results["capture on low"]
    for text, rate, base, proxied in (
        ("half of direct saturation", results["rate"], half_direct, half_on),
        ("half of the sidecar's saturation", results["low_rate"], low_direct, low_on),
    ):
        console.print(f"added latency at {rate:,.0f} req/s ({text}), capture on: "
                      f"p50 [bold]{proxied.p50_ms - base.p50_ms:+.3f} ms[/bold] (goal <= 1), "
                      f"p99 [bold]{proxied.p99_ms - base.p99_ms:+.3f} ms[/bold] (goal <= 3)  "
                      f"[direct p50 {base.p50_ms:.3f} / p99 {base.p99_ms:.3f} ms]")


if __name__ == "__main__":
    main()
