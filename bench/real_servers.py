"""Benchmark: provline's sidecar in front of real model servers, every figure measured in the same run.

    make setup broker model-servers
    .venv/bin/python bench/real_servers.py [--seconds 5] [--rounds 2] [--connections 16]

Starts the system the real-server tests run (deploy/local/model_servers): a local Kafka broker,
``provline serve``, ``provline processors``, the training job, Seldon MLServer (KServe V2) and
``mlflow models serve``, each with a ``provline sidecar`` in front. For each server, one iris row
per request (MLServer: ``POST /v2/models/iris/infer``; MLflow: ``POST /invocations``):

* saturation throughput (``--connections`` keep-alive connections, closed loop), direct and through
  the sidecar, taking turns for ``--rounds`` rounds; the best of each counts (other load on a shared
  machine only ever lowers a figure), and their ratio is printed;
* latency at a fixed rate, half the sidecar's saturation (open loop: timed from each request's
  scheduled start, so queueing counts), direct and through the sidecar: the p50 and p99 it adds;
* request -> trace queryable: requests at ``--trace-rate`` through the sidecar, each timed from its
  send until its trace is in the store (one SQL statement every 50 ms asks for all still missing),
  p50 and p99, and how many of those traces were complete.

Everything shares the machine's cores (the servers, the sidecars, Kafka, the processors, the sink
and the load), as on a small host; the ratios are of figures measured side by side in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sidecar import exchange  # noqa: E402
from bench.sidecar import load as load_latencies  # noqa: E402
from deploy.local.model_servers import RealServersStack, Server  # noqa: E402

console = Console()
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
TRACE_POLL_S = 0.05
TRACE_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Target:
    """One real server and the request the benchmark sends it."""

    name: str
    path: str
    body: bytes


TARGETS = (
    Target("MLServer", "/v2/models/iris/infer", json.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}).encode()),
    Target("MLflow", "/invocations", json.dumps(
        {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [IRIS_ROW]}}).encode()),
)


# --- the load generator --------------------------------------------------------------------------

def request_bytes(server: Server, target: Target) -> tuple[str, int, bytes]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST {target.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(target.body)}\r\n\r\n")
    return host, int(port), head.encode() + target.body


async def load(server: Server, target: Target, *, connections: int, seconds: float,
               rate: float | None = None) -> list[float]:
    """Latencies (s) of every request started within ``seconds``: closed loop, or open loop at ``rate``."""
    host, port, request = request_bytes(server, target)
    return await load_latencies(host, port, request, connections=connections, seconds=seconds, rate=rate)


@dataclass(frozen=True)
class Measured:
    rps: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, latencies: list[float], seconds: float) -> Measured:
        return cls(len(latencies) / seconds, float(np.percentile(latencies, 50) * 1e3),
                   float(np.percentile(latencies, 99) * 1e3))


def measure(server: Server, target: Target, *, connections: int, seconds: float, rate: float | None = None) -> Measured:
    return Measured.of(asyncio.run(load(server, target, connections=connections, seconds=seconds, rate=rate)),
                       seconds)


# --- request -> trace queryable ------------------------------------------------------------------

@dataclass(frozen=True)
class TraceLatency:
    p50_s: float
    p99_s: float
    traced: int
    complete: int
    sent: int


async def trace_latency(stack: RealServersStack, sidecar: Server, target: Target, *, rate: float,
                        seconds: float) -> TraceLatency:
    """Send at ``rate`` for ``seconds``; time each request until its trace is in the store."""
    host, port, request = request_bytes(sidecar, target)
    sent: dict[str, float] = {}
    seen: dict[str, tuple[float, bool]] = {}
    sending = True

    async def send() -> None:
        nonlocal sending
        reader, writer = await asyncio.open_connection(host, port)
        began = time.perf_counter()
        for number in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, began + number / rate - time.perf_counter()))
            at = time.perf_counter()
            head = await exchange(reader, writer, request)
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"x-prediction-id:"):
                    sent[line.split(b":", 1)[1].strip().decode()] = at
        writer.close()
        sending = False

    async def poll() -> None:
        deadline = None
        while sending or len(seen) < len(sent):
            if not sending:
                deadline = deadline or time.perf_counter() + TRACE_DEADLINE_S
                if time.perf_counter() > deadline:
                    return
            missing = [prediction for prediction in sent if prediction not in seen]
            if missing:
                ids = ", ".join(f"'{prediction}'" for prediction in missing)
                rows = await asyncio.to_thread(stack.sql, "SELECT prediction_id, max(complete) AS complete "
                                               f"FROM prediction_traces WHERE prediction_id IN ({ids}) "
                                               "GROUP BY prediction_id")
                now = time.perf_counter()
                seen.update({row["prediction_id"]: (now, bool(row["complete"])) for row in rows})
            await asyncio.sleep(TRACE_POLL_S)

    await asyncio.gather(send(), poll())
    waits = [seen[prediction][0] - at for prediction, at in sent.items() if prediction in seen]
    return TraceLatency(float(np.percentile(waits, 50)) if waits else float("nan"),
                        float(np.percentile(waits, 99)) if waits else float("nan"),
                        len(waits), sum(complete for _, complete in seen.values()), len(sent))


# --- the run -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    direct: Measured
    proxied: Measured
    rounds: list[tuple[Measured, Measured]]
    direct_at_rate: Measured
    proxied_at_rate: Measured
    rate: float
    trace: TraceLatency


def start(stack: RealServersStack, workdir: Path, progress: Progress) -> list[tuple[Target, Server, Server]]:
    task = progress.add_task("starting the broker", total=5)
    stack.start_broker()
    progress.update(task, advance=1, description="starting provline serve and provline processors")
    stack.start_platform()
    progress.update(task, advance=1, description="training the models; recording their lineage")
    training = stack.train_models(workdir / "models")
    if not (training.mlserver_repository / "iris").exists():
        raise SystemExit(f"the training job saved no model: {training.summary()}")
    if training.returncode != 0:
        console.print(f"[yellow]the training job failed; traces will lack lineage: {training.summary()}[/yellow]")
    progress.update(task, advance=1, description="starting MLServer and mlflow models serve")
    mlserver = stack.start_mlserver(training.mlserver_repository, wait=False)
    mlflow = stack.start_mlflow(training.mlflow_model("iris"), wait=False)
    mlserver.service.wait_healthy()
    mlflow.service.wait_healthy()
    progress.update(task, advance=1, description="starting a sidecar in front of each")
    sidecars = [stack.start_sidecar(f"sidecar-{name}", server.url) for name, server in
                (("mlserver", mlserver), ("mlflow", mlflow))]
    progress.update(task, advance=1)
    progress.remove_task(task)
    return [(TARGETS[0], mlserver, sidecars[0]), (TARGETS[1], mlflow, sidecars[1])]


def bench(stack: RealServersStack, target: Target, server: Server, sidecar: Server, args: argparse.Namespace,
          progress: Progress) -> Result:
    task = progress.add_task(target.name, total=2 * args.rounds + 3)
    rounds = []
    for number in range(args.rounds):
        pair = []
        for label, where in (("direct", server), ("through the sidecar", sidecar)):
            progress.update(task, description=f"{target.name}: saturation {label}, round {number + 1}/{args.rounds}")
            pair.append(measure(where, target, connections=args.connections, seconds=args.seconds))
            progress.advance(task)
        rounds.append((pair[0], pair[1]))
    direct = max((d for d, _ in rounds), key=lambda m: m.rps)
    proxied = max((p for _, p in rounds), key=lambda m: m.rps)
    rate = proxied.rps / 2
    at_rate = []
    for label, where in (("direct", server), ("through the sidecar", sidecar)):
        progress.update(task, description=f"{target.name}: latency at {rate:,.0f} req/s {label}")
        at_rate.append(measure(where, target, connections=args.connections, seconds=args.seconds, rate=rate))
        progress.advance(task)
    progress.update(task, description=f"{target.name}: request -> trace queryable at {args.trace_rate:g} req/s")
    trace = asyncio.run(trace_latency(stack, sidecar, target, rate=args.trace_rate, seconds=args.trace_seconds))
    progress.advance(task)
    progress.remove_task(task)
    return Result(direct, proxied, rounds, at_rate[0], at_rate[1], rate, trace)


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    table = Table(title=f"provline in front of real model servers ({args.connections} connections, {args.seconds:g} s "
                        f"runs, best of {args.rounds} rounds, {os.cpu_count()} CPUs shared by everything)")
    table.add_column("measured")
    for name in results:
        table.add_column(name, justify="right")
    figures: list[tuple[str, Callable[[Result], str]]] = [
        ("direct, req/s (saturation)", lambda r: f"{r.direct.rps:,.0f}"),
        ("through the sidecar, req/s", lambda r: f"{r.proxied.rps:,.0f}"),
        ("sidecar / direct throughput", lambda r: f"{r.proxied.rps / r.direct.rps:.2f}"),
        ("  round by round", lambda r: ", ".join(f"{p.rps / d.rps:.2f}" for d, p in r.rounds)),
        ("latency measured at, req/s", lambda r: f"{r.rate:,.0f}"),
        ("  direct p50 / p99, ms", lambda r: f"{r.direct_at_rate.p50_ms:.1f} / {r.direct_at_rate.p99_ms:.1f}"),
        ("  sidecar p50 / p99, ms", lambda r: f"{r.proxied_at_rate.p50_ms:.1f} / {r.proxied_at_rate.p99_ms:.1f}"),
        ("added p50, ms", lambda r: f"{r.proxied_at_rate.p50_ms - r.direct_at_rate.p50_ms:+.1f}"),
        ("added p99, ms", lambda r: f"{r.proxied_at_rate.p99_ms - r.direct_at_rate.p99_ms:+.1f}"),
        ("request -> trace queryable p50, s", lambda r: f"{r.trace.p50_s:.2f}"),
        ("request -> trace queryable p99, s", lambda r: f"{r.trace.p99_s:.2f}"),
        ("  traces stored (complete) / sent", lambda r: f"{r.trace.traced} ({r.trace.complete}) / {r.trace.sent}"),
    ]
    for label, figure in figures:
        table.add_row(label, *(figure(result) for result in results.values()))
    console.print(table)
    console.print("Latency is measured at half the sidecar's saturation rate, open loop (queueing counts); a trace "
                  "is timed from its request's send until the store has it.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput and latency run")
    parser.add_argument("--rounds", type=int, default=2, help="saturation runs of direct and sidecar, in turn")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections of the load")
    parser.add_argument("--trace-rate", type=float, default=10.0, help="requests per second of the trace run")
    parser.add_argument("--trace-seconds", type=float, default=10.0, help="length of the trace run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="provline-bench-real-") as scratch:
        workdir = Path(scratch)
        stack = RealServersStack(workdir)
        try:
            with Progress(console=console, transient=True) as progress:
                targets = start(stack, workdir, progress)
                results = {target.name: bench(stack, target, server, sidecar, args, progress)
                           for target, server, sidecar in targets}
        finally:
            stack.stop()
    report(results, args)


if __name__ == "__main__":
    main()
