"""The tamper suite (issue 13, findings 5-8): what someone who can write to the store does, and that
``provline verify`` finds each of it; and that a store nobody touched verifies clean.

The store holds what the production code sends: a training job and the sidecar through their
emitters, the processors' traces and drift metrics through their encoder (event ids derived from
request and window times, so they sort apart from chain order), and a processors session of an older
schema revision; every producer signs with its own key. Everything is stored through the sink's
own planning and insert path, then altered the way an attacker with write access to ClickHouse would.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from clickhouse_connect.driver.client import Client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

import provline.sink
from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.schemas.serde import AVSC_DIR, SINGLE_OBJECT_MAGIC, load_writer_schema
from provline.sink import anchor
from provline.sink.rows import TABLES
from provline.sink.store import migrate, open_store
from provline.sink.verifier import Report, anchor_heads, verify_store
from provline.sink.verify import Trust
from provline.sink.writer import insert_plan, plan_batch
from provline.stream_processors.join import trace_event_id
from provline.stream_processors.traces import PRODUCER_NAME as PROCESSORS
from provline.stream_processors.traces import TraceEncoder, stable_event_id
from tests.helpers import StoredMessage, events_sent, memory_emitter

pytestmark = pytest.mark.integration

JOB, SIDECAR = "train-churn", "sidecar"
KEYS = {name: Ed25519PrivateKey.generate() for name in (JOB, SIDECAR, PROCESSORS)}
ANCHOR_KEY = Ed25519PrivateKey.generate()
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
RAW, CLEAN = "sha256:" + "1" * 64, "sha256:" + "2" * 64
PREDICTIONS = ("p1", "p2", "p3")
V2_ONLY = {"label", "outcome", "feedback_source", "feedback_time", "feedback_event_id"}  # of PredictionTrace


def private_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def public_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


TRUST = Trust.from_config({name: [public_text(key)] for name, key in KEYS.items()})


@dataclass
class Produced:
    messages: list[bytes]  # every event, as the producers sent it
    sessions: dict[str, str]  # "job", "sidecar", "processors", "old": session id
    job: list[dict[str, Any]]  # the job's events in the order it sent them (its final seal last)
    job_kinds: list[str]


def job_events(emit: Any) -> None:
    emit("DatasetVersion", {"name": "raw", "digest": RAW})
    emit("RunEvent", {"run_id": "run-train", "name": "train", "state": "COMPLETED", "inputs": [RAW],
                      "outputs": ["churn@3"], "code": {"repo": "git@x:ml.git", "commit": "c2"}})
    emit("DatasetVersion", {"name": "clean", "digest": CLEAN, "parents": [RAW], "run_id": "run-train"})
    emit("ModelVersion", {"model_name": "churn", "version": "3", "artifact_uri": "s3://m/churn/3",
                          "artifact_sha256": "a" * 64, "run_id": "run-train", "datasets": [CLEAN]})
    emit("Evaluation", {"model_name": "churn", "model_version": "3", "dataset": CLEAN, "passed": True})
    emit("Decision", {"subject": "model:churn@3", "transition": "staging->production", "outcome": "APPROVED",
                      "actor": "rita", "role": "risk"})
    emit("Deployment", {"model_name": "churn", "model_version": "3", "environment": "prod",
                        "endpoint": "/predict", "action": "DEPLOY"})


def emitted(producer_name: str, events: Any) -> tuple[list[bytes], str]:
    """Messages of one emitter session signed with the producer's key, closed (its final seal sent)."""
    emitter, transport = memory_emitter(producer_name, signing={"key": private_text(KEYS[producer_name])})
    events(emitter.emit)
    assert emitter.close(10)
    return events_sent(transport), emitter.session_id


