"""The sink against the real engines: Kafka broker from the session fixture, chDB in process.

chDB hosts one engine per process, so every test here opens its clients on the session's one chDB
directory (``chdb_path`` gives each test its own database in it) and closes them at the end.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from provline.schemas import Topics, default_catalog, key_for, new_envelope, producer_identity
from provline.schemas.dead_letters import REASON, SOURCE_OFFSET, SOURCE_TOPIC
from provline.schemas.integrity import HashChain
from provline.sink.api import create_api
from provline.sink.queries import RegistryCache, trace
from provline.sink.rows import TABLES
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, migration_files, open_store
from provline.sink.writer import SinkWriter, insert_plan, plan_batch, source_topics
from tests.helpers import StoredMessage, seal

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 30.0
GARBAGE = b"this is not a provline event"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Events:
    """Sealed events of one producer session, as (kind, value)."""

    def __init__(self) -> None:
        self.chain = HashChain(default_catalog())
        self.producer = producer_identity("test", f"s-{uuid.uuid4().hex[:8]}")
        self.all: list[tuple[str, dict[str, Any]]] = []

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        value = seal(self.chain, kind, {**new_envelope(self.producer), **fields})
        self.all.append((kind, value))
        return value


def audit_story(prediction_id: str) -> Events:
    """Run -> dataset -> model -> deployment -> request/response -> trace -> drift."""
    events = Events()
    code = {"repo": "git@example:ml.git", "commit": "c0ffee", "branch": "main", "dirty": False,
            "diff_sha256": None, "entrypoint": "train.py", "argv": ["--fast"]}
    events.add("RunEvent", run_id="run-7", name="train", state="STARTED", code=code)
    events.add("RunEvent", run_id="run-7", name="train", state="COMPLETED", code=None)
    events.add("DatasetVersion", name="customers", digest="ds-digest-1", run_id="run-7", row_count=10)
    events.add("ModelVersion", model_name="churn", version="3", artifact_uri="s3://models/churn/3",
               artifact_sha256="a" * 64, run_id="run-7", datasets=["ds-digest-1"])
    events.add("Deployment", model_name="churn", model_version="3", environment="prod", endpoint="/predict",
               action="DEPLOY")
    events.add("InferenceRequest", prediction_id=prediction_id, endpoint="/predict", method="POST",
               path="/predict", model_name="churn", model_version="3", body_size=2, body_sha256="b" * 64,
               body=b"{}", body_truncated=False)
    events.add("InferenceResponse", prediction_id=prediction_id, endpoint="/predict", status=200,
               body_size=2, body_sha256="c" * 64, body_truncated=False, latency_us=1500)
    # The trace lacks the run and code: trace() must find them through the stored ModelVersion.
    events.add("PredictionTrace", prediction_id=prediction_id, endpoint="/predict", complete=False,
               missing="response")
    events.add("PredictionTrace", prediction_id=prediction_id, endpoint="/predict", complete=True,
               request_sha256="b" * 64, response_sha256="c" * 64, status=200, model_name="churn",
               model_version="3", artifact_sha256="a" * 64)
    events.add("DriftMetric", model_name="churn", model_version="3", feature="age",
               window_start=events.all[0][1]["event_time"], window_end=events.all[0][1]["event_time"],
               metric="psi", value=0.02, threshold=0.2, breached=False, sample_size=100)
    return events


def produce(bootstrap: str, topics: Topics, events: Events) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    catalog = default_catalog()
    for kind, value in events.all:
        producer.produce(topics.for_kind(kind), key=key_for(kind, value), value=catalog.encode(kind, value))
    producer.produce(topics.lineage, key=b"junk", value=GARBAGE)
    assert producer.flush(10) == 0


def sink_settings(kafka_bootstrap: str, topics: Topics, chdb_path: str) -> ServeSettings:
    return ServeSettings(
        kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix}, store={"url": chdb_path},
        sink={"consumer_group": f"sink-{uuid.uuid4().hex[:8]}", "batch_max_events": 4, "batch_max_s": 0.2},
    )


def run_writer_until(settings: ServeSettings, done: Callable[[], Any], what: str) -> None:
    client = open_store(settings.store.url)
    writer = SinkWriter(settings, client)
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            writer.run(stop)
        except BaseException as exc:  # surfaced in the test thread below
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        wait_for(lambda: done() or failure, what)
    finally:
        stop.set()
        thread.join(DEADLINE_SECONDS)
        client.close()
    assert not thread.is_alive(), "writer did not stop after the stop event"
    assert not failure, failure


def event_ids_by_table(client: Client, *, final: bool) -> dict[str, list[str]]:
    found = {}
    for spec in TABLES.values():
        modifier = "FINAL" if final else ""
        rows = client.query(f"SELECT event_id FROM {spec.table} {modifier} ORDER BY event_id").result_rows
        found[spec.table] = [row[0] for row in rows]
    return found


def expected_ids(events: Events) -> dict[str, list[str]]:
    expected: dict[str, list[str]] = {spec.table: [] for spec in TABLES.values()}
    for kind, value in events.all:
        expected[TABLES[kind].table].append(value["event_id"])
    return {table: sorted(ids) for table, ids in expected.items()}


def committed_covers_everything(settings: ServeSettings, topics: Topics) -> bool:
    consumer = Consumer(settings.kafka.librdkafka(**{"group.id": settings.sink.consumer_group}))
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in source_topics(topics)
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=10)}
        for tp in partitions:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0 and committed[(tp.topic, tp.partition)] != high:
                return False
        return True
    finally:
        consumer.close()


def dead_letters(bootstrap: str, topics: Topics, expected: int) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dlq-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topics.dlq])
    messages: list[Any] = []
    try:
        wait_for(
            lambda: messages.extend(m for m in consumer.consume(10, timeout=0.2) if m.error() is None)
            or len(messages) >= expected,
            f"{expected} dead letters",
        )
        messages.extend(m for m in consumer.consume(10, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return messages


def rows_written() -> float:
    return sum(
        REGISTRY.get_sample_value("provline_sink_rows_written_total", {"table": spec.table}) or 0.0
        for spec in TABLES.values()
    )


def test_migrate_is_idempotent_and_records_files(store: Client) -> None:
    assert migrate(store) == []
    names = [row[0] for row in store.query("SELECT name FROM schema_migrations FINAL ORDER BY name").result_rows]
    assert names == [name for name, _ in migration_files()] and names[:6] == [
        "0000_schema_migrations.sql", "0001_event_tables.sql", "0002_audit_store.sql", "0003_offset_index.sql",
        "0004_access_log_statements.sql", "0005_integrity.sql",
    ]
    for spec in TABLES.values():
        # MATERIALIZED columns are computed by the engine from stored ones (0010: otel_trace_id), never written
        described = [row[0] for row in store.query(f"DESCRIBE TABLE {spec.table}").result_rows
                     if row[2] != "MATERIALIZED"]
        assert described == list(spec.columns), spec.table


def test_writer_stores_each_event_once_dead_letters_garbage_and_survives_redelivery(
    kafka_bootstrap: str, topics: Topics, chdb_path: str, store: Client
) -> None:
    prediction_id = f"pred-{uuid.uuid4().hex[:8]}"
    events = audit_story(prediction_id)
    produce(kafka_bootstrap, topics, events)
    expected = expected_ids(events)
    settings = sink_settings(kafka_bootstrap, topics, chdb_path)

    run_writer_until(
        settings, lambda: event_ids_by_table(store, final=False) == expected, "every event stored once"
    )
    assert event_ids_by_table(store, final=False) == expected  # exactly once: no extra rows either
    assert committed_covers_everything(settings, topics)
    letters = dead_letters(kafka_bootstrap, topics, expected=1)
    assert len(letters) == 1
    headers = dict(letters[0].headers())
    assert letters[0].value() == GARBAGE
    assert headers[REASON] == b"CorruptEventError"
    assert headers[SOURCE_TOPIC] == topics.lineage.encode()
    assert int(headers[SOURCE_OFFSET]) >= 0
    raw = store.query(
        "SELECT raw FROM run_events WHERE event_id = {id:String}", parameters={"id": expected["run_events"][0]},
        column_formats={"raw": "bytes"},
    ).result_rows[0][0]
    assert default_catalog().decode(raw).value["event_id"] == expected["run_events"][0]

    # Re-read everything from offset 0 (a new group): the deduplicated view must not change.
    before = rows_written()
    again = settings.model_copy(update={"sink": settings.sink.model_copy(
        update={"consumer_group": f"sink-{uuid.uuid4().hex[:8]}"})})
    run_writer_until(again, lambda: committed_covers_everything(again, topics), "the re-run to commit everything")
    assert rows_written() - before == len(events.all)  # the events really were inserted a second time
    assert event_ids_by_table(store, final=True) == expected
    found = trace(store, prediction_id)
    assert found is not None and found["complete"] is True


def test_batches_refused_by_the_store_are_read_again_with_those_read_after_them_and_stored_once(
    kafka_bootstrap: str, topics: Topics, chdb_path: str, store: Client
) -> None:
    """The writer reads a batch while the one before is inserted; when that insert fails, both are read
    again. The refusal is real: ClickHouse's "too many parts" while a table has more parts than allowed."""
    settings = sink_settings(kafka_bootstrap, topics, chdb_path)
    first = Events()
    first.add("InferenceRequest", prediction_id="p-0", endpoint="/predict", method="POST", path="/predict",
              body_size=0, body_sha256="b" * 64)
    produce(kafka_bootstrap, topics, first)
    client = open_store(settings.store.url)
    writer = SinkWriter(settings, client)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: event_ids_by_table(store, final=False)["inference_requests"], "the first event stored")
        store.command("ALTER TABLE inference_requests MODIFY SETTING parts_to_throw_insert = 1")
        failed_before = REGISTRY.get_sample_value("provline_sink_batches_total", {"outcome": "failed"}) or 0.0
        more = Events()
        for number in range(1, 30):  # batches of 4, read while the ones before fail
            more.add("InferenceRequest", prediction_id=f"p-{number}", endpoint="/predict", method="POST",
                     path="/predict", body_size=0, body_sha256="b" * 64)
        produce(kafka_bootstrap, topics, more)
        wait_for(lambda: (REGISTRY.get_sample_value("provline_sink_batches_total", {"outcome": "failed"})
                          or 0.0) >= failed_before + 2, "inserts refused twice")
        store.command("ALTER TABLE inference_requests MODIFY SETTING parts_to_throw_insert = 3000")
        expected = sorted(value["event_id"] for events in (first, more) for _, value in events.all)
        wait_for(lambda: event_ids_by_table(store, final=False)["inference_requests"] == expected,
                 "every event stored once after the store took inserts again")
        wait_for(lambda: committed_covers_everything(settings, topics), "everything committed")
    finally:
        stop.set()
        thread.join(DEADLINE_SECONDS)
        client.close()
    assert not thread.is_alive()
    assert event_ids_by_table(store, final=False)["inference_requests"] == expected  # no duplicate rows


