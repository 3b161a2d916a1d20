"""Audit queries, store verification, the audit API's access control and evidence bundles on real chDB.

One seeded lineage graph (two producer sessions: a training job and the serving side) is stored
through the writer's own planning and insert path, so lineage edges and the prediction index are
the ones the sink derives.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.dead_letters import ERROR, EVENT_HASH, EVENT_ID, EVENT_SESSION, REASON, SOURCE_TOPIC
from provline.schemas.integrity import HashChain
from provline.sink import queries
from provline.sink.api import create_api
from provline.sink.evidence import EVENTS, FORMATS, MANIFEST, build_bundle, gather, verify_bundle
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.verifier import verify_store
from provline.sink.verify import Trust
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage, seal

pytestmark = pytest.mark.integration

T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)
RAW, CLEAN, OTHER = "sha256:raw", "sha256:clean", "sha256:other"
CODE = {"repo": "git@x:ml.git", "branch": "main", "dirty": False, "diff_sha256": None, "entrypoint": "t.py",
        "argv": []}


class Session:
    def __init__(self, name: str) -> None:
        self.chain = HashChain(default_catalog())
        self.producer = producer_identity(name, f"{name}-{uuid.uuid4().hex[:6]}")
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.clock = T0

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.clock += timedelta(minutes=1)
        value = seal(self.chain, kind, {**new_envelope(self.producer, event_time=self.clock), **fields})
        self.events.append((kind, value))
        return value


def seed() -> tuple[Session, Session]:
    job, serving = Session("train-churn"), Session("sidecar")
    job.add("DatasetVersion", name="raw", digest=RAW)
    job.add("RunEvent", run_id="run-prep", name="prep", state="COMPLETED", inputs=[RAW], outputs=[CLEAN],
            code={**CODE, "commit": "c1"}, environment={"python": "3.11", "env_vars": {"USER": "ana"}})
    job.add("DatasetVersion", name="clean", digest=CLEAN, parents=[RAW], run_id="run-prep")
    job.add("RunEvent", run_id="run-train", name="train", state="COMPLETED", inputs=[CLEAN], outputs=["churn@3"],
            code={**CODE, "commit": "c2"}, environment={"python": "3.11", "env_vars": {"USER": "ana"}})
    job.add("FeatureSetVersion", name="fs", digest="fs-1", input_datasets=[CLEAN], run_id="run-train", features=[])
    job.add("ModelVersion", model_name="churn", version="3", artifact_uri="s3://m/churn/3", artifact_sha256="a" * 64,
            run_id="run-train", datasets=[CLEAN], feature_sets=["fs-1"])
    job.add("Evaluation", model_name="churn", model_version="3", dataset=CLEAN, passed=True)
    job.add("Decision", subject="model:churn@3", transition="staging->production", outcome="APPROVED",
            actor="rita", role="risk")
    job.add("Deployment", model_name="churn", model_version="3", environment="prod", endpoint="/predict",
            action="DEPLOY")
    job.add("RunEvent", run_id="run-other", name="other", state="FAILED", inputs=[OTHER], outputs=["other@1"],
            environment={"python": "3.11", "env_vars": {"USER": "bo"}})
    job.add("ModelVersion", model_name="other", version="1", artifact_uri="s3://m/other/1", artifact_sha256="b" * 64,
            run_id="run-other", datasets=[OTHER])
    for prediction, model in (("p1", ("churn", "3")), ("p2", ("churn", "3")), ("p3", ("other", "1"))):
        serving.add("InferenceRequest", prediction_id=prediction, endpoint="/predict", method="POST",
                    path="/predict", model_name=model[0], model_version=model[1], body_size=2,
                    body_sha256="e" * 64, body=b"{}", body_truncated=False)
        serving.add("PredictionTrace", prediction_id=prediction, endpoint="/predict", complete=True,
                    model_name=model[0], model_version=model[1], artifact_sha256="a" * 64,
                    request_sha256="e" * 64, status=200)
    for feature, value in (("age", 0.05), ("plan", 0.4)):
        serving.add("DriftMetric", model_name="churn", model_version="3", feature=feature, metric="psi",
                    window_start=T0, window_end=T0 + timedelta(hours=1), value=value, threshold=0.2,
                    breached=value > 0.2, sample_size=500)
    return job, serving


def store_sessions(client: Client, *sessions: Any) -> None:
    """Store every event of ``sessions`` (objects with ``events``: (kind, value) pairs) through the sink's writer."""
    catalog = default_catalog()
    events = [event for session in sessions for event in session.events]
    messages = [StoredMessage("t", 0, n, catalog.encode(kind, value)) for n, (kind, value) in enumerate(events)]
    plan = plan_batch(messages, catalog)
    assert not plan.dead_letters
    assert insert_plan(client, plan, catalog) == []