def serving_events(emit: Any) -> None:
    for at, prediction in enumerate(PREDICTIONS):
        body = f'{{"i": {at}}}'.encode()
        emit("InferenceRequest", {"prediction_id": prediction, "endpoint": "/predict", "method": "POST",
                                  "path": "/predict", "body_size": len(body),
                                  "body_sha256": hashlib.sha256(body).hexdigest(), "body": body})
        emit("InferenceResponse", {"prediction_id": prediction, "endpoint": "/predict", "status": 200,
                                   "body_size": 2, "body_sha256": hashlib.sha256(b"{}").hexdigest(),
                                   "latency_us": 900})


def trace_fields(prediction: str, at: datetime) -> dict[str, Any]:
    return {"prediction_id": prediction, "endpoint": "/predict", "complete": True, "request_time": at,
            "response_time": at + timedelta(milliseconds=1), "status": 200, "model_name": "churn",
            "model_version": "3", "artifact_sha256": "a" * 64, "training_run_id": "run-train",
            "dataset_digests": [CLEAN]}


def processors_events() -> tuple[list[bytes], str]:
    """Traces whose ids come from request times, given out of order, then drift metrics of an earlier
    window: their ids sort apart from the order the chain links them in. Closed with a final seal."""
    encoder = TraceEncoder(default_catalog(), signer=KEYS[PROCESSORS])
    raws = []
    for at, prediction in reversed(list(enumerate(PREDICTIONS))):
        request_time = T0 + timedelta(minutes=10 + at)
        event_id = trace_event_id(prediction, int(request_time.timestamp() * 1_000_000))
        raws.append(encoder.encode(trace_fields(prediction, request_time), event_id=event_id))
    window = T0 - timedelta(hours=1)
    for feature, value in (("age", 0.05), ("plan", 0.4)):
        metric = {"model_name": "churn", "model_version": "3", "feature": feature, "metric": "psi",
                  "window_start": window, "window_end": window + timedelta(hours=1), "value": value,
                  "threshold": 0.2, "breached": value > 0.2, "sample_size": 500}
        event_id = stable_event_id("provline-drift", f"churn@3/{feature}/psi", int(window.timestamp() * 1e6))
        raws.append(encoder.encode(metric, kind="DriftMetric", event_id=event_id))
    raws.append(encoder.seal(now=0.0, final=True))
    return raws, encoder.session_id


def older_revision_events() -> tuple[list[bytes], str]:
    """A processors session of the release before PredictionTrace v2: its bytes are v1 as written, its
    hash and signature over them (sessions were not sealed then)."""
    catalog = default_catalog()
    v1 = load_writer_schema((AVSC_DIR / "PredictionTrace.v1.avsc").read_text())
    producer = producer_identity(PROCESSORS, "older-processors-session")
    raws, previous = [], None
    for at in range(2):
        value = {**new_envelope(producer, event_time=T0 + timedelta(minutes=at)),
                 **trace_fields(f"old-{at}", T0 + timedelta(minutes=at))}
        value = {k: v for k, v in value.items() if k not in V2_ONLY}
        value.update(prev_hash=previous, hash="", signature=None)
        digest = hashlib.sha256(_v1_body(v1.parsed, value)).hexdigest()
        value.update(hash=digest, signature=KEYS[PROCESSORS].sign(digest.encode()))
        raws.append(SINGLE_OBJECT_MAGIC + v1.fingerprint + _v1_body(v1.parsed, value))
        previous = digest
    assert catalog.decode(raws[0]).writer.revision < catalog.current("PredictionTrace").revision
    return raws, producer["session_id"]


def _v1_body(schema: Any, value: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, value)
    return body.getvalue()


@pytest.fixture(scope="module")
def produced() -> Produced:
    job, job_session = emitted(JOB, job_events)
    serving, sidecar_session = emitted(SIDECAR, serving_events)
    traces, processors_session = processors_events()
    older, older_session = older_revision_events()
    catalog = default_catalog()
    return Produced(
        messages=job + serving + traces + older,
        sessions={"job": job_session, "sidecar": sidecar_session, "processors": processors_session,
                  "old": older_session},
        job=[catalog.decode(raw).value for raw in job], job_kinds=[catalog.decode(raw).record for raw in job],
    )