def test_the_lag_reported_is_that_of_the_last_commit(
    kafka_bootstrap: str, topics: Topics, chdb_path: str, store: Client
) -> None:
    """provline_sink_lag per partition: high watermark minus committed offset, after every batch."""
    events = Events()
    for number in range(12):  # one prediction id: one partition, three batches of 4
        events.add("InferenceRequest", prediction_id="p-lag", endpoint="/predict", method="POST",
                   path="/predict", body_size=0, body_sha256="b" * 64, client_id=str(number))
    produce(kafka_bootstrap, topics, events)
    settings = sink_settings(kafka_bootstrap, topics, chdb_path)
    run_writer_until(settings, lambda: committed_covers_everything(settings, topics), "everything committed")
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.sink.consumer_group})
    try:
        partitions = consumer.list_topics(topics.inference, timeout=10).topics[topics.inference].partitions
        lags = {}
        for number in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topics.inference, number), timeout=10)
            if high > 0:
                lags[number] = REGISTRY.get_sample_value(
                    "provline_sink_lag", {"topic": topics.inference, "partition": str(number)})
    finally:
        consumer.close()
    assert lags and all(lag == 0 for lag in lags.values()), lags


def test_trace_joins_request_model_version_and_run(store: Client) -> None:
    prediction_id = "pred-join"
    events = audit_story(prediction_id)
    insert_directly(store, events)

    found = trace(store, prediction_id)
    assert found is not None
    latest_trace = events.all[8][1]
    assert found["trace_event_id"] == latest_trace["event_id"]  # the latest trace wins
    assert found["complete"] is True and found["missing"] is None
    assert found["request_sha256"] == found["request_body_sha256"] == "b" * 64
    assert (found["model_name"], found["model_version"]) == ("churn", "3")
    assert found["artifact_sha256"] == "a" * 64
    assert found["artifact_uri"] == "s3://models/churn/3"
    assert found["training_run_id"] == "run-7"  # from the ModelVersion; the trace had none
    assert (found["code_repo"], found["code_commit"]) == ("git@example:ml.git", "c0ffee")  # STARTED event
    assert found["dataset_digests"] == ["ds-digest-1"]
    assert found["sources"]["run"] == events.all[0][1]["event_id"]
    assert trace(store, "no-such-prediction") is None