@pytest.fixture
def seeded(chdb_path: str) -> Iterator[tuple[Client, Session, Session]]:
    client = open_store(chdb_path)
    try:
        migrate(client)
        job, serving = seed()
        store_sessions(client, job, serving)
        yield client, job, serving
    finally:
        client.close()


def nodes(rows: list[dict[str, Any]]) -> set[str]:
    return {row["node"] for row in rows}


def test_lineage_walks_answer_deletion_requests_and_model_provenance(seeded: tuple[Client, Session, Session]) -> None:
    client, _, _ = seeded
    # Data deletion: every prediction served by a model trained (transitively) on the raw dataset.
    assert nodes(queries.lineage(client, "downstream", f"dataset:{RAW}", kinds=["prediction"])) == {
        "prediction:p1", "prediction:p2",
    }
    assert nodes(queries.lineage(client, "downstream", f"dataset:{OTHER}", kinds=["prediction"])) == {"prediction:p3"}
    downstream = queries.lineage(client, "downstream", f"dataset:{RAW}")
    assert nodes(downstream) == {
        "run:run-prep", f"dataset:{CLEAN}", "run:run-train", "feature_set:fs-1", "model:churn@3",
        "deployment:prod:/predict", "prediction:p1", "prediction:p2",
    }
    assert {row["node"]: row["depth"] for row in downstream}["model:churn@3"] == 2  # raw -> clean -> model
    # Every dataset and code commit behind the model version.
    assert nodes(queries.lineage(client, "upstream", "model:churn@3", kinds=["dataset", "commit"])) == {
        f"dataset:{CLEAN}", f"dataset:{RAW}", "commit:git@x:ml.git@c1", "commit:git@x:ml.git@c2",
    }
    assert nodes(queries.lineage(client, "upstream", "prediction:p3")) == {
        "model:other@1", "run:run-other", f"dataset:{OTHER}",
    }
    assert queries.lineage(client, "downstream", "prediction:p1") == []
    with pytest.raises(ValueError, match="not a lineage node"):
        queries.lineage(client, "upstream", "churn@3")


def test_trace_runs_models_and_drift_answers(seeded: tuple[Client, Session, Session]) -> None:
    client, _, _ = seeded
    found = queries.trace(client, "p1")
    assert found is not None
    assert (found["model_name"], found["model_version"], found["training_run_id"]) == ("churn", "3", "run-train")
    assert (found["code_commit"], found["dataset_digests"]) == ("c2", [CLEAN])

    all_runs = queries.runs(client, queries.Filters())
    assert [(r["run_id"], r["state"], r["owner"], r["code_commit"]) for r in all_runs] == [
        ("run-other", "FAILED", "bo", None), ("run-train", "COMPLETED", "ana", "c2"),
        ("run-prep", "COMPLETED", "ana", "c1"),
    ]
    assert [r["run_id"] for r in queries.runs(client, queries.Filters(owner="bo"))] == ["run-other"]
    assert [r["run_id"] for r in queries.runs(client, queries.Filters(since=T0 + timedelta(minutes=3)))] == [
        "run-other", "run-train",
    ]
    assert queries.runs(client, queries.Filters(project="nobody")) == []

    churn = queries.models(client, queries.Filters(), model="churn")
    assert len(churn) == 1
    assert {k: churn[0][k] for k in ("model_version", "run_id", "owner", "environment", "last_action",
                                     "evaluations", "evaluations_passed", "project")} == {
        "model_version": "3", "run_id": "run-train", "owner": "ana", "environment": "prod", "last_action": "DEPLOY",
        "evaluations": 1, "evaluations_passed": 1, "project": "train-churn",
    }
    assert [m["model_name"] for m in queries.models(client, queries.Filters(owner="bo"))] == ["other"]

    rows = queries.drift(client, "churn", queries.Filters())
    assert [(r["feature"], r["metric"], r["value"], r["threshold"], r["breached"], r["sample_size"]) for r in rows] == [
        ("age", "psi", 0.05, 0.2, False, 500), ("plan", "psi", 0.4, 0.2, True, 500),
    ]
    assert [r["feature"] for r in queries.drift(client, "churn", queries.Filters(), breached_only=True)] == ["plan"]
    assert queries.drift(client, "churn", queries.Filters(), version="9") == []
    index = client.query("SELECT prediction_id FROM prediction_index WHERE model_name = 'churn' ORDER BY 1")
    assert index.result_rows == [("p1",), ("p2",)]