def store_messages(client: Client, messages: list[bytes], first_offset: int = 0) -> None:
    """Through the sink's planning and insert path, as the writer stores what it reads from Kafka."""
    catalog = default_catalog()
    plan = plan_batch([StoredMessage("t", 0, first_offset + n, raw) for n, raw in enumerate(messages)], catalog)
    assert not plan.dead_letters, [d.reason for d in plan.dead_letters]
    assert insert_plan(client, plan, catalog) == []


@pytest.fixture
def store(chdb_path: str, produced: Produced) -> Iterator[Client]:
    client = open_store(chdb_path)
    try:
        migrate(client)
        store_messages(client, produced.messages)
        yield client
    finally:
        client.close()


def taken_anchor(client: Client) -> list[tuple[str, list[anchor.AnchoredSession]]]:
    """An anchor of the store as it is now, as ``provline anchor`` takes it, checked as verify checks it."""
    heads = anchor_heads(client)
    assert all(head["intact"] for head in heads)
    document = anchor.build(anchor.anchored_sessions(heads), ANCHOR_KEY)
    sessions, problems = anchor.check(document, [ANCHOR_KEY.public_key()])
    assert problems == []
    return [("before", sessions)]


def verify(client: Client, *, trust: Trust = TRUST, anchors: Any = ()) -> Report:
    return verify_store(client, default_catalog(), trust, anchors=anchors)


def problems(report: Report) -> set[tuple[str, str]]:
    """(problem, event id or session) of every finding."""
    return {(f.problem, f.event_id or f.session or f.table) for f in report.findings}


def erase(client: Client, event_ids: list[str]) -> None:
    """Delete events as an attacker covering their tracks would: from the event tables, the ledger of
    everything inserted, and the rows derived from them."""
    tables = [spec.table for spec in TABLES.values()] + ["event_ledger", "lineage_edges", "prediction_index"]
    for table in tables:
        client.command(f"ALTER TABLE {table} DELETE WHERE event_id IN {{ids:Array(String)}}",
                       parameters={"ids": event_ids}, settings={"mutations_sync": 2})


def stored_raw(client: Client, table: str, event_id: str) -> bytes:
    return client.query(f"SELECT raw FROM {table} WHERE event_id = {{id:String}}", parameters={"id": event_id},
                        column_formats={"raw": "bytes"}).result_rows[0][0]


def update(client: Client, table: str, assignments: str, event_id: str, **parameters: Any) -> None:
    client.command(f"ALTER TABLE {table} UPDATE {assignments} WHERE event_id = {{id:String}}",
                   parameters={"id": event_id, **parameters}, settings={"mutations_sync": 2})


def rechained(produced: Produced, signer: Ed25519PrivateKey | None, change: Any) -> list[bytes]:
    """The job's events sealed again into a fresh chain after ``change(kind, value)``: a consistent rewrite."""
    catalog = default_catalog()
    chain = HashChain(catalog, signer=signer)
    raws = []
    for kind, original in zip(produced.job_kinds, produced.job, strict=True):
        value = {**original}
        change(kind, value)
        raws.append(catalog.header(kind) + chain.seal_encode(kind, value))
    return raws


# ---------------------------------------------------------------- an untouched store


def test_an_untouched_store_with_traces_drift_and_an_older_revision_verifies_clean(
    store: Client, produced: Produced,
) -> None:
    processors = [default_catalog().decode(raw).value for raw in produced.messages
                  if default_catalog().decode(raw).value["producer"]["session_id"] == produced.sessions["processors"]]
    assert [e["event_id"] for e in processors] != sorted(e["event_id"] for e in processors)  # ids not chain order
    report = verify(store, anchors=taken_anchor(store))
    assert report.findings == []
    assert report.sessions == 4 and report.events == len(produced.messages) and report.signatures
    assert report.unsealed == [produced.sessions["old"]]  # the older release did not seal its sessions


