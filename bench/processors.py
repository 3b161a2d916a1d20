"""Benchmark: joined predictions per second of a processors worker, scale-out, and event-to-trace latency.

    .venv/bin/python bench/processors.py                           # 30,000 predictions
    .venv/bin/python bench/processors.py --predictions 50000 --rate-share 0.5

Broker: PROVLINE_KAFKA__BOOTSTRAP, else a local KRaft broker started for the run (deploy/local/kafka).
Every step reads its own copy of the same predictions (4 partitions), in arrival order with a
little reordering. By default a prediction is one InferenceExchange frame, as the sidecar sends
it; step 3 joins them as separate request and response messages, as other producers send them.

1. Baseline. A raw aiokafka consume + decode loop over the frames (``getmany``, unpacking and
   ``Catalog.decode`` of both events, nothing else). Printed: predictions/s.
2. Throughput. One worker (``provline processors``, a subprocess) joins from a standing start:
   predictions/s from the first message produced to the last trace read, and the worker's CPU
   seconds per prediction (user + system, all its threads, from /proc).
3. The same over separate halves: two messages per prediction, joined through the table.
4. Latency below saturation. Predictions are produced at ``--rate-share`` of step 2's throughput
   for ``--latency-seconds``; latency = trace read time minus the response's event time (both
   wall clocks of this host). Printed: p50 and p99.
5. Scale-out. Two workers of one app share the partitions (started, and their group settled,
   before the clock starts): predictions/s, and CPU seconds per prediction per worker, which must
   not grow with the number of workers (on 2 cores shared with the broker, throughput cannot double).
6. Faust ceiling. A worker on the processors' own Faust app (same consumer, buffer and batch
   settings: ``faust_app``) whose agent does nothing but take the same batches
   (``stream.take_events``) and forward each message's key to an output topic, no decoding, no
   waiting for delivery: the most any Faust agent reaches here; the join's throughput is read as
   a share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.local.kafka import LocalKafka, create_topics  # noqa: E402
from provline.schemas import Topics, default_catalog, key_for, new_envelope, producer_identity  # noqa: E402
from provline.schemas.events import utcnow  # noqa: E402
from provline.schemas.frames import events_in, exchange_frame  # noqa: E402
from provline.schemas.integrity import HashChain  # noqa: E402

console = Console()
PARTITIONS = 4
REORDER_WINDOW = 50  # events shuffled within blocks of this many: live traffic is nearly in order


class Events:
    def __init__(self) -> None:
        self.catalog = default_catalog()
        self.chain = HashChain(self.catalog)
        self.producer = producer_identity("bench", uuid.uuid4().hex)

    def __call__(self, kind: str, fields: dict, *, event_time: datetime | None = None) -> tuple[bytes, bytes]:
        value = {**new_envelope(self.producer, event_time=event_time), **fields}
        body = self.chain.seal_encode(kind, value)
        return key_for(kind, value).encode(), self.catalog.header(kind) + body


def lineage(events: Events) -> list[tuple[bytes, bytes]]:
    past = utcnow() - timedelta(hours=1)
    return [
        events("RunEvent", {"run_id": "run-1", "name": "train", "state": "COMPLETED",
                            "code": {"repo": "git@example.com:acme/churn", "commit": "c0ffee"}}, event_time=past),
        events("ModelVersion", {"model_name": "churn", "version": "1", "artifact_uri": "s3://m/1",
                                "artifact_sha256": "a" * 64, "run_id": "run-1", "datasets": ["d" * 64],
                                "feature_sets": []}, event_time=past),
        events("Deployment", {"model_name": "churn", "model_version": "1", "environment": "prod",
                              "endpoint": "/predict", "action": "DEPLOY"}, event_time=past),
    ]


def prediction(events: Events, index: int, prefix: str, at: datetime, *, framed: bool = True
               ) -> list[tuple[bytes, bytes]]:
    """The prediction's messages: one InferenceExchange frame, or (``framed=False``) its two halves."""
    pid = f"{prefix}-{index}"
    body = f'{{"age": {index % 90}, "plan": "gold"}}'.encode()
    halves = [
        events("InferenceRequest", {
            "prediction_id": pid, "endpoint": "/predict", "method": "POST", "path": "/predict",
            "body_size": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "features": {"age": float(index % 90), "plan": "gold", "tenure": float(index % 37)},
        }, event_time=at),
        events("InferenceResponse", {
            "prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 14,
            "body_sha256": hashlib.sha256(b'{"score": 0.5}').hexdigest(), "latency_us": 3_000,
            "outputs": {"score": 0.5},
        }, event_time=at + timedelta(milliseconds=3)),
    ]
    if not framed:
        return halves
    return [(pid.encode(), exchange_frame(events.catalog, pid, halves[0][1], halves[1][1]))]


def produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "compression.type": "lz4"})
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise SystemExit("the broker did not take every message")


async def raw_baseline(bootstrap: str, topic: str, expected: int) -> float:
    """Messages/s of a bare aiokafka loop that decodes every event of every message."""
    from aiokafka import AIOKafkaConsumer

    catalog = default_catalog()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"bench-raw-{uuid.uuid4().hex[:6]}", enable_auto_commit=False)
    await consumer.start()
    seen = 0
    started = None
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    for event in events_in(catalog, record.value):
                        catalog.decode(event)
                    seen += 1
    finally:
        await consumer.stop()
    assert started is not None
    return seen / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CEILING_WORKER_FLAG = "--faust-ceiling-worker"


def faust_ceiling_worker() -> None:
    """Run a Faust worker whose agent only takes batches and forwards each event's key (step 4)."""
    import faust

    from provline.stream_processors.app import faust_app
    from provline.stream_processors.settings import ProcessorSettings

    settings = ProcessorSettings()
    topics = Topics(settings.topics.prefix)
    worker = settings.processors
    app = faust_app(settings)
    source = app.topic(topics.inference, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    out = Producer(settings.kafka.librdkafka(**{"linger.ms": 5}))

    @app.agent(source, name="forward")
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(worker.batch_size, within=worker.batch_within_s):
            for event in events:
                out.produce(topics.traces, key=event.message.key, value=b"")
            out.poll(0)

    faust.Worker(app, loglevel="warn").execute_from_commandline()


def start_worker(bootstrap: str, topics: Topics, workdir: Path, *, ceiling: bool = False
                 ) -> tuple[subprocess.Popen, int]:
    """A worker of the app ``<prefix>-processors`` (workers started with the same ``topics`` share it)."""
    web_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROVLINE_KAFKA__BOOTSTRAP": bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
           "PROVLINE_PROCESSORS__APP_ID": f"{topics.prefix}-processors",
           "PROVLINE_PROCESSORS__DATA_DIR": str(workdir / "data"), "PROVLINE_PROCESSORS__WEB_PORT": str(web_port),
           "PROVLINE_PROCESSORS__METRICS_PORT": str(free_port()), "PROVLINE_TOPICS__PARTITIONS": str(PARTITIONS)}
    log = (workdir / "worker.log").open("wb")
    command = [sys.executable, __file__, CEILING_WORKER_FLAG] if ceiling else [
        sys.executable, "-c", "from provline.stream_processors.app import run_worker\n"
        "from provline.stream_processors.settings import ProcessorSettings\n"
        "run_worker(ProcessorSettings(), loglevel='warn')"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the worker exited: {(workdir / 'worker.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not become ready in 60 s") from None
            time.sleep(0.2)
    return process, web_port


def stop_worker(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(process: subprocess.Popen) -> float:
    """User + system CPU seconds the process (all its threads) has used so far."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_members(bootstrap: str, group: str, members: int, timeout: float = 90.0) -> None:
    """Wait until ``group`` is stable with ``members`` members, each assigned partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            [description] = [future.result() for future in admin.describe_consumer_groups([group]).values()]
        except KafkaException:  # the coordinator is not known yet
            time.sleep(0.5)
            continue
        assigned = [m for m in description.members if m.assignment and m.assignment.topic_partitions]
        if str(description.state).endswith("STABLE") and len(assigned) == members:
            return
        time.sleep(0.5)
    raise SystemExit(f"consumer group {group} did not settle with {members} members in {timeout:.0f} s")


def trace_consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    return consumer


def measure_throughput(bootstrap: str, topics: Topics, messages: list[tuple[bytes, bytes]], predictions: int,
                       consumer: Consumer, what: str, workers: Sequence[subprocess.Popen] = ()
                       ) -> tuple[float, list[float]]:
    """Predictions/s from producing ``messages`` to the inference topic until every prediction's key
    was read from the traces topic; and each of ``workers``' CPU seconds per prediction meanwhile."""
    consumer.consume(1, 1.0)  # join the group before the clock starts
    cpu_before = [cpu_seconds(worker) for worker in workers]
    started = time.perf_counter()
    produce_all(bootstrap, topics.inference, messages)
    seen: set[bytes] = set()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(what, total=predictions)
        deadline = time.monotonic() + 600
        while len(seen) < predictions and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                key = message.key()
                if not message.error() and key is not None:
                    seen.add(key)
            progress.update(task, completed=len(seen))
    rate = len(seen) / (time.perf_counter() - started)
    cpu = [(cpu_seconds(worker) - before) / max(len(seen), 1) for worker, before in zip(workers, cpu_before,
                                                                                       strict=True)]
    return rate, cpu


def joined(bootstrap: str, prefix: str, workdir: Path, messages: list[tuple[bytes, bytes]], predictions: int,
           lineage_messages: list[tuple[bytes, bytes]], *, workers: int = 1, what: str
           ) -> tuple[float, list[float]]:
    """Throughput and CPU s/prediction per worker of ``workers`` join workers over ``messages``."""
    topics = Topics(prefix=prefix)
    create_topics(bootstrap, topics.all, partitions=PARTITIONS)
    produce_all(bootstrap, topics.lineage, lineage_messages)
    processes = [start_worker(bootstrap, topics, workdir / f"{prefix}-{n}")[0] for n in range(workers)]
    try:
        wait_for_members(bootstrap, f"{prefix}-processors", workers)
        consumer = trace_consumer(bootstrap, topics.traces)
        try:
            return measure_throughput(bootstrap, topics, messages, predictions, consumer, what, processes)
        finally:
            consumer.close()
    finally:
        for process in processes:
            stop_worker(process)


def measure_latency(bootstrap: str, topics: Topics, consumer: Consumer, events: Events, rate: float,
                    seconds: float) -> list[float]:
    """Seconds from each prediction's response time to its trace being read, producing at ``rate``/s."""
    total = int(rate * seconds)
    latencies: list[float] = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    response_times: dict[bytes, float] = {}
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"latency at {rate:,.0f} predictions/s", total=total)
        sent = 0
        while sent < total or len(latencies) < sent:
            due = min(total, int((time.perf_counter() - t0) * rate))
            while sent < due:
                at = utcnow()
                for key, value in prediction(events, sent, "l", at):
                    producer.produce(topics.inference, key=key, value=value)
                response_times[f"l-{sent}".encode()] = (at + timedelta(milliseconds=3)).timestamp()
                sent += 1
            producer.poll(0)
            for message in consumer.consume(1000, 0.01):
                received = message.key()
                if message.error() or received is None or received not in response_times:
                    continue
                latencies.append(time.time() - response_times.pop(received))
            progress.update(task, completed=len(latencies))
            if time.perf_counter() - t0 > seconds + 60:
                break
    producer.flush(10)
    return latencies


def encoded(events: Events, predictions: int, *, framed: bool) -> list[tuple[bytes, bytes]]:
    """The messages of ``predictions`` predictions, shuffled within small blocks."""
    rng = random.Random(1)
    now = utcnow()
    messages: list[tuple[bytes, bytes]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("encoding events", total=predictions)
        for index in range(predictions):
            messages += prediction(events, index, "t", now + timedelta(microseconds=index * 100), framed=framed)
            progress.advance(task)
    blocks = [messages[i:i + REORDER_WINDOW] for i in range(0, len(messages), REORDER_WINDOW)]
    for block in blocks:
        rng.shuffle(block)
    return [m for block in blocks for m in block]


def main() -> None:
    if sys.argv[1:] == [CEILING_WORKER_FLAG]:
        faust_ceiling_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=30_000)
    parser.add_argument("--rate-share", type=float, default=0.5, help="latency run rate, share of throughput")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    args = parser.parse_args()
    n = args.predictions

    workdir = Path(tempfile.mkdtemp(prefix="provline-bench-processors-"))
    broker = None
    bootstrap = os.environ.get("PROVLINE_KAFKA__BOOTSTRAP")
    if not bootstrap:
        console.print("starting a local Kafka broker…")
        broker = LocalKafka(workdir / "kafka").start()
        bootstrap = broker.bootstrap
    run = f"bench-{uuid.uuid4().hex[:6]}"
    events = Events()
    frames, halves = encoded(events, n, framed=True), encoded(events, n, framed=False)
    lineage_messages = lineage(events)
    process = None
    try:
        topics = Topics(prefix=f"{run}-one")
        create_topics(bootstrap, topics.all, partitions=PARTITIONS)
        produce_all(bootstrap, topics.lineage, lineage_messages)
        process, _ = start_worker(bootstrap, topics, workdir / "one")
        wait_for_members(bootstrap, f"{topics.prefix}-processors", 1)
        consumer = trace_consumer(bootstrap, topics.traces)
        one_rate, [one_cpu] = measure_throughput(bootstrap, topics, frames, n, consumer, "joining, one worker",
                                                 [process])
        rate = max(args.rate_share * one_rate, 1.0)
        latencies = measure_latency(bootstrap, topics, consumer, events, rate, args.latency_seconds)
        consumer.close()
        stop_worker(process)
        process = None

        console.print("raw aiokafka consume + decode over the same topic…")
        raw_rate = asyncio.run(raw_baseline(bootstrap, topics.inference, len(frames)))

        halves_rate, [halves_cpu] = joined(bootstrap, f"{run}-halves", workdir, halves, n, lineage_messages,
                                           what="joining separate halves")
        two_rate, two_cpu = joined(bootstrap, f"{run}-two", workdir, frames, n, lineage_messages, workers=2,
                                   what="joining, two workers")

        ceiling = Topics(prefix=f"{run}-ceiling")
        create_topics(bootstrap, ceiling.all, partitions=PARTITIONS)
        process, _ = start_worker(bootstrap, ceiling, workdir / "ceiling", ceiling=True)
        wait_for_members(bootstrap, f"{ceiling.prefix}-processors", 1)
        consumer = trace_consumer(bootstrap, ceiling.traces)
        ceiling_rate, _ = measure_throughput(bootstrap, ceiling, frames, n, consumer, "Faust ceiling")
        consumer.close()
    finally:
        if process is not None:
            stop_worker(process)
        if broker is not None:
            broker.stop()

    table = Table(title=f"processors, {n:,} predictions, {PARTITIONS} partitions, {os.cpu_count()} cores")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("raw aiokafka consume + decode of the frames (predictions/s)", f"{raw_rate:,.0f}")
    table.add_row("Faust ceiling: take + forward, no decode (predictions/s)", f"{ceiling_rate:,.0f}")
    table.add_row("joined predictions/s, one worker (exchange frames)", f"{one_rate:,.0f}")
    table.add_row("  share of the Faust ceiling", f"{one_rate / ceiling_rate:.2f}")
    table.add_row("  CPU µs per prediction", f"{one_cpu * 1e6:,.0f}")
    table.add_row("joined predictions/s, one worker (separate halves)", f"{halves_rate:,.0f}")
    table.add_row("  CPU µs per prediction", f"{halves_cpu * 1e6:,.0f}")
    table.add_row("joined predictions/s, two workers (exchange frames)", f"{two_rate:,.0f}")
    table.add_row("  ratio to one worker", f"{two_rate / one_rate:.2f}")
    table.add_row("  CPU µs per prediction, each worker", " / ".join(f"{cpu * 1e6:,.0f}" for cpu in two_cpu))
    table.add_row("  CPU µs per prediction, both workers", f"{sum(two_cpu) * 1e6:,.0f}")
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        table.add_row(f"event-to-trace latency p50 at {rate:,.0f}/s", f"{p50 * 1000:,.0f} ms")
        table.add_row(f"event-to-trace latency p99 at {rate:,.0f}/s", f"{p99 * 1000:,.0f} ms")
        table.add_row("latency samples", f"{len(latencies):,}")
    console.print(table)


if __name__ == "__main__":
    main()