def session_findings(client: Client, session: Session) -> list[tuple[str, str, str]]:
    """(problem, event id, table) of what verify finds in one session, as ``provline verify`` runs it."""
    report = verify_store(client, default_catalog(), Trust(), sessions=[session.producer["session_id"]])
    return sorted((f.problem, f.event_id, f.table) for f in report.findings)


def set_raw(client: Client, table: str, event_id: str, raw: bytes) -> None:
    client.command(
        f"ALTER TABLE {table} UPDATE raw = unhex({{hex:String}}) WHERE event_id = {{id:String}}",
        parameters={"hex": raw.hex(), "id": event_id}, settings={"mutations_sync": 2},
    )


def stored_raw(client: Client, table: str, event_id: str) -> bytes:
    return client.query(f"SELECT raw FROM {table} WHERE event_id = {{id:String}}", parameters={"id": event_id},
                        column_formats={"raw": "bytes"}).result_rows[0][0]


def test_verify_passes_on_untouched_store_and_names_a_single_altered_byte(
    seeded: tuple[Client, Session, Session],
) -> None:
    client, job, serving = seeded
    assert session_findings(client, job) == [] and session_findings(client, serving) == []
    model = job.events[5][1]
    raw = bytearray(stored_raw(client, "model_versions", model["event_id"]))
    at = raw.index(b"s3://m/churn/3") + len(b"s3://m/churn/")
    raw[at] = ord("4")  # one byte: the artifact URI now says churn/4
    set_raw(client, "model_versions", model["event_id"], bytes(raw))
    assert session_findings(client, job) == [  # the bytes, and the stored column they no longer give
        ("altered", model["event_id"], "model_versions"), ("columns", model["event_id"], "model_versions"),
    ]
    assert session_findings(client, serving) == []


def test_verify_names_the_record_after_a_deleted_event(seeded: tuple[Client, Session, Session]) -> None:
    client, job, _ = seeded
    deleted = job.events[2][1]
    client.command("ALTER TABLE dataset_versions DELETE WHERE event_id = {id:String}",
                   parameters={"id": deleted["event_id"]}, settings={"mutations_sync": 2})
    assert session_findings(client, job) == sorted([
        ("missing", deleted["event_id"], "dataset_versions"),  # the ledger saw it stored
        ("missing", job.events[3][1]["event_id"], ""),  # the next event links to it
    ])
    # A dead letter forged for the deleted event (anyone who can produce to the dead-letter topic) does not
    # excuse the gap: the ledger recorded the event stored.
    store_dead_letter(client, default_catalog().encode("DatasetVersion", deleted), {REASON: "TooLarge"})
    assert client.query("SELECT count() FROM dead_letters").result_rows == [(1,)]
    assert session_findings(client, job) == sorted([
        ("missing", deleted["event_id"], "dataset_versions"), ("missing", job.events[3][1]["event_id"], ""),
    ])


def store_dead_letter(client: Client, value: bytes | None, headers: dict[str, str]) -> None:
    """One message of the dead-letter topic, stored as the sink's writer stores it."""
    named = [(name, text.encode()) for name, text in headers.items()]
    catalog = default_catalog()
    plan = plan_batch([StoredMessage("dlq", 0, 0, value, headers=named)], catalog, dead_letter_topic="dlq")
    assert insert_plan(client, plan, catalog) == []