@pytest.mark.parametrize("replaced", [[1], [0, 1], [0, 1, 2, 3, 4]],
                         ids=["one event", "the start and the next", "every event"])
def test_a_batch_emitted_again_by_another_worker_is_not_a_finding(
    store: Client, produced: Produced, replaced: list[int],
) -> None:
    """A worker that takes over a crashed one's batch sends its traces again: same event ids and contents,
    from its own session. The stored copies replace the first session's: one event, its start and the
    next, or all of them but its seal. Its chain is still whole in the ledger, which keeps every copy
    and the link each was sent with."""
    sent = [default_catalog().decode(raw).value for raw in produced.messages
            if default_catalog().decode(raw).value["producer"]["session_id"] == produced.sessions["processors"]]
    encoder = TraceEncoder(default_catalog(), signer=KEYS[PROCESSORS])
    again = []
    for at in replaced:
        event = sent[at]
        kind = "PredictionTrace" if "prediction_id" in event else "DriftMetric"
        fields = {k: v for k, v in event.items() if k not in ("event_id", "event_time", "producer", "prev_hash",
                                                               "hash", "signature")}
        again.append(encoder.encode(fields, kind=kind, event_id=event["event_id"]))
    store_messages(store, [*again, encoder.seal(now=0.0, final=True)], first_offset=1000)
    first = produced.sessions["processors"]
    assert store.query("SELECT count() FROM prediction_traces FINAL WHERE producer_session = {s:String}",
                       parameters={"s": first}).result_rows == [(3 - sum(at < 3 for at in replaced),)]
    stored = store.query("SELECT producer_session FROM prediction_traces FINAL WHERE event_id = {id:String}",
                         parameters={"id": sent[replaced[0]]["event_id"]}).result_rows
    assert stored == [(encoder.session_id,)]  # the second copy is the stored one
    assert verify(store).findings == []
    assert all(head["intact"] for head in anchor_heads(store))
    if replaced == [0, 1]:  # a copy the ledger keeps vouches only for an event still stored under its id
        erase(store, [sent[1]["event_id"]])
        found = problems(verify(store))
        assert ("missing", sent[2]["event_id"]) in found, found


# ---------------------------------------------------------------- tampering with stored rows


def test_a_single_altered_byte_in_raw_is_found(store: Client, produced: Produced) -> None:
    model = produced.job[3]
    raw = bytearray(stored_raw(store, "model_versions", model["event_id"]))
    at = raw.index(b"s3://m/churn/3") + len(b"s3://m/churn/")
    raw[at] = ord("4")
    update(store, "model_versions", "raw = unhex({hex:String})", model["event_id"], hex=raw.hex())
    assert ("altered", model["event_id"]) in problems(verify(store))


def test_columns_an_answer_is_built_from_are_checked_against_the_raw_event(
    store: Client, produced: Produced,
) -> None:
    """Finding 5: body_sha256 and payload changed, raw untouched, made /v1/traces say model_version 666."""
    request_id = store.query("SELECT event_id FROM inference_requests WHERE prediction_id = 'p1'").result_rows[0][0]
    trace_id = store.query("SELECT event_id FROM prediction_traces WHERE prediction_id = 'p1'").result_rows[0][0]
    update(store, "inference_requests", "body_sha256 = {h:String}", request_id, h="f" * 64)
    forged_payload = "replaceOne(payload, '\"model_version\":\"3\"', '\"model_version\":\"666\"')"
    update(store, "prediction_traces", f"model_version = '666', payload = {forged_payload}", trace_id)
    assert store.query("SELECT model_version FROM prediction_traces WHERE event_id = {id:String}",
                       parameters={"id": trace_id}).result_rows == [("666",)]
    report = verify(store)
    columns = {(f.event_id, f.detail.split(" differ")[0]) for f in report.findings if f.problem == "columns"}
    assert (request_id, "body_sha256") in columns
    assert any(event_id == trace_id and "model_version" in named and "payload" in named
               for event_id, named in columns)


