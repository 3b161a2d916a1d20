"""Benchmark: the sink's insert path against a baseline, and trace lookups at 10 million predictions.

    .venv/bin/python bench/sink.py                          # 200,000 events, 10,000,000 predictions
    .venv/bin/python bench/sink.py --events 50000 --predictions 1000000
    .venv/bin/python bench/sink.py --only write             # one of the two parts

Broker (write part): PROVLINE_KAFKA__BOOTSTRAP, else a local KRaft broker started for the run
(deploy/local/kafka).

1. Write throughput, in ``--rounds`` rounds (medians printed; the machine may be shared). The same
   encoded events (half InferenceRequest, half PredictionTrace, as the Kafka messages carry them)
   go into ClickHouse (chDB, in process) three times, in batches of ``--batch`` events:
   - the sink path does what ``SinkWriter.process_batch`` does between consume and commit (frame
     each kind's messages into an Avro container and insert it; ClickHouse decodes, validates,
     writes the rows, the ledger, the prediction index and the served edges);
   - the baseline inserts the same rows, fetched back as Python values beforehand, into plain
     tables (one insert per table and batch: pure ClickHouse cost, no views);
   - from Kafka: the events are produced to the broker (lz4, as provline's producers send them),
     then a real ``SinkWriter`` (the sink's settings but ``--batch`` and ``--insert-threads``)
     consumes, frames, inserts and commits them, as a sink catching up does: rows/s from the
     commit of its first batch to the commit of its last, as the group's committed offsets show
     them (the batches in between each consumed, framed, inserted and committed in that time;
     group start-up is left out).
   Printed: rows/s of each, and each sink measure's ratio to the baseline of the same round.
2. Trace lookup. ``--predictions`` predictions are generated inside ClickHouse (INSERT ... SELECT FROM
   numbers()), each with its trace, request and response (every tenth with feedback), chained rows
   carrying real events' bytes, and their ledger rows; the registry they name (model versions,
   training run, dataset, feature set, evaluations, approvals, deployments) is stored through the
   sink's own path. Then, for random prediction ids, interleaved: the baseline (a bare one-granule
   lookup of prediction_traces), ``provline trace``'s lookups before issue 18 (sink.queries.trace,
   with a registry cache, as the API holds one) and the complete trace the API answers now
   (sink.queries.complete_trace: the chain of custody, every record decoded and verified). Printed:
   p50/p99 latency of the three, in the same run, and the granules each point lookup reads
   (EXPLAIN indexes=1). Issue 18's budget for the complete trace: p50 <= 5 ms, p99 <= 20 ms at 10 M.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clickhouse_connect.driver.client import Client  # noqa: E402
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402

from deploy.local.kafka import LocalKafka, create_topics  # noqa: E402
from provline.schemas import Topics, default_catalog, key_for, new_envelope, producer_identity  # noqa: E402
from provline.schemas.integrity import HashChain  # noqa: E402
from provline.sink import queries  # noqa: E402
from provline.sink.chain import check_row  # noqa: E402
from provline.sink.ingest import LEDGER_COLUMNS, LEDGER_TABLE, VIEW_PREFIX, ledger_rows_of  # noqa: E402
from provline.sink.settings import DEFAULT_BATCH_MAX_EVENTS, DEFAULT_INSERT_THREADS, ServeSettings  # noqa: E402
from provline.sink.store import migrate, open_store  # noqa: E402
from provline.sink.verify import Trust  # noqa: E402
from provline.sink.writer import SinkWriter, insert_plan, plan_batch, source_topics  # noqa: E402
from tests.helpers import StoredMessage  # noqa: E402

console = Console()
PARTITIONS = 4
TOPIC_OF_KIND = {"InferenceRequest": "inference", "PredictionTrace": "traces"}  # Topics attribute per kind
DRAIN_TIMEOUT_S = 600.0
COMMIT_POLL_S = 0.02  # how often the group's commits are looked at: the clock's resolution


def make_messages(count: int, progress: Progress) -> list[StoredMessage]:
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
        value = {**new_envelope(producer), **fields}
        raw = catalog.header(kind) + chain.seal_encode(kind, value)
        messages.append(StoredMessage(kind, 0, number, raw, key_for(kind, value).encode()))
        if number % 5000 == 0:
            progress.update(task, completed=number)
    progress.update(task, completed=count)
    return messages


def write_throughput(
    client: Client, store_url: str, messages: list[StoredMessage], batch: int, insert_threads: int, round_: int,
    progress: Progress,
) -> tuple[float, float]:
    """(baseline rows/s, sink path rows/s) of one round, in databases of its own."""
    catalog = default_catalog()
    batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    base, sink_db = f"bench_base_{round_}", f"bench_sink_{round_}"
    for database in (base, sink_db):
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        client.database = database
        migrate(client)
    # The baseline's tables are plain: no ingest views, nothing derived on insert.
    for (view,) in client.query(f"SELECT name FROM system.tables WHERE database = '{base}' "
                                f"AND startsWith(name, '{VIEW_PREFIX}')").result_rows:
        client.command(f"DROP VIEW {base}.{view}")

    client.database = sink_db
    more_clients = [open_store(store_url) for _ in range(insert_threads - 1)]
    for extra in more_clients:
        extra.database = sink_db
    task = progress.add_task("sink: frame, insert (ClickHouse decodes and derives)", total=len(batches))
    start = time.perf_counter()
    for chunk in batches:
        assert insert_plan(client, plan_batch(chunk, catalog), catalog, more_clients=more_clients) == []
        progress.advance(task)
    sink = len(messages) / (time.perf_counter() - start)
    stored = client.query("SELECT count() FROM prediction_traces").result_rows[0][0]
    assert stored == len(messages) // 2, (stored, len(messages))

    # Baseline: the rows the sink stored, fetched as Python values (not timed), inserted in the same
    # batches with the same parallelism (a table per connection).
    tables = {}
    for table in ("inference_requests", "prediction_traces"):
        result = client.query(f"SELECT * FROM {table} ORDER BY kafka_offset")
        tables[table] = (result.column_names, result.result_rows)
    clients = [client, *more_clients]
    for each in clients:
        each.database = base
    per_batch = batch // len(tables)
    task = progress.add_task("baseline: insert pre-decoded rows", total=len(batches))

    def insert_rows(each: Client, table: str, first: int) -> None:
        columns, rows = tables[table]
        each.insert(table, rows[first:first + per_batch], column_names=list(columns))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        for first in range(0, len(messages) // len(tables), per_batch):
            jobs = [pool.submit(insert_rows, clients[i % len(clients)], table, first) for i, table in enumerate(tables)]
            for job in jobs:
                job.result()
            progress.advance(task)
    baseline = len(messages) / (time.perf_counter() - start)
    for extra in more_clients:
        extra.close()
    return baseline, sink


def committed_events(watcher: Consumer, partitions: list[TopicPartition]) -> int | None:
    """How many events the group has committed on ``partitions`` (offsets start at 0); None while the
    broker cannot tell (its group coordinator is still loading)."""
    try:
        return sum(max(found.offset, 0) for found in watcher.committed(partitions, timeout=10))
    except KafkaException:
        return None


def produce(bootstrap: str, topics: Topics, messages: Sequence[StoredMessage]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4",
                         "enable.idempotence": True, "acks": "all"})
    for message in messages:
        topic = getattr(topics, TOPIC_OF_KIND[message.topic()])
        while True:
            try:
                producer.produce(topic, value=message.value(), key=message.key())
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(60):
        raise SystemExit("the broker did not take every message")


def from_kafka(
    client: Client, store_url: str, bootstrap: str, messages: list[StoredMessage], batch: int, insert_threads: int,
    round_: int, progress: Progress,
) -> float:
    """Rows/s of a real SinkWriter reading events waiting in Kafka (a sink catching up); blocks.

    Measured from the commit of its first batch to the commit of its last, as the group's committed
    offsets show them, over the rows of the batches after the first: each of them consumed, framed,
    inserted and committed in that time, and neither group start-up nor producing the events is in it.
    """
    topics = Topics(prefix=f"bench-sink-{uuid.uuid4().hex[:6]}")
    create_topics(bootstrap, source_topics(topics), partitions=PARTITIONS)
    produce(bootstrap, topics, messages)
    database = f"bench_kafka_{round_}"
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.database = database
    migrate(client)
    more_clients = [open_store(store_url) for _ in range(insert_threads - 1)]
    for extra in more_clients:
        extra.database = database
    settings = ServeSettings(
        kafka={"bootstrap": bootstrap}, topics={"prefix": topics.prefix},
        sink={"consumer_group": f"{topics.prefix}-sink", "batch_max_events": batch, "insert_threads": insert_threads},
    )
    writer = SinkWriter(settings, client, insert_clients=more_clients)
    # Watches the group's commits from outside: a consumer of the group that never joins it.
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.sink.consumer_group,
                        "enable.auto.commit": False})
    partitions = [TopicPartition(getattr(topics, name), number) for name in TOPIC_OF_KIND.values()
                  for number in range(PARTITIONS)]
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), name="bench-sink-writer")
    task = progress.add_task("from Kafka: consume, frame, insert, commit", total=len(messages))
    commits: list[tuple[float, int]] = []  # (when seen, events committed), at each change
    thread.start()
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not commits or commits[-1][1] < len(messages):
            if time.monotonic() > deadline or not thread.is_alive():
                raise SystemExit(f"the sink committed {commits[-1][1] if commits else 0:,} of {len(messages):,} "
                                 f"events in {DRAIN_TIMEOUT_S:.0f} s")
            committed = committed_events(watcher, partitions)
            if committed and (not commits or committed > commits[-1][1]):
                commits.append((time.perf_counter(), committed))
                progress.update(task, completed=committed)
            time.sleep(COMMIT_POLL_S)
    finally:
        stop.set()
        thread.join()
        watcher.close()
        for extra in more_clients:
            extra.close()
    if len(commits) < 3:
        raise SystemExit(f"{len(commits)} commits are too few to time; raise --events or lower --batch")
    (first, first_events), (last, _) = commits[0], commits[-1]
    stored = client.query("SELECT count() FROM prediction_traces").result_rows[0][0]
    assert stored == len(messages) // 2, (stored, len(messages))
    return (len(messages) - first_events) / (last - first)


def write_rounds(
    client: Client, store_url: str, bootstrap: str, args: argparse.Namespace, progress: Progress
) -> dict[str, list[float]]:
    """Per measure (baseline, sink, kafka), its rows/s in each round."""
    messages = make_messages(args.events, progress)
    rounds: dict[str, list[float]] = {"baseline": [], "sink": [], "kafka": []}
    for round_ in range(args.rounds):
        baseline, sink = write_throughput(
            client, store_url, messages, args.batch, args.insert_threads, round_, progress)
        kafka = from_kafka(client, store_url, bootstrap, messages, args.batch, args.insert_threads, round_, progress)
        for name, rate in (("baseline", baseline), ("sink", sink), ("kafka", kafka)):
            rounds[name].append(rate)
        for database in ("base", "sink", "kafka"):  # their merges would run into the next round
            client.command(f"DROP DATABASE IF EXISTS bench_{database}_{round_} SYNC")
    return rounds


# Per prediction, as the sidecar and the processors store them: a trace, a request and a response, and
# ground truth for every tenth. Each row carries the bytes of a real event of its kind (one per model
# version, {raw_*}) with the row's own event id, hash and previous hash spliced in, and a hash chained to
# the row before it, so that the complete trace decodes, hashes, checks signatures and looks up chain
# links as it does in production, and the bytes differ from row to row where real events' do (identical
# bytes compress to nothing, and made every lookup's read look cheaper than it is: about 1.5 times for a
# granule of random bytes). The bytes do not hash to their hash: those records come out not_verified, at
# the same cost.
CHAINED = ("hex(SHA256(concat('{tag}', toString(number)))) AS hash, "
           "if(number = 0, NULL, hex(SHA256(concat('{tag}', toString(number - 1))))) AS prev_hash")
GENERATE_TRACES = """
INSERT INTO prediction_traces (event_id, event_time, producer_name, producer_session, hash, prev_hash,
    prediction_id, endpoint, complete, model_name, model_version, request_sha256, artifact_sha256, training_run_id,
    dataset_digests, payload, raw, kafka_topic, kafka_partition, kafka_offset)