def test_verify_names_the_place_of_an_event_that_was_dead_lettered_not_stored(chdb_path: str) -> None:
    job, _ = seed()
    never_stored = job.events[2][1]
    job.events = [event for event in job.events if event[1] is not never_stored]
    client = open_store(chdb_path)
    try:
        migrate(client)
        store_sessions(client, job)
        assert session_findings(client, job) == [("missing", job.events[2][1]["event_id"], "")]
        store_dead_letter(client, None, {
            REASON: "TooLarge", ERROR: "larger than max.message.bytes", EVENT_ID: never_stored["event_id"],
            EVENT_HASH: never_stored["hash"], EVENT_SESSION: job.producer["session_id"],
            SOURCE_TOPIC: "provline.lineage.v1"})
        [finding] = verify_store(client, default_catalog(), Trust(), sessions=[job.producer["session_id"]]).findings
        assert (finding.problem, finding.event_id) == ("dead-lettered", job.events[2][1]["event_id"])
        assert never_stored["hash"][:16] in finding.detail
        assert "TooLarge: larger than max.message.bytes" in finding.detail
        # a dead letter of another session does not name this one's gap
        client.command("TRUNCATE TABLE dead_letters")
        store_dead_letter(client, None, {REASON: "TooLarge", EVENT_HASH: never_stored["hash"], EVENT_SESSION: "other"})
        assert session_findings(client, job) == [("missing", job.events[2][1]["event_id"], "")]
    finally:
        client.close()


def test_verify_names_a_swapped_pair(seeded: tuple[Client, Session, Session]) -> None:
    client, job, _ = seeded
    first, second = job.events[3][1], job.events[4][1]  # a RunEvent and the FeatureSetVersion after it
    first_raw = stored_raw(client, "run_events", first["event_id"])
    second_raw = stored_raw(client, "feature_set_versions", second["event_id"])
    set_raw(client, "run_events", first["event_id"], second_raw)
    set_raw(client, "feature_set_versions", second["event_id"], first_raw)
    assert session_findings(client, job) == [
        ("columns", first["event_id"], "run_events"), ("columns", second["event_id"], "feature_set_versions"),
    ]


TOKENS = {"vic": ("v" * 32, "viewer"), "ann": ("a" * 32, "auditor"), "root": ("r" * 32, "admin")}


def api_settings(chdb_path: str, **extra: Any) -> ServeSettings:
    grants = {name: {"token": token, "role": role} for name, (token, role) in TOKENS.items()}
    return ServeSettings(store={"url": chdb_path}, api={"tokens": grants}, **extra)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