def test_altered_derived_rows_are_found(store: Client) -> None:
    """Key columns cannot be updated in place: a row is rewritten by inserting the new one, deleting the old."""
    store.command("INSERT INTO prediction_index SELECT * REPLACE ('666' AS model_version) FROM prediction_index "
                  "WHERE prediction_id = 'p2'")
    store.command("ALTER TABLE prediction_index DELETE WHERE prediction_id = 'p2' AND model_version = '3'",
                  settings={"mutations_sync": 2})
    store.command("ALTER TABLE lineage_edges DELETE WHERE to_node = 'run:run-train' AND edge = 'input'",
                  settings={"mutations_sync": 2})
    derived = [f.detail for f in verify(store).findings if f.problem == "derived"]
    assert len(derived) == 3, derived
    assert any("not derived" in d and "666" in d for d in derived)  # the forged index row
    assert any(d.startswith("missing") and "p2" in d and ", 3," in d for d in derived)  # the true one it replaced
    assert any(d.startswith("missing") and "run:run-train" in d for d in derived)  # the deleted edge


def test_a_deleted_event_is_found_at_the_event_after_it(store: Client, produced: Produced) -> None:
    """Deleted with its ledger entry and the rows derived from it: the chain's link is what is left."""
    erase(store, [produced.job[2]["event_id"]])
    assert problems(verify(store)) == {
        ("missing", produced.job[3]["event_id"]),
        ("truncated", produced.sessions["job"]),  # its final seal vouches for one more
    }


def test_a_swapped_pair_is_found(store: Client, produced: Produced) -> None:
    first, second = produced.job[1], produced.job[2]  # a RunEvent and the DatasetVersion after it
    first_raw, second_raw = stored_raw(store, "run_events", first["event_id"]), stored_raw(
        store, "dataset_versions", second["event_id"])
    update(store, "run_events", "raw = unhex({hex:String})", first["event_id"], hex=second_raw.hex())
    update(store, "dataset_versions", "raw = unhex({hex:String})", second["event_id"], hex=first_raw.hex())
    assert problems(verify(store)) >= {("columns", first["event_id"]), ("columns", second["event_id"])}


def test_an_event_deleted_from_its_table_alone_is_named_by_the_ledger(store: Client, produced: Produced) -> None:
    deleted = produced.job[2]
    store.command("ALTER TABLE dataset_versions DELETE WHERE event_id = {id:String}",
                  parameters={"id": deleted["event_id"]}, settings={"mutations_sync": 2})
    assert problems(verify(store)) == {
        ("missing", deleted["event_id"]),  # the ledger saw it stored
        ("missing", produced.job[3]["event_id"]),  # the next event links to it
        ("truncated", produced.sessions["job"]),
        ("derived", "lineage_edges"),  # its edges are still stored
    }


def test_events_expired_by_retention_are_not_named_deleted(store: Client, produced: Produced) -> None:
    """The older session's traces are from months ago: a 30-day retention expired them (a TTL merge
    that reached the table before the ledger)."""
    expired = [e for (e,) in store.query("SELECT event_id FROM prediction_traces WHERE producer_session = "
                                         "{s:String}", parameters={"s": produced.sessions["old"]}).result_rows]
    for table in ("prediction_traces", "prediction_index", "lineage_edges"):
        store.command(f"ALTER TABLE {table} DELETE WHERE event_id IN {{ids:Array(String)}}",
                      parameters={"ids": expired}, settings={"mutations_sync": 2})
    told = verify_store(store, default_catalog(), TRUST, retention_days={"prediction_traces": 30})
    assert told.findings == []
    untold = verify(store)
    assert {(f.problem, f.event_id) for f in untold.findings} == {("missing", e) for e in expired}