SELECT
    generateUUIDv7()                                            AS event_id,
    now64(6, 'UTC') - toIntervalSecond(number % 2592000)        AS event_time,
    'bench-sidecar', 'bench-serving', {chained},
    concat('pred-', toString(number))                           AS prediction_id,
    '/predict', true, 'churn', toString(number % 5), repeat('b', 64), repeat('a', 64), 'run-7', ['sha256:d1'],
    concat('{{"event_id":"', toString(event_id), '","hash":"', hash, '","prev_hash":"', ifNull(prev_hash, ''), '",',
           '"event_time":"2025-01-01T00:00:00+00:00","endpoint":"/predict","complete":true,',
           '"model_name":"churn","model_version":"', toString(number % 5), '","training_run_id":"run-7",',
           '"feature_sets":["sha256:fs1"]}}'),
    [{raw_trace}][number % 5 + 1], 'bench', 0, number
FROM numbers({start}, {count})
"""
# One request per prediction, as the sidecar emits them: trace() looks each up too.
GENERATE_REQUESTS = """
INSERT INTO inference_requests (event_id, event_time, producer_name, producer_session, hash, prev_hash,
    prediction_id, endpoint, model_name, model_version, body_sha256, client_id, payload, raw, kafka_topic,
    kafka_partition, kafka_offset)