def insert_directly(client: Client, events: Events) -> None:
    """The writer's insert path without Kafka: one message per event, offsets in order."""
    catalog = default_catalog()
    encoded = [catalog.encode(kind, value) for kind, value in events.all]
    messages = [StoredMessage("direct", 0, offset, value) for offset, value in enumerate(encoded)]
    plan = plan_batch(messages, catalog)
    assert not plan.dead_letters and insert_plan(client, plan, catalog) == []


def test_registry_cache_answers_like_the_store_and_sees_new_registrations(store: Client) -> None:
    events = audit_story("pred-cached")
    insert_directly(store, events)
    registry = RegistryCache()
    assert trace(store, "pred-cached", registry) == trace(store, "pred-cached")
    assert trace(store, "pred-cached", registry)["artifact_uri"] == "s3://models/churn/3"

    later = Events()  # the same model version registered again, with another artifact
    later.add("ModelVersion", model_name="churn", version="3", artifact_uri="s3://models/churn/3-fixed",
              artifact_sha256="c" * 64, run_id="run-7", datasets=["ds-digest-1"])
    catalog = default_catalog()
    plan = plan_batch([StoredMessage("direct", 0, 1000, catalog.encode(*later.all[0]))], catalog)
    assert insert_plan(store, plan, catalog) == []
    assert trace(store, "pred-cached", registry)["artifact_uri"] == "s3://models/churn/3-fixed"