# ---------------------------------------------------------------- rewriting, truncating, replacing


def test_a_consistent_rewrite_of_a_session_is_found_by_its_signatures(store: Client, produced: Produced) -> None:
    forger = Ed25519PrivateKey.generate()

    def change(kind: str, value: dict[str, Any]) -> None:
        if kind == "ModelVersion":
            value["artifact_uri"] = "s3://attacker/churn/3"

    erase(store, [e["event_id"] for e in produced.job])
    store_messages(store, rechained(produced, forger, change), first_offset=1000)
    assert verify(store, trust=Trust()).findings == []  # links intact, hashes right: without keys it holds
    found = problems(verify(store))
    assert found == {("bad-signature", e["event_id"]) for e in produced.job}


def test_a_consistent_rewrite_of_an_unsigned_store_is_found_by_an_anchor(store: Client, produced: Produced) -> None:
    anchors = taken_anchor(store)

    def change(kind: str, value: dict[str, Any]) -> None:
        if kind == "Decision":
            value["actor"] = "mallory"

    erase(store, [e["event_id"] for e in produced.job])
    store_messages(store, rechained(produced, None, change), first_offset=1000)
    assert verify(store, trust=Trust()).findings == []
    found = [f for f in verify(store, trust=Trust(), anchors=anchors).findings]
    assert [(f.problem, f.session) for f in found] == [("truncated", produced.sessions["job"])]
    assert "not stored" in found[0].detail


def test_a_deleted_tail_is_found_by_an_anchor(store: Client, produced: Produced) -> None:
    """Finding 7: the last events of a session, its final seal with them, leave no broken link."""
    anchors = taken_anchor(store)
    erase(store, [e["event_id"] for e in produced.job[-3:]])
    unanchored = verify(store)
    assert unanchored.findings == [] and produced.sessions["job"] in unanchored.unsealed  # flagged, not proven
    found = verify(store, anchors=anchors).findings
    assert [(f.problem, f.session) for f in found] == [("truncated", produced.sessions["job"])]


def test_a_deleted_tail_before_the_final_seal_breaks_the_seals_link(store: Client, produced: Produced) -> None:
    erase(store, [e["event_id"] for e in produced.job[-4:-1]])
    assert problems(verify(store)) == {("missing", produced.job[-1]["event_id"]),
                                       ("truncated", produced.sessions["job"])}


def test_a_deleted_session_is_found_by_an_anchor(store: Client, produced: Produced) -> None:
    anchors = taken_anchor(store)
    erase(store, [e["event_id"] for e in produced.job])
    assert verify(store).findings == []  # nothing left to disagree with: only the anchor remembers it
    found = verify(store, anchors=anchors).findings
    assert [(f.problem, f.session) for f in found] == [("session-deleted", produced.sessions["job"])]


def test_a_replaced_event_is_found_in_the_ledger(store: Client, produced: Produced) -> None:
    """A re-published event with an existing event_id replaces the stored row (ReplacingMergeTree)."""
    catalog = default_catalog()
    original = produced.job[3]
    forged = {**original, "artifact_uri": "s3://attacker/churn/3"}
    chain = HashChain(catalog, signer=KEYS[JOB], last_hash=original["prev_hash"])  # even with the real key
    replacement = catalog.header("ModelVersion") + chain.seal_encode("ModelVersion", forged)
    store_messages(store, [replacement], first_offset=1000)
    assert store.query("SELECT artifact_uri FROM model_versions FINAL WHERE event_id = {id:String}",
                       parameters={"id": original["event_id"]}).result_rows == [("s3://attacker/churn/3",)]
    assert problems(verify(store)) == {
        ("replaced", original["event_id"]),
        ("missing", produced.job[4]["event_id"]),  # the next event links to the original
    }


