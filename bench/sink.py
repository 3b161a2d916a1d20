"""Benchmark: the sink's insert path against a baseline, and trace lookups at 10 million predictions.

    .venv/bin/python bench/sink.py                          # 200,000 events, 10,000,000 predictions
    .venv/bin/python bench/sink.py --events 50000 --predictions 1000000

1. Write throughput. The same encoded events (half InferenceRequest, half PredictionTrace, as the
   Kafka messages carry them) go into ClickHouse (chDB, in process) twice, in batches of
   ``--batch`` events: the baseline inserts rows decoded beforehand (one insert per table and
   batch: pure ClickHouse cost); the sink path does what ``SinkWriter.process_batch`` does
   between consume and commit: decode and validate, build rows, lineage edges and the
   prediction index, insert with deduplication tokens. Printed: rows/s of each and the ratio.
   Kafka is left out on purpose: it is the same for both and measured by bench/producer.py.
2. Trace lookup. ``--predictions`` traces are generated inside ClickHouse (INSERT ... SELECT FROM
   numbers()), then ``provline trace``'s query (sink/sql/trace.sql) runs for random prediction ids.
   Printed: p50/p99 latency and the granules the prediction_traces lookup reads (EXPLAIN indexes=1).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import default_catalog, key_for, new_envelope, producer_identity  # noqa: E402
from schemas.integrity import HashChain  # noqa: E402
from sink import queries  # noqa: E402
from sink.store import migrate, open_store  # noqa: E402
from sink.writer import insert_plan, plan_batch  # noqa: E402

console = Console()


class Message:
    __slots__ = ("_key", "_offset", "_topic", "_value")

    def __init__(self, topic: str, offset: int, key: bytes, value: bytes) -> None:
        self._topic, self._offset, self._key, self._value = topic, offset, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


def make_messages(count: int, progress: Progress) -> list[Message]:
    catalog = default_catalog()
    chain = HashChain(catalog)
    producer = producer_identity("bench", "bench-session")
    task = progress.add_task("encoding events", total=count)
    messages = []
    for number in range(count):
        prediction_id = f"bench-{number // 2}"
        if number % 2 == 0:
            kind, fields = "InferenceRequest", {
                "prediction_id": prediction_id, "endpoint": "/predict", "method": "POST", "path": "/predict",
                "model_name": "churn", "model_version": "3", "body_size": 64, "body_sha256": "b" * 64,
                "body": b'{"age": 41, "income": 52000.5, "city": "Oslo", "member": true}', "body_truncated": False,
                "features": {"age": 41.0, "income": 52000.5, "city": "Oslo", "member": True},
            }
        else:
            kind, fields = "PredictionTrace", {
                "prediction_id": prediction_id, "endpoint": "/predict", "complete": True, "model_name": "churn",
                "model_version": "3", "artifact_sha256": "a" * 64, "request_sha256": "b" * 64, "status": 200,
                "training_run_id": "run-7", "dataset_digests": ["sha256:d1"], "latency_us": 1500,
            }
        value = chain.seal(kind, {**new_envelope(producer), **fields})
        messages.append(Message(kind, number, key_for(kind, value).encode(), catalog.encode(kind, value)))
        if number % 5000 == 0:
            progress.update(task, completed=number)
    progress.update(task, completed=count)
    return messages


def write_throughput(client, messages: list[Message], batch: int, progress: Progress) -> tuple[float, float, int]:
    catalog = default_catalog()
    batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    decoded = [plan_batch(b, catalog) for b in batches]  # baseline rows: decoded before the clock starts
    rows = sum(len(r.rows) for plan in decoded for r in plan.events.values())

    client.command("CREATE DATABASE IF NOT EXISTS bench_base")
    client.command("CREATE DATABASE IF NOT EXISTS bench_sink")
    for database in ("bench_base", "bench_sink"):
        client.database = database
        migrate(client)

    client.database = "bench_base"
    task = progress.add_task("baseline: insert pre-decoded rows", total=len(batches))
    start = time.perf_counter()
    for plan in decoded:
        for table, table_rows in plan.events.items():
            client.insert(table, table_rows.rows, column_names=list(table_rows.columns))
        progress.advance(task)
    baseline = rows / (time.perf_counter() - start)

    client.database = "bench_sink"
    task = progress.add_task("sink: decode, derive, insert", total=len(batches))
    start = time.perf_counter()
    for chunk in batches:
        insert_plan(client, plan_batch(chunk, catalog))
        progress.advance(task)
    sink = rows / (time.perf_counter() - start)
    stored = client.query("SELECT count() FROM prediction_traces").result_rows[0][0]
    assert stored == rows // 2, (stored, rows)
    return baseline, sink, rows


GENERATE = """
INSERT INTO prediction_traces
SELECT
    generateUUIDv7()                                            AS event_id,
    now64(6, 'UTC') - toIntervalSecond(number % 2592000)        AS event_time,
    'bench-sidecar', 'bench-serving', repeat('h', 64), NULL,
    concat('pred-', toString(number))                           AS prediction_id,
    '/predict', true, 'churn', toString(number % 5), repeat('b', 64), repeat('a', 64), 'run-7', ['sha256:d1'],
    concat('{{"event_time":"2025-01-01T00:00:00+00:00","endpoint":"/predict","complete":true,',
           '"model_name":"churn","model_version":"', toString(number % 5), '","training_run_id":"run-7"}}'),
    '', 'bench', 0, number
