"""Crash test: the sink is SIGKILLed at random points ten times while events flow; afterwards every
event is stored exactly once (physically: no duplicate rows, without FINAL).

chDB hosts one engine per process and this test process already hosts the session's store, so the
sink runs as a subprocess on its own chDB directory, and the store is read afterwards by another
subprocess once the last sink has stopped.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from provline.schemas import Topics, default_catalog, key_for, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.sink.writer import IN_FLIGHT_PREFIX, source_topics
from tests.helpers import seal

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("TEST_CRASH_EVENTS", "100000"))
KILLS = 10
PRODUCE_SECONDS = 25.0  # events keep arriving through (about) all ten kills
DEADLINE_SECONDS = float(os.environ.get("TEST_CRASH_DEADLINE", "240"))
ROOT = Path(__file__).parents[2]

SINK = """
import signal, threading
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.writer import SinkWriter
settings = ServeSettings()
client = open_store(settings.store.url)
migrate(client)
more = [open_store(settings.store.url) for _ in range(settings.sink.insert_threads - 1)]  # parallel inserts
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
SinkWriter(settings, client, insert_clients=more).run(stop)
client.close()
"""

COUNT = """
import json, sys
from provline.sink.rows import TABLES
from provline.sink.store import open_store
client = open_store(sys.argv[1])
out = {}
for spec in TABLES.values():
    rows = client.query(f"SELECT event_id FROM {spec.table}").result_rows  # no FINAL: physical rows
    out[spec.table] = [row[0] for row in rows]
