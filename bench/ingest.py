"""Benchmark: ``provline ingest`` against a bare CloudEvents receiver on the same HTTP stack, in the same run.

    .venv/bin/python bench/ingest.py                  # local Kafka broker started for the run
    .venv/bin/python bench/ingest.py --kafka none     # no broker: events built and encoded, then discarded

Every target gets the same request: one KServe InferenceLogger request event in binary mode (a
KServe V2 body of one iris row, the ce-* attributes KServe's agent sends). Each target is a process
of its own, up for the whole run, served by the same uvicorn configuration as the ingest service:

* ``receiver``: an ASGI app that reads the whole event and answers 200, what any Python receiver
  pays (the baseline);
* ``ingest, no broker``: the event parsed, recorded as the sidecar records it, encoded and discarded:
  the recording work, nothing durable;
* ``ingest, durable``: as deployed, answered only once the event is fsynced into the spool (one fsync
  for every event appended in one go), with the broker taking the spooled events meanwhile.

Saturation: ``--connections`` keep-alive connections in a closed loop for ``--seconds``, every
target in turn for ``--rounds`` rounds; the best of each counts, so that other load on a shared
machine skews the ratios less. p50 and p99 are those of the saturated runs (queueing included).
Printed: each target's requests/s and latency, and ingest / receiver throughput.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sidecar import bench_kafka, free_port, load, new_loop, stop, wait_listening  # noqa: E402

EVENT_BODY = json.dumps({"id": "bench", "inputs": [
    {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
EVENT_HEADERS = {
    "ce-specversion": "1.0", "ce-type": "org.kubeflow.serving.inference.request",
    "ce-source": "http://localhost:9081/", "ce-inferenceservicename": "iris", "ce-namespace": "bench",
    "ce-component": "predictor", "ce-endpoint": "default", "content-type": "application/json",
}
TARGETS = ("receiver", "ingest, no broker", "ingest, durable")
console = Console()


def event_request(port: int) -> bytes:
    """One binary-mode CloudEvent. Every request carries the same ce-id (the load sends fixed bytes):
    the events are still recorded one by one, and the processors, not run here, would keep one trace."""
    head = "".join(f"{name}: {value}\r\n" for name, value in {**EVENT_HEADERS, "ce-id": "bench-1"}.items())
    return (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Content-Length: {len(EVENT_BODY)}\r\n\r\n").encode() \
        + EVENT_BODY


async def _receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    body = b'{"recorded":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def run_receiver(port: int) -> None:
    from provline.sidecar.server import ServerWithoutSignals, uvicorn_config

    config = uvicorn_config(_receiver, host="127.0.0.1", port=port, lifespan="off")
    config.log_level = "warning"
    new_loop().run_until_complete(ServerWithoutSignals(config).serve())


def run_ingest_process(port: int, kafka: str | None, spool_dir: str) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from provline.sidecar.ingest import run_ingest
    from provline.sidecar.settings import IngestSettings

    publishing = ({"kafka": {"bootstrap": kafka}, "topics": {"prefix": "bench"},
                   "emitter": {"spool_dir": Path(spool_dir)}} if kafka else {"emitter": {"transport": "none"}})
    run_ingest(IngestSettings(ingest={"host": "127.0.0.1", "port": port, "log_format": "text"}, **publishing))


def run_load(port: int, connections: int, seconds: float, out: Any) -> None:
    out.put(new_loop().run_until_complete(load("127.0.0.1", port, event_request(port), connections=connections,
                                               seconds=seconds)))


@dataclass
class Measured:
    rps: float
    p50_ms: float
    p99_ms: float


def measure(ctx: Any, port: int, connections: int, seconds: float) -> Measured:
    out = ctx.Queue()
    process = ctx.Process(target=run_load, args=(port, connections, seconds, out))
    process.start()
    latencies = np.array(out.get(timeout=seconds + 60))
    process.join()
    return Measured(len(latencies) / seconds, float(np.percentile(latencies, 50) * 1e3),
                    float(np.percentile(latencies, 99) * 1e3))


def start_targets(ctx: Any, kafka: str | None, scratch: Path) -> tuple[list[Any], dict[str, int]]:
    ports = {target: free_port() for target in TARGETS}
    processes = [ctx.Process(target=run_receiver, args=(ports["receiver"],), daemon=True),
                 ctx.Process(target=run_ingest_process, args=(ports["ingest, no broker"], None, ""), daemon=True)]
    if kafka is not None:
        processes.append(ctx.Process(target=run_ingest_process,
                                     args=(ports["ingest, durable"], kafka, str(scratch / "spool")), daemon=True))
    else:
        del ports["ingest, durable"]
    for process in processes:
        process.start()
    for port in ports.values():
        wait_listening(port, timeout=60)
    return processes, ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections, closed loop")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every target, in turn; the best counts")
    parser.add_argument("--kafka", default="local", help="'local' (start a broker), 'none', or host:port")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="provline-bench-ingest-") as scratch:
        broker, kafka = bench_kafka(args.kafka, Path(scratch))
        processes, ports = start_targets(ctx, kafka, Path(scratch))
        results: dict[str, list[Measured]] = {target: [] for target in ports}
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("benchmark", total=len(ports) * args.rounds)
                for number in range(args.rounds):
                    for target, port in ports.items():
                        progress.update(task, description=f"{target}: round {number + 1}/{args.rounds}")
                        results[target].append(measure(ctx, port, args.connections, args.seconds))
                        progress.advance(task)
        finally:
            for process in processes:
                stop(process)
            if broker is not None:
                broker.stop()
    report({target: max(runs, key=lambda m: m.rps) for target, runs in results.items()}, args)


def report(best: dict[str, Measured], args: argparse.Namespace) -> None:
    table = Table(title=f"ingest benchmark ({args.connections} connections, closed loop; {args.seconds:g} s each, "
                        f"best of {args.rounds})")
    for column in ("target", "requests/s", "p50 ms", "p99 ms", "/ receiver"):
        table.add_column(column, justify="left" if column == "target" else "right")
    baseline = best["receiver"].rps
    for target, measured in best.items():
        table.add_row(target, f"{measured.rps:,.0f}", f"{measured.p50_ms:.2f}", f"{measured.p99_ms:.2f}",
                      f"{measured.rps / baseline:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