SELECT
    generateUUIDv7() AS event_id, now64(6, 'UTC') - toIntervalSecond(number % 2592000),
    'bench-sidecar', 'bench-serving', {chained}, concat('pred-', toString(number)),
    '/predict', 'churn', toString(number % 5), repeat('b', 64), NULL, '{{}}', {raw_request}, 'bench', 0, number
FROM numbers({start}, {count})
"""
GENERATE_RESPONSES = """
INSERT INTO inference_responses (event_id, event_time, producer_name, producer_session, hash, prev_hash,
    prediction_id, endpoint, status, model_name, model_version, body_sha256, latency_us, payload, raw, kafka_topic,
    kafka_partition, kafka_offset)
SELECT
    generateUUIDv7() AS event_id, now64(6, 'UTC') - toIntervalSecond(number % 2592000),
    'bench-sidecar', 'bench-serving', {chained}, concat('pred-', toString(number)),
    '/predict', 200, 'churn', toString(number % 5), repeat('c', 64), 1500, '{{}}', {raw_response}, 'bench', 0, number
FROM numbers({start}, {count})
"""
GENERATE_FEEDBACK = """
INSERT INTO feedback (event_id, event_time, producer_name, producer_session, hash, prev_hash, prediction_id, label,
                      outcome, source, payload, raw, kafka_topic, kafka_partition, kafka_offset)