out["ledger"] = dict(client.query("SELECT event_table, uniqExact(event_id) FROM event_ledger GROUP BY 1").result_rows)
out["lineage_edges"] = client.query("SELECT count() FROM lineage_edges FINAL").result_rows[0][0]
out["prediction_index"] = client.query("SELECT count() FROM prediction_index FINAL").result_rows[0][0]
client.close()
json.dump(out, sys.stdout)
"""


def make_events(count: int) -> list[tuple[str, str, bytes, bytes]]:
    """(kind, event_id, key, value) of sealed events: requests and traces, with a few lineage events."""
    catalog = default_catalog()
    chain = HashChain(catalog)
    producer = producer_identity("crash-test", f"crash-{uuid.uuid4().hex[:8]}")
    out = []
    for number in range(count):
        prediction_id = f"p-{number}"
        if number % 1000 == 0:
            kind, fields = "ModelVersion", {"model_name": "m", "version": str(number), "artifact_uri": "s3://m",
                                            "artifact_sha256": "a" * 64, "run_id": f"run-{number}",
                                            "datasets": ["sha256:d"]}
        elif number % 2:
            kind, fields = "InferenceRequest", {"prediction_id": prediction_id, "endpoint": "/p", "method": "POST",
                                                "path": "/p", "body_size": 2, "body_sha256": "b" * 64,
                                                "body": b"{}", "body_truncated": False}
        else:
            kind, fields = "PredictionTrace", {"prediction_id": prediction_id, "endpoint": "/p", "complete": True,
                                               "model_name": "m", "model_version": "0"}
        value = seal(chain, kind, {**new_envelope(producer), **fields})
        out.append((kind, value["event_id"], key_for(kind, value).encode(), catalog.encode(kind, value)))
    return out


def produce_steadily(bootstrap: str, topics: Topics, events: list[tuple[str, str, bytes, bytes]],
                     seconds: float, done: threading.Event, failures: list[BaseException]) -> None:
    try:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                             "linger.ms": 20})
        chunks = 50
        size = -(-len(events) // chunks)
        for start in range(0, len(events), size):
            for kind, _, key, value in events[start:start + size]:
                while True:
                    try:
                        producer.produce(topics.for_kind(kind), key=key, value=value)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            time.sleep(seconds / chunks)
        assert producer.flush(60) == 0
    except BaseException as exc:  # surfaced in the test thread
        failures.append(exc)
    finally:
        done.set()


def committed(bootstrap: str, group: str, topics: Topics) -> dict[tuple[str, int], tuple[int, str]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        metadata = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p) for t in source_topics(topics) for p in metadata.topics[t].partitions]
        deadline = time.monotonic() + 30
        while True:
            try:
                found = consumer.committed(partitions, timeout=10)
                break
            except KafkaException:  # the group coordinator of a new group may still be loading
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return {(tp.topic, tp.partition): (tp.offset, tp.metadata or "") for tp in found}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topics: Topics) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    try:
        metadata = consumer.list_topics(timeout=10)
        return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                for t in source_topics(topics) for p in metadata.topics[t].partitions}
    finally:
        consumer.close()


def progress(offsets: dict[tuple[str, int], tuple[int, str]]) -> int:
    return sum(max(offset, 0) for offset, _ in offsets.values())


def run_sink_until_caught_up(env: dict[str, str], bootstrap: str, group: str, topics: Topics,
                             target: dict[tuple[str, int], int], deadline: float) -> None:
    """Run one last sink until its group has committed up to ``target``, then stop it cleanly (SIGTERM)."""
    sink = subprocess.Popen([sys.executable, "-c", SINK], env=env, cwd=ROOT)
    try:
        while any(max(offset, 0) < target[position]
                  for position, (offset, _) in committed(bootstrap, group, topics).items()):
            assert sink.poll() is None, "the last sink exited on its own"
            assert time.monotonic() < deadline, "the last sink did not catch up"
            time.sleep(0.1)  # polling interval
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def test_sink_killed_ten_times_stores_every_event_exactly_once(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path,
) -> None:
    rng = random.Random(os.environ.get("TEST_SEED", "6"))
    events = make_events(EVENTS)
    group = f"sink-crash-{uuid.uuid4().hex[:6]}"
    store = f"chdb://{tmp_path / 'store'}"
    env = {
        **os.environ, "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
        "PROVLINE_STORE__URL": store, "PROVLINE_SINK__CONSUMER_GROUP": group,
        "PROVLINE_SINK__BATCH_MAX_EVENTS": "2000", "PROVLINE_SINK__BATCH_MAX_S": "0.2",
        # static membership: each restarted sink takes its partitions back without a rebalance wait
        "PROVLINE_SINK__CONSUMER_INSTANCE_ID": "crash-sink", "PROVLINE_KAFKA__SESSION_TIMEOUT_S": "10",
    }
    done, failures = threading.Event(), []
    producer = threading.Thread(target=produce_steadily,
                                args=(kafka_bootstrap, topics, events, PRODUCE_SECONDS, done, failures))
    producer.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    saw_in_flight = 0
    try:
        for _ in range(KILLS):
            before = progress(committed(kafka_bootstrap, group, topics))
            sink = subprocess.Popen([sys.executable, "-c", SINK], env=env, cwd=ROOT)
            try:
                # wait until this sink has committed something, then kill it a random moment later
                while progress(committed(kafka_bootstrap, group, topics)) <= before:
                    assert sink.poll() is None, "the sink exited on its own"
                    assert time.monotonic() < deadline, "the sink made no progress"
                    if done.is_set() and progress(committed(kafka_bootstrap, group, topics)) >= len(events):
                        break  # everything is in already: kill it idle rather than wait for progress
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 0.8))
            finally:
                sink.send_signal(signal.SIGKILL)
                sink.wait(30)
            after = committed(kafka_bootstrap, group, topics)
            saw_in_flight += any(meta.startswith(IN_FLIGHT_PREFIX) for _, meta in after.values())
        producer.join(DEADLINE_SECONDS)
        assert not failures, failures
        assert done.is_set()

        target = end_offsets(kafka_bootstrap, topics)
        print(f"ten kills done after {time.monotonic() - deadline + DEADLINE_SECONDS:.1f} s; "
              f"{progress(committed(kafka_bootstrap, group, topics))} of {sum(target.values())} committed")
        run_sink_until_caught_up(env, kafka_bootstrap, group, topics, target, deadline)
    finally:
        producer.join(DEADLINE_SECONDS)

    counted = subprocess.run([sys.executable, "-c", COUNT, store], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=True)
    stored = json.loads(counted.stdout)
    expected: dict[str, list[str]] = {"inference_requests": [], "prediction_traces": [], "model_versions": []}
    for kind, event_id, _, _ in events:
        table = {"InferenceRequest": "inference_requests", "PredictionTrace": "prediction_traces",
                 "ModelVersion": "model_versions"}[kind]
        expected[table].append(event_id)
    for table, ids in expected.items():
        assert len(stored[table]) == len(ids), f"{table}: {len(stored[table])} rows for {len(ids)} events"
        assert sorted(stored[table]) == sorted(ids), table
        assert stored["ledger"][table] == len(ids), f"the ledger lacks events of {table}"
    assert stored["prediction_index"] == len(expected["prediction_traces"])
    # at least one kill landed between an insert and its commit, so the recovery path really ran
    assert saw_in_flight >= 1, "no kill landed between an insert and its commit; the test proved nothing"