def test_api_refuses_missing_wrong_tokens_and_roles_and_logs_every_request(
    seeded: tuple[Client, Session, Session], chdb_path: str,
) -> None:
    client, _, _ = seeded
    http = TestClient(create_api(api_settings(chdb_path), client))
    sql = {"sql": "SELECT count() AS n FROM prediction_traces"}
    calls = [
        ("GET", "/v1/traces/p1", {}, None, 401),
        ("GET", "/v1/traces/p1", {"Authorization": "Bearer " + "x" * 32}, None, 401),
        ("GET", "/v1/traces/p1", {"Authorization": "Basic " + TOKENS["ann"][0]}, None, 401),
        ("GET", "/v1/traces/p1", bearer("vic"), None, 200),
        ("GET", "/v1/traces/p1?raw=true", bearer("vic"), None, 403),
        ("GET", "/v1/traces/p1?raw=true", bearer("ann"), None, 200),
        ("POST", "/v1/sql", bearer("vic"), sql, 403),
        ("POST", "/v1/sql", bearer("ann"), sql, 200),
        ("GET", "/v1/lineage/downstream?node=dataset:sha256:raw&kinds=prediction", bearer("vic"), None, 200),
        ("GET", "/v1/verify", bearer("vic"), None, 403),
        ("GET", "/v1/verify", bearer("ann"), None, 200),
        ("GET", "/v1/access-log", bearer("ann"), None, 403),
    ]
    replies = []
    for method, path, headers, body, status in calls:
        reply = http.request(method, path, headers=headers, json=body)
        assert reply.status_code == status, (path, headers, reply.text)
        replies.append(reply)
    assert replies[0].headers["www-authenticate"] == "Bearer"
    assert "raw_events" not in replies[3].json()
    raw_events = replies[5].json()["raw_events"]
    assert {e["kind"] for e in raw_events} == {"PredictionTrace", "InferenceRequest", "ModelVersion", "RunEvent"}
    assert nodes(replies[8].json()["nodes"]) == {"prediction:p1", "prediction:p2"}
    assert replies[10].json()["findings"] == [] and replies[10].json()["sessions"] == 2

    log_reply = http.get("/v1/access-log?limit=100", headers=bearer("root"))
    assert log_reply.status_code == 200
    logged = [dict(zip(log_reply.json()["columns"], row, strict=True)) for row in log_reply.json()["rows"]]
    logged.sort(key=lambda row: row["time"])
    assert len(logged) == len(calls)  # the admin's own request is logged after its answer is built
    for row, (method, path, _, _, status), reply in zip(logged, calls, replies, strict=True):
        assert (row["method"], row["path"], row["status"]) == (method, path.split("?")[0], status)
        assert row["allowed"] == (status not in (401, 403))
        assert row["response_bytes"] == len(reply.content)
    assert [row["reader"] for row in logged[:4]] == ["", "", "", "vic"]
    assert logged[5]["query"] == "raw=true" and logged[5]["role"] == "auditor"
    after = client.query("SELECT reader, path, status FROM access_log ORDER BY time DESC LIMIT 1").result_rows
    assert after == [("root", "/v1/access-log", 200)]
    openapi = http.get("/openapi.json").json()
    assert openapi["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"/v1/traces/{prediction_id}", "/v1/lineage/{direction}", "/v1/runs", "/v1/models", "/v1/drift/{model}",
            "/v1/sql", "/v1/evidence/{subject}", "/v1/verify", "/v1/access-log"} <= set(openapi["paths"])


def test_verifications_through_the_api_are_counted_by_outcome(seeded: tuple[Client, Session, Session],
                                                               chdb_path: str) -> None:
    """provline_sink_verify_runs_total{outcome}: what alerts.yml's ProvlineVerifyFindings pages on."""
    from prometheus_client import REGISTRY

    def runs(outcome: str) -> float:
        return REGISTRY.get_sample_value("provline_sink_verify_runs_total", {"outcome": outcome}) or 0.0

    client, job, _ = seeded
    http = TestClient(create_api(api_settings(chdb_path), client))
    clean, findings = runs("clean"), runs("findings")
    assert http.get("/v1/verify", headers=bearer("ann")).json()["findings"] == []
    assert (runs("clean"), runs("findings")) == (clean + 1, findings)
    model = job.events[5][1]
    altered = stored_raw(client, "model_versions", model["event_id"]).replace(b"s3://m/churn/3", b"s3://m/churn/4")
    set_raw(client, "model_versions", model["event_id"], altered)
    assert http.get("/v1/verify", headers=bearer("ann")).json()["findings"]
    assert (runs("clean"), runs("findings")) == (clean + 1, findings + 1)