FROM numbers({start}, {count})
"""


def lookup_latency(client, predictions: int, samples: int, progress: Progress) -> dict[str, float]:
    client.command("CREATE DATABASE IF NOT EXISTS bench_lookup")
    client.database = "bench_lookup"
    migrate(client)
    task = progress.add_task(f"generating {predictions:,} predictions in ClickHouse", total=predictions)
    step = 1_000_000
    for start in range(0, predictions, step):
        client.command(GENERATE.format(start=start, count=min(step, predictions - start)))
        progress.update(task, completed=min(start + step, predictions))
    client.command("OPTIMIZE TABLE prediction_traces FINAL")
    rng = random.Random(7)
    ids = [f"pred-{rng.randrange(predictions)}" for _ in range(samples)]
    queries.trace(client, ids[0])  # warm caches, as a running service has them
    task = progress.add_task("trace lookups by prediction id", total=samples)
    latencies = []
    for prediction_id in ids:
        start = time.perf_counter()
        found = queries.trace(client, prediction_id)
        latencies.append(time.perf_counter() - start)
        assert found is not None and found["prediction_id"] == prediction_id
        progress.advance(task)
    explain = "\n".join(row[0] for row in client.query(
        "EXPLAIN indexes = 1 SELECT * FROM prediction_traces FINAL WHERE prediction_id = {p:String}",
        parameters={"p": ids[0]}).result_rows)
    granules = re.findall(r"Granules: (\d+)/(\d+)", explain)
    stored = client.query("SELECT count() FROM prediction_traces").result_rows[0][0]
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1000), "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "granules_read": int(granules[-1][0]) if granules else -1,
        "granules_total": int(granules[-1][1]) if granules else -1, "stored": stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--predictions", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="provline-bench-sink-"))
    client = open_store(f"chdb://{workdir}")
    try:
        with Progress(console=console, transient=True) as progress:
            messages = make_messages(args.events, progress)
            baseline, sink, rows = write_throughput(client, messages, args.batch, progress)
            lookup = lookup_latency(client, args.predictions, args.samples, progress)
    finally:
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title=f"provline sink: {rows:,} event rows in batches of {args.batch:,}; "
                        f"{lookup['stored']:,} stored predictions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("baseline: pre-decoded rows inserted, rows/s", f"{baseline:,.0f}")
    table.add_row("sink path: decode + derive + insert, rows/s", f"{sink:,.0f}")
    table.add_row("sink / baseline", f"{sink / baseline:.2f}")
    table.add_row("trace lookup p50, ms", f"{lookup['p50_ms']:.2f}")
    table.add_row("trace lookup p99, ms", f"{lookup['p99_ms']:.2f}")
    table.add_row("granules read / total (prediction_traces)",
                  f"{lookup['granules_read']} / {lookup['granules_total']}")
    console.print(table)


if __name__ == "__main__":
    main()