def test_api_serves_traces_and_refuses_writes(store: Client, chdb_path: str) -> None:
    insert_directly(store, audit_story("pred-api"))
    api_client = open_store(chdb_path)
    try:
        settings = ServeSettings(store={"url": chdb_path},
                                 api={"tokens": {"ann": {"token": "a" * 32, "role": "auditor"}}})
        http = TestClient(create_api(settings, api_client), headers={"Authorization": f"Bearer {'a' * 32}"})
        assert http.get("/healthz").json() == {"status": "ok"}

        reply = http.get("/v1/traces/pred-api")
        assert reply.status_code == 200
        assert reply.json()["code_commit"] == "c0ffee"
        missing = http.get("/v1/traces/nope")
        assert missing.status_code == 404 and "no trace stored for prediction 'nope'" in missing.json()["detail"]

        counted = http.post("/v1/sql", json={"sql": "SELECT count() AS n FROM prediction_traces"})
        assert counted.status_code == 200 and counted.json() == {"columns": ["n"], "rows": [[2]]}
        timed = http.post("/v1/sql", json={"sql": "SELECT event_time, raw FROM run_events LIMIT 1"}).json()
        assert isinstance(timed["rows"][0][0], str)  # JSON-able: datetimes as ISO text

        for statement in ("DROP TABLE prediction_traces", "SELECT 1; DROP TABLE prediction_traces"):
            refused = http.post("/v1/sql", json={"sql": statement})
            assert refused.status_code == 400 and refused.json()["detail"].startswith("refused:")
        file_refused = http.post("/v1/sql", json={"sql": "SELECT * FROM file('/etc/hostname', 'LineAsString')"})
        assert file_refused.status_code == 400 and "table function file()" in file_refused.json()["detail"]
        assert store.query("SELECT count() FROM prediction_traces").result_rows == [(2,)]

        assert "provline_sink_rows_written" in http.get("/metrics").text
    finally:
        api_client.close()