def test_api_refuses_everything_without_configured_tokens(seeded: tuple[Client, Session, Session],
                                                         chdb_path: str) -> None:
    client, _, _ = seeded
    http = TestClient(create_api(ServeSettings(store={"url": chdb_path}), client))
    assert http.get("/v1/traces/p1", headers=bearer("root")).status_code == 401
    assert http.get("/healthz").status_code == 200
    assert client.query("SELECT count() FROM access_log").result_rows == [(1,)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_evidence_bundles_are_self_contained_signed_and_verified_offline(
    seeded: tuple[Client, Session, Session], fmt: str,
) -> None:
    client, job, _ = seeded
    catalog = default_catalog()
    key = Ed25519PrivateKey.generate()
    evidence = gather(client, "p1")
    stored_ids = {e["event_id"] for e in evidence["events"]}
    # the trace, the request, the model version, both training runs, both datasets, evaluation, decision...
    for index in (1, 2, 3, 5, 6, 7, 8):
        assert job.events[index][1]["event_id"] in stored_ids, job.events[index][0]
    assert job.events[10][1]["event_id"] not in stored_ids  # the unrelated model
    assert [d["outcome"] for d in evidence["decisions"]] == ["APPROVED"]

    files = build_bundle(evidence, fmt, catalog, signer=key)
    assert set(files) == {FORMATS[fmt], EVENTS, MANIFEST, "manifest.sig"}
    assert verify_bundle(files, catalog, public_key=key.public_key()) == []
    if fmt == "prov":
        document = json.loads(files[FORMATS[fmt]])
        assert "pl:run/run-train" in document["activity"]
        assert any(e.endswith("sha256%3Araw") for e in document["entity"])
    if fmt == "openlineage":
        runs = json.loads(files[FORMATS[fmt]])
        assert {(r["job"]["name"], r["eventType"]) for r in runs} == {("prep", "COMPLETE"), ("train", "COMPLETE")}
        train = next(r for r in runs if r["job"]["name"] == "train")
        assert [e["modelVersion"] for e in train["run"]["facets"]["mlEvaluation"]["evaluations"]] == ["3"]
        assert [o["facets"]["mlModel"]["artifactSha256"] for o in train["outputs"]] == ["a" * 64]

    tampered = dict(files)
    tampered[FORMATS[fmt]] = files[FORMATS[fmt]].replace(b"run-train", b"run-trian", 1)
    assert any("was altered" in p for p in verify_bundle(tampered, catalog))
    other_key = Ed25519PrivateKey.generate().public_key()
    assert any("does not verify" in p for p in verify_bundle(files, catalog, public_key=other_key))
    lines = files[EVENTS].decode().splitlines()
    event = json.loads(lines[0])
    raw = bytearray(base64.b64decode(event["raw"]))
    raw[-1] ^= 0x01
    event["raw"] = base64.b64encode(bytes(raw)).decode()
    forged = dict(files, **{EVENTS: ("\n".join([json.dumps(event, sort_keys=True), *lines[1:]]) + "\n").encode()})
    problems = verify_bundle(forged, catalog)
    assert any(p.startswith(EVENTS) and "altered" in p for p in problems)  # the manifest catches it


def test_evidence_for_a_model_version_and_unknown_subjects(seeded: tuple[Client, Session, Session]) -> None:
    from provline.sink.evidence import BundleError

    client, _, _ = seeded
    evidence = gather(client, "churn@3")
    assert f"dataset:{RAW}" in evidence["lineage"]["nodes"] and evidence["trace"] is None
    assert [d["action"] for d in evidence["deployments"]] == ["DEPLOY"]
    with pytest.raises(BundleError, match="no trace stored"):
        gather(client, "nope")
    with pytest.raises(BundleError, match="no model version"):
        gather(client, "churn@99")


def test_a_trace_answers_what_the_exchange_was_and_is_found_by_the_clients_request_id(chdb_path: str) -> None:
    """Issue 14, item 12: the answer lacked request_time, features, outputs and the deployment, and a
    client's V2 request id / MLServer's ce-requestid led nowhere."""
    client = open_store(chdb_path)
    try:
        migrate(client)
        serving = Session("sidecar")
        request_time, response_time = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
        rows = [{"sepal_length": 5.1, "species": "setosa"}, {"sepal_length": 6.2, "species": "virginica"}]
        for prediction, request_id in (("p-v2", "req-7"), ("p-dup-1", "shared"), ("p-dup-2", "shared")):
            serving.add("PredictionTrace", prediction_id=prediction, endpoint="/v2/models/iris/infer", complete=True,
                        model_name="iris", model_version="1", request_time=request_time, response_time=response_time,
                        features=rows[0], outputs={"predict": 0.0}, feature_rows=rows,
                        output_rows=[{"predict": 0.0}, {"predict": 2.0}], row_count=2, request_id=request_id,
                        deployment_event_id="dep-1", request_event_id="rq", response_event_id="rs")
        store_sessions(client, serving)
        found = queries.trace(client, "p-v2")
        assert found is not None
        assert found["request_time"].startswith("2025-05-01T09:00:01") and found["deployment_event_id"] == "dep-1"
        assert found["features"] == rows[0] and found["feature_rows"] == rows and found["row_count"] == 2
        assert found["output_rows"][1] == {"predict": 2.0} and found["request_id"] == "req-7"
        assert queries.predictions_with_request_id(client, "req-7") == ["p-v2"]
        assert sorted(queries.predictions_with_request_id(client, "shared")) == ["p-dup-1", "p-dup-2"]
        assert queries.predictions_with_request_id(client, "nobody's") == []
        http = TestClient(create_api(api_settings(chdb_path), client))
        answer = http.get("/v1/predictions", params={"request_id": "req-7"}, headers=bearer("vic"))
        assert answer.status_code == 200 and answer.json()["prediction_ids"] == ["p-v2"]
        assert http.get("/v1/predictions", params={"request_id": "req-7"}).status_code == 401
    finally:
        client.close()


def test_drift_answers_name_the_model_the_p_value_and_the_baseline(seeded: tuple[Client, Session, Session]) -> None:
    client, _, serving = seeded
    serving.add("DriftMetric", model_name="churn", model_version="3", feature="tenure", metric="ks",
                window_start=T0, window_end=T0 + timedelta(hours=1), value=0.3, p_value=0.001, threshold=0.05,
                breached=True, sample_size=500, baseline_dataset=CLEAN)
    store_sessions(client, serving)
    [row] = queries.drift(client, "churn", queries.Filters(), breached_only=True, version="3")[-1:]
    assert (row["model_name"], row["model_version"], row["p_value"], row["baseline_dataset"]) == (
        "churn", "3", 0.001, CLEAN)


def test_predictions_of_a_model_are_found_in_the_engine_by_version_and_time_newest_first(chdb_path: str) -> None:
    """Issue 18: the console found a model's predictions by walking lineage and filtered their time in the
    browser, so it saw only the first 100 of them; the engine now answers model, version and window."""
    client = open_store(chdb_path)
    try:
        migrate(client)
        serving = Session("sidecar")
        made: dict[str, datetime] = {}
        for n in range(130):  # more than the console's 100, two versions, one minute apart
            version = "2" if n % 2 else "1"
            value = serving.add("PredictionTrace", prediction_id=f"p-{n:03d}", endpoint="/predict", complete=True,
                                model_name="churn", model_version=version, status=200)
            made[value["prediction_id"]] = value["event_time"]
        serving.add("PredictionTrace", prediction_id="q-1", endpoint="/predict", complete=True,
                    model_name="churn-eu", model_version="1", status=200)
        store_sessions(client, serving)
        newest_first = sorted(made, key=lambda pid: made[pid], reverse=True)
        version_2 = [pid for pid in newest_first if int(pid[2:]) % 2]
        window = (made["p-020"], made["p-029"])

        every = queries.predictions_of_model(client, "churn", limit=1000)
        assert (every.prediction_ids, every.truncated) == (newest_first, False)
        assert queries.predictions_of_model(client, "churn", "2", limit=1000).prediction_ids == version_2
        first = queries.predictions_of_model(client, "churn", limit=100)
        assert (first.prediction_ids, first.truncated) == (newest_first[:100], True)
        in_window = queries.predictions_of_model(client, "churn", since=window[0], until=window[1])
        assert in_window.prediction_ids == [f"p-{n:03d}" for n in range(29, 19, -1)]

        http = TestClient(create_api(api_settings(chdb_path), client))
        answer = http.get("/v1/predictions", headers=bearer("vic"), params={
            "model": "churn@2", "since": window[0].isoformat(), "until": window[1].replace(tzinfo=None).isoformat()})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"model": "churn@2", "truncated": False,
                                 "prediction_ids": [f"p-{n:03d}" for n in range(29, 20, -2)]}
        assert http.get("/v1/predictions", headers=bearer("vic"), params={"model": "churn", "limit": 5}).json()[
            "prediction_ids"] == newest_first[:5]
        for params in ({"model": "churn", "request_id": "r"}, {}, {"model": "@3"}, {"model": "churn", "limit": 0},
                       {"model": "churn", "since": "yesterday"}):
            refused = http.get("/v1/predictions", headers=bearer("vic"), params=params)
            assert refused.status_code in (400, 422), (params, refused.status_code, refused.text)
        assert http.get("/v1/predictions", params={"model": "churn"}).status_code == 401
    finally:
        client.close()