SELECT
    generateUUIDv7() AS event_id, now64(6, 'UTC') - toIntervalSecond(number % 2592000),
    'bench-feedback', 'bench-feedback', {chained}, concat('pred-', toString(number)),
    'churned', NULL, 'crm', '{{}}', {raw_feedback}, 'bench', 0, number
FROM numbers({start}, {count}) WHERE number % 10 = 0
"""
GENERATED = (("prediction_traces", GENERATE_TRACES), ("inference_requests", GENERATE_REQUESTS),
             ("inference_responses", GENERATE_RESPONSES), ("feedback", GENERATE_FEEDBACK))


def registry_events() -> list[bytes]:
    """The registry side, as a training job sends it (stored through the sink's own path): the five model
    versions the predictions name, their training run (started, then completed), its dataset and feature
    set, an evaluation and an approval per version, and a deployment per version each replacing the last."""
    catalog = default_catalog()
    chain = HashChain(catalog)
    producer = producer_identity("bench-registry", "bench-registry")
    events: list[tuple[str, dict[str, Any]]] = [
        ("DatasetVersion", {"name": "train", "digest": "sha256:d1", "license": "CC-BY-4.0", "pii_tags": ["email"]}),
        ("FeatureSetVersion", {"name": "churn", "digest": "sha256:fs1", "input_datasets": ["sha256:d1"],
                               "features": [{"name": "age", "dtype": "float", "parameters": {},
                                             "code": {"repo": "git@example:ml.git", "commit": "c0ffee",
                                                      "path": "f.py", "symbol": "age"}}]}),
        ("RunEvent", {"run_id": "run-7", "name": "train", "state": "STARTED", "inputs": ["sha256:d1"],
                      "code": {"repo": "git@example:ml.git", "commit": "c0ffee", "dirty": False},
                      "environment": {"python": "3.11.9", "packages_sha256": "9" * 64},
                      "hyperparameters": {"lr": "0.1"}, "seeds": {"numpy": 7}}),
        ("RunEvent", {"run_id": "run-7", "name": "train", "state": "COMPLETED", "inputs": ["sha256:d1"]}),
    ]
    for version in range(5):
        events += [
            ("ModelVersion", {"model_name": "churn", "version": str(version), "artifact_uri": f"s3://m/{version}",
                              "artifact_sha256": "a" * 64, "run_id": "run-7", "datasets": ["sha256:d1"],
                              "feature_sets": ["sha256:fs1"]}),
            ("Evaluation", {"model_name": "churn", "model_version": str(version), "passed": True,
                            "metrics": [{"name": "auc", "value": 0.9, "threshold": 0.85, "passed": True}]}),
            ("Decision", {"subject": f"model:churn@{version}", "transition": "staging->production",
                          "outcome": "APPROVED", "actor": "rita", "role": "risk"}),
            ("Deployment", {"model_name": "churn", "model_version": str(version), "environment": "prod",
                            "endpoint": "/predict", "action": "PROMOTE"}),
        ]
    return [catalog.header(kind) + chain.seal_encode(kind, {**new_envelope(producer), **fields})
            for kind, fields in events]


def sample_raws() -> dict[str, str]:
    """SQL expressions of one real event per generated kind, the row's own id and hashes spliced into its bytes:
    ``raw_trace`` an array, one per model version."""
    catalog = default_catalog()
    chain = HashChain(catalog)
    producer = producer_identity("bench-sidecar", "bench-serving")

    def literal(kind: str, fields: dict[str, Any]) -> str:
        value = {**new_envelope(producer), **fields}
        raw = catalog.header(kind) + chain.seal_encode(kind, value)
        # the row's own id and hashes in place of the sample's: the same lengths, so the bytes still decode
        expression = f"replaceOne(unhex('{raw.hex()}'), '{value['event_id']}', toString(event_id))"
        expression = f"replaceOne({expression}, '{value['hash']}', hash)"
        if value["prev_hash"]:
            expression = f"replaceOne({expression}, '{value['prev_hash']}', ifNull(prev_hash, '{value['prev_hash']}'))"
        return expression

    body = b'{"age": 41, "income": 52000.5, "city": "Oslo", "member": true}'
    traces = [literal("PredictionTrace", {
        "prediction_id": "pred-x", "endpoint": "/predict", "complete": True, "model_name": "churn",
        "model_version": str(version), "artifact_sha256": "a" * 64, "training_run_id": "run-7",
        "dataset_digests": ["sha256:d1"], "feature_sets": ["sha256:fs1"], "status": 200,
        "features": {"age": 41.0, "income": 52000.5}, "outputs": {"churn": 0.7}}) for version in range(5)]
    return {
        "raw_trace": ", ".join(traces),
        "raw_request": literal("InferenceRequest", {
            "prediction_id": "pred-x", "endpoint": "/predict", "method": "POST", "path": "/predict",
            "body_size": len(body), "body_sha256": "b" * 64, "body": body, "body_truncated": False}),
        "raw_response": literal("InferenceResponse", {
            "prediction_id": "pred-x", "endpoint": "/predict", "status": 200, "body_size": 14,
            "body_sha256": "c" * 64, "body": b'{"churn": 0.7}', "latency_us": 1500}),
        "raw_feedback": literal("Feedback", {"prediction_id": "pred-x", "label": "churned", "source": "crm",
                                             "observed_time": datetime.now(UTC)}),
    }


# The point lookups trace.sql makes, one per table, for EXPLAIN: each must read about one granule.
LOOKUPS = {
    "prediction_traces": "SELECT * FROM prediction_traces WHERE prediction_id = {p:String}",
    "inference_requests": "SELECT * FROM inference_requests WHERE prediction_id = {p:String}",
    "model_versions": "SELECT * FROM model_versions WHERE model_name = 'churn' AND model_version = '3'",
    "run_events": "SELECT * FROM run_events WHERE run_id = 'run-7'",
}
# Every node kind of a complete trace the generated predictions have (ground truth: every tenth has it).
CHAIN_KINDS = {"prediction", "model", "run", "commit", "environment", "dataset", "feature_set", "evaluation",
               "approval", "deployment"}
TRUST = Trust()  # no trusted keys: the generated events are not signed


def chain_granules(client: Client, prediction_id: str) -> dict[str, tuple[int, int]]:
    """Granules read / total of the complete trace's queries (each table's read, summed), by EXPLAIN; the
    registry's (and its ledger lookups, alike) are cached per model version."""
    rows = queries.prediction_records(client, prediction_id)
    own = [check_row(default_catalog(), TRUST, row) for row in rows]
    trace_value = next((r.value for r in own if r.kind == "PredictionTrace"), None)
    parameters = queries.registry_parameters(trace_value or {}) or {}
    statements = {
        "chain_prediction.sql (the prediction's records)": (queries.chain_sql("chain_prediction.sql"),
                                                            {"prediction_id": prediction_id}),
        "chain_registry.sql (the registry's, cached)": (queries.chain_sql("chain_registry.sql"), parameters),
        "chain_ledger.sql (the prediction's, by id and link)": (queries.chain_sql("chain_ledger.sql"), {
            "event_ids": sorted({r.event_id for r in own}),
            "links": sorted({(r.session, r.prev_hash) for r in own if r.prev_hash}),
            "tables": list(queries.REGISTRY_TABLES)}),
    }
    granules_read = {}
    for name, (sql, values) in statements.items():
        explain = "\n".join(row[0] for row in client.query(f"EXPLAIN indexes = 1 {sql}",
                                                           parameters=values).result_rows)
        read = total = 0
        for chunk in explain.split("ReadFromMergeTree")[1:]:
            counts = re.findall(r"Granules: (\d+)/(\d+)", chunk)
            if counts:
                read, total = read + int(counts[-1][0]), total + int(counts[-1][1])
        granules_read[name] = (read, total)
    return granules_read


