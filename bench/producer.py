"""Emitter throughput against fastavro encoding alone, measured in the same run.

    .venv/bin/python bench/producer.py [--events 20000]

Realistic events: RunEvents carrying this machine's captured environment (every installed
package) and DatasetVersions with the column profiles of a 12-column table. The baseline
encodes the same complete events with fastavro (schema parsed once); the emitter builds the
envelope, hash-chains, encodes and hands each event to the Kafka transport (write-ahead spool,
librdkafka), against a real local broker. Delivery of everything is then awaited and timed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.local.kafka import LocalKafka, create_topics  # noqa: E402
from provline.producers import JobSettings, build_emitter  # noqa: E402
from provline.producers.capture import code_version, environment  # noqa: E402
from provline.producers.datasets import describe  # noqa: E402
from provline.schemas import Topics, default_catalog  # noqa: E402
from provline.schemas.events import new_envelope, producer_identity  # noqa: E402


def realistic_events(count: int) -> list[tuple[str, dict]]:
    env, code = environment(), code_version()
    rng = np.random.default_rng(0)
    table = pa.table({f"num_{i}": rng.normal(size=5000) for i in range(8)}
                     | {f"cat_{i}": rng.choice(["a", "b", "c", "d"], 5000) for i in range(4)})
    dataset = {"name": "customers", **describe(table, name="customers"), "license": "CC-BY-4.0"}
    events = []
    for index in range(count):
        if index % 2:
            events.append(("DatasetVersion", dict(dataset)))
        else:
            events.append(("RunEvent", {
                "run_id": str(uuid.uuid4()), "name": "train", "state": "COMPLETED", "stage": "training",
                "inputs": [dataset["digest"]], "outputs": ["churn@3"], "code": code, "environment": env,
                "hyperparameters": {"lr": "0.1", "epochs": "30"}, "seeds": {"seed": index},
                "metrics": {"auc": 0.91}, "duration_ms": 1234,
            }))
    return events


def rate(label: str, count: int, seconds: float) -> float:
    print(f"  {label}: {count / seconds:,.0f} events/s", flush=True)
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    console = Console()
    events = realistic_events(args.events)
    catalog = default_catalog()
    producer = producer_identity("bench", "session")
    complete = [(kind, {**new_envelope(producer), **fields, "hash": "0" * 64}) for kind, fields in events]
    sizes = [len(catalog.encode(kind, value)) for kind, value in complete[:2]]
    console.print(f"{args.events:,} events; RunEvent {sizes[0]:,} B, DatasetVersion {sizes[1]:,} B encoded")

    parsed = {kind: catalog.current(kind).parsed for kind in ("RunEvent", "DatasetVersion")}
    started = time.perf_counter()
    for kind, value in track(complete, description="baseline: fastavro encode", console=console):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed[kind], value)
        buffer.getvalue()
    baseline = rate("fastavro encoding alone", len(complete), time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as workdir:
        bootstrap = os.environ.get("PROVLINE_KAFKA__BOOTSTRAP")
        broker = None if bootstrap else LocalKafka(Path(workdir) / "kafka").start()
        bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]  # one of the two is set
        topics = Topics(f"bench-{uuid.uuid4().hex[:8]}")
        create_topics(bootstrap, topics.all)
        try:
            emitter = build_emitter(JobSettings(kafka={"bootstrap": bootstrap}, topics={"prefix": topics.prefix},
                                                emitter={"spool_dir": Path(workdir) / "spool"}), producer_name="bench")
            started = time.perf_counter()
            for kind, fields in track(events, description="emitter: build + seal + encode + emit", console=console):
                emitter.emit(kind, fields)
            emitted = time.perf_counter() - started
            emitter_rate = rate("emitter (build + hash chain + encode + emit)", len(events), emitted)
            delivered = emitter.close(timeout=300)
            total = time.perf_counter() - started
            rate("emitted and acknowledged by the broker", len(events), total)
        finally:
            if broker is not None:
                broker.stop()

    result = Table(title="bench/producer.py")
    result.add_column("measure")
    result.add_column("value", justify="right")
    result.add_row("fastavro encode (baseline)", f"{baseline:,.0f} ev/s")
    result.add_row("emitter emit", f"{emitter_rate:,.0f} ev/s")
    result.add_row("emitter / baseline", f"{emitter_rate / baseline:.2f}")
    result.add_row("emitter overhead over encoding", f"{baseline / emitter_rate - 1:+.0%} (aim: <= +30%)")
    result.add_row("all delivered", str(delivered))
    console.print(result)


if __name__ == "__main__":
    main()