def test_events_added_after_a_final_seal_are_found(store: Client, produced: Produced) -> None:
    catalog = default_catalog()
    seal = produced.job[-1]
    chain = HashChain(catalog, signer=KEYS[JOB], last_hash=seal["hash"])
    extra = {**new_envelope(seal["producer"]), "subject": "model:churn@3", "transition": "production->archived",
             "outcome": "APPROVED", "actor": "mallory", "role": "risk"}
    store_messages(store, [catalog.header("Decision") + chain.seal_encode("Decision", extra)], first_offset=1000)
    assert problems(verify(store)) == {("after-final", extra["event_id"])}


def test_events_of_an_untrusted_producer_are_found(store: Client) -> None:
    emitter, transport = memory_emitter("intruder", signing={"key": private_text(Ed25519PrivateKey.generate())})
    emitter.emit("Decision", {"subject": "model:churn@3", "transition": "staging->production",
                              "outcome": "APPROVED", "actor": "mallory", "role": "risk"})
    assert emitter.close(10)
    store_messages(store, events_sent(transport), first_offset=1000)
    assert {f.problem for f in verify(store).findings} == {"untrusted"}


# ---------------------------------------------------------------- a store ledgered before migration 0007

LEDGER_BEFORE_0007 = ("event_id, hash, content_sha256, event_table, producer_session, event_time, kafka_topic, "
                      "kafka_partition, kafka_offset, inserted")


def ledgered_as_before_0007(client: Client) -> None:
    """The store as a sink of the release before migration 0007 left it: its ledger rows carry the content
    digests of the released 0005 SQL (the one the ledger views used), and 0007 is not applied."""
    client.command("ALTER TABLE event_ledger DELETE WHERE 1", settings={"mutations_sync": 2})
    migration = (Path(provline.sink.__file__).parent / "sql" / "0005_integrity.sql").read_text()
    backfills = [line.rstrip(";") for line in migration.splitlines() if line.startswith("INSERT INTO event_ledger")]
    seals = backfills[0].replace("'run_events'", "'session_seals'").replace("FROM run_events", "FROM session_seals")
    for statement in [*backfills, seals]:
        client.command(statement.replace("INSERT INTO event_ledger SELECT",
                                         f"INSERT INTO event_ledger ({LEDGER_BEFORE_0007}) SELECT"))
    client.command("ALTER TABLE schema_migrations DELETE WHERE name = '0007_ledger_content_digest.sql'",
                   settings={"mutations_sync": 2})


def test_a_store_ledgered_before_0007_upgrades_and_still_tells_copies_from_replacements(
    store: Client, produced: Produced,
) -> None:
    ledgered_as_before_0007(store)
    assert store.query("SELECT countIf(content_digest = ''), count() FROM event_ledger").result_rows == [
        (len(produced.messages), len(produced.messages))]
    assert migrate(store) == ["0007_ledger_content_digest.sql"]
    assert verify(store).findings == []
    # After the upgrade: a trace emitted again by another worker is still a copy ...
    trace = [default_catalog().decode(raw).value for raw in produced.messages
             if default_catalog().decode(raw).value["producer"]["session_id"] == produced.sessions["processors"]][1]
    envelope = ("event_id", "event_time", "producer", "prev_hash", "hash", "signature")
    encoder = TraceEncoder(default_catalog(), signer=KEYS[PROCESSORS])
    store_messages(store, [encoder.encode({k: v for k, v in trace.items() if k not in envelope},
                                          event_id=trace["event_id"]), encoder.seal(now=0.0, final=True)],
                   first_offset=1000)
    assert verify(store).findings == []
    # ... and an event stored before it and re-published with other contents is a replacement.
    original = produced.job[3]
    chain = HashChain(default_catalog(), signer=KEYS[JOB], last_hash=original["prev_hash"])
    forged = default_catalog().header("ModelVersion") + chain.seal_encode(
        "ModelVersion", {**original, "artifact_uri": "s3://attacker/churn/3"})
    store_messages(store, [forged], first_offset=2000)
    assert ("replaced", original["event_id"]) in problems(verify(store))