# Baseline: the cheapest way to fetch one stored trace, a bare one-granule lookup of one table.
BARE_LOOKUP = (
    "SELECT event_id, payload FROM prediction_traces WHERE prediction_id = {p:String} "
    "ORDER BY event_time DESC, event_id DESC LIMIT 1"
)


def granules(client: Client, sql: str, prediction_id: str) -> tuple[int, int]:
    explain = "\n".join(row[0] for row in client.query(
        f"EXPLAIN indexes = 1 {sql}", parameters={"p": prediction_id}).result_rows)
    found = re.findall(r"Granules: (\d+)/(\d+)", explain)
    return (int(found[-1][0]), int(found[-1][1])) if found else (-1, -1)


def percentiles(latencies: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies, 50) * 1000), float(np.percentile(latencies, 99) * 1000)


def lookup_latency(client: Client, predictions: int, samples: int, progress: Progress) -> dict[str, Any]:
    client.command("CREATE DATABASE IF NOT EXISTS bench_lookup")
    client.database = "bench_lookup"
    migrate(client)
    task = progress.add_task(f"generating {predictions:,} predictions (trace, request, response, a tenth "
                             "with feedback) in ClickHouse", total=predictions)
    step = 1_000_000
    raws = sample_raws()
    for start in range(0, predictions, step):
        count = min(step, predictions - start)
        for table, statement in GENERATED:
            client.command(statement.format(start=start, count=count, chained=CHAINED.format(tag=table), **raws))
        progress.update(task, completed=start + count)
    for table, _ in GENERATED:  # what the ledger views record for events the sink stores
        client.command(f"INSERT INTO {LEDGER_TABLE} ({LEDGER_COLUMNS}) {ledger_rows_of(table, '1')}")
    registry_catalog = default_catalog()
    plan = plan_batch([StoredMessage("registry", 0, n, raw) for n, raw in enumerate(registry_events())],
                      registry_catalog)
    assert not plan.dead_letters and insert_plan(client, plan, registry_catalog) == []
    for table in ("prediction_traces", "inference_requests", "inference_responses", "feedback", LEDGER_TABLE):
        client.command(f"OPTIMIZE TABLE {table} FINAL")
    catalog = default_catalog()
    rng = random.Random(7)
    ids = [f"pred-{rng.randrange(predictions)}" for _ in range(samples)]
    registry = queries.RegistryCache()  # as the API holds one
    chains = queries.ChainCache()  # likewise
    queries.trace(client, ids[0], registry)  # warm caches, as a running service has them
    queries.complete_trace(client, ids[0], registry, catalog=catalog, trust=TRUST, chains=chains)
    task = progress.add_task("trace lookups by prediction id (bare baseline, trace, complete trace)", total=samples)
    bare: list[float] = []
    full: list[float] = []
    chain: list[float] = []
    for prediction_id in ids:  # interleaved, so that both see the same machine load
        began = time.perf_counter()
        bare_rows = client.query(
            BARE_LOOKUP, parameters={"p": prediction_id}, settings=queries.TRACE_SETTINGS
        ).result_rows
        bare.append(time.perf_counter() - began)
        assert len(bare_rows) == 1, prediction_id
        began = time.perf_counter()
        found = queries.trace(client, prediction_id, registry)
        full.append(time.perf_counter() - began)
        assert found is not None and found["prediction_id"] == prediction_id, prediction_id
        assert found["code_commit"] == "c0ffee" and found["sources"]["request"], found
        began = time.perf_counter()
        complete = queries.complete_trace(client, prediction_id, registry, catalog=catalog, trust=TRUST,
                                          payloads=True, chains=chains)
        chain.append(time.perf_counter() - began)
        assert complete is not None and {n["kind"] for n in complete["chain"]["nodes"]} == CHAIN_KINDS, complete
        progress.advance(task)
    stored = client.query("SELECT count() FROM prediction_traces").result_rows[0][0]
    return {
        "bare": percentiles(bare), "trace": percentiles(full), "complete": percentiles(chain), "stored": stored,
        "granules": {table: granules(client, sql, ids[0]) for table, sql in LOOKUPS.items()},
        "chain_granules": chain_granules(client, ids[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH_MAX_EVENTS, help="events per batch (sink default)")
    parser.add_argument("--insert-threads", type=int, default=DEFAULT_INSERT_THREADS,
                        help="store connections inserting in parallel (sink default)")
    parser.add_argument("--rounds", type=int, default=3, help="write-part rounds; medians are printed")
    parser.add_argument("--predictions", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--only", choices=("write", "lookup"), help="run one of the two parts")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="provline-bench-sink-"))
    broker = None
    client = open_store(f"chdb://{workdir}/store")
    try:
        with Progress(console=console, transient=True) as progress:
            write = lookup = None
            if args.only != "lookup":
                bootstrap = os.environ.get("PROVLINE_KAFKA__BOOTSTRAP")
                if not bootstrap:
                    console.print("starting a local Kafka broker…")
                    broker = LocalKafka(workdir / "kafka").start()
                    bootstrap = broker.bootstrap
                write = write_rounds(client, f"chdb://{workdir}/store", bootstrap, args, progress)
            if args.only != "write":
                lookup = lookup_latency(client, args.predictions, args.samples, progress)
    finally:
        client.close()
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title="provline sink")
    table.add_column("measure")
    table.add_column("value", justify="right")
    if write is not None:
        print_write(table, write, args)
    if lookup is not None:
        print_lookup(table, lookup)
    console.print(table)


def print_write(table: Table, rounds: dict[str, list[float]], args: argparse.Namespace) -> None:
    def median(name: str) -> float:
        return statistics.median(rounds[name])

    def ratio(name: str) -> str:  # the median of the per-round ratios: each against its own round's baseline
        ratios = [rate / base for rate, base in zip(rounds[name], rounds["baseline"], strict=True)]
        return f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"

    table.add_row(f"event rows written per measure, in batches of {args.batch:,}, {args.insert_threads} insert "
                  f"threads; medians of {args.rounds} rounds", f"{args.events:,}")
    table.add_row("baseline: pre-decoded rows inserted, rows/s", f"{median('baseline'):,.0f}")
    table.add_row("sink path: frame + insert (decoded and derived in ClickHouse), rows/s", f"{median('sink'):,.0f}")
    table.add_row("sink path / baseline (each round)", ratio("sink"))
    table.add_row("sink from Kafka: consume, frame, insert, commit, rows/s", f"{median('kafka'):,.0f}")
    table.add_row("sink from Kafka / baseline (each round)", ratio("kafka"))


def print_lookup(table: Table, lookup: dict[str, Any]) -> None:
    table.add_row("stored predictions (each with its request and response; a tenth with feedback)",
                  f"{lookup['stored']:,}")
    (bare50, bare99), (trace50, trace99) = lookup["bare"], lookup["trace"]
    table.add_row("baseline: bare one-granule lookup p50 / p99, ms", f"{bare50:.2f} / {bare99:.2f}")
    table.add_row("trace(): 2 point lookups + cached registry, p50 / p99, ms", f"{trace50:.2f} / {trace99:.2f}")
    table.add_row("trace / bare lookup, p50", f"{trace50 / bare50:.2f}")
    complete50, complete99 = lookup["complete"]
    table.add_row("complete trace (chain of custody, every record verified, cached registry), p50 / p99, ms "
                  "(budget 5 / 20)", f"{complete50:.2f} / {complete99:.2f}")
    table.add_row("complete trace / bare lookup, p50", f"{complete50 / bare50:.2f}")
    for name, (read, total) in {**lookup["granules"], **lookup["chain_granules"]}.items():
        table.add_row(f"granules read / total: {name}", f"{read} / {total}")


if __name__ == "__main__":
    main()
