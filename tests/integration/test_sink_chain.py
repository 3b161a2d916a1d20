"""The complete trace (issue 18): ``GET /v1/traces/{id}`` answers the whole chain of custody, every
record with its event id and verification status, on real chDB through the real API.

A training job, the serving side and a feedback writer, each signing with its own key, store a full
chain through the sink's own planning and insert path: datasets with license and PII tags, a feature
set with code references, a run with code, environment, hyperparameters and seeds, two model
versions, an evaluation, an approval, two deployments (the second replacing the first), a request,
its response and trace, and ground truth. Then records are tampered with as an attacker with write
access to ClickHouse would (tests/security/test_tamper.py), and only those come out not_verified.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.sink import anchor, queries
from provline.sink.api import create_api
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.verifier import anchor_heads
from provline.sink.verify import Trust
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage, seal

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RAW, CLEAN = "sha256:" + "1" * 64, "sha256:" + "2" * 64
FS = "sha256:" + "f" * 64
BODY = b'{"age": 41, "plan": "gold"}'
TOKENS = {"vic": ("v" * 32, "viewer"), "ann": ("a" * 32, "auditor")}
KEYS = {name: Ed25519PrivateKey.generate() for name in ("train-churn", "sidecar", "stream_processors")}


def public_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


class Session:
    def __init__(self, name: str, clock: datetime) -> None:
        self.chain = HashChain(default_catalog(), signer=KEYS[name])
        self.producer = producer_identity(name, f"{name}-{uuid.uuid4().hex[:6]}")
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.clock = clock

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.clock += timedelta(minutes=1)
        value = seal(self.chain, kind, {**new_envelope(self.producer, event_time=self.clock), **fields})
        self.events.append((kind, value))
        return value


CODE = {"repo": "git@x:ml.git", "commit": "c0ffee12", "branch": "main", "dirty": True, "diff_sha256": "d" * 64,
        "entrypoint": "train.py", "argv": ["--epochs", "3"]}
ENVIRONMENT = {"python": "3.11.9", "packages": {"numpy": "2.1.0", "scikit-learn": "1.5.2"},
               "packages_sha256": "9" * 64, "os": "Linux", "cpu": "x86_64", "cpu_count": 8,
               "container_image": "ghcr.io/acme/train:1.4", "container_digest": "sha256:" + "c" * 64,
               "gpus": ["NVIDIA A10"], "env_vars": {"USER": "ana"}}


def seed() -> tuple[list[tuple[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    job = Session("train-churn", T0)
    e: dict[str, dict[str, Any]] = {}
    e["raw"] = job.add("DatasetVersion", name="raw", digest=RAW, license="CC-BY-4.0", consent="contract",
                       pii_tags=["email", "postcode"], sources=["s3://lake/raw"], row_count=1000)
    e["clean"] = job.add("DatasetVersion", name="clean", digest=CLEAN, parents=[RAW], license="CC-BY-4.0",
                         pii_tags=["postcode"], row_count=990)
    e["features"] = job.add("FeatureSetVersion", name="churn-features", digest=FS, input_datasets=[CLEAN], features=[
        {"name": "age", "dtype": "float", "code": {"repo": "git@x:ml.git", "commit": "c0ffee12",
                                                   "path": "features.py", "symbol": "age_years"},
         "parameters": {"nulls": "median"}}])
    e["started"] = job.add("RunEvent", run_id="run-train", name="train", state="STARTED", inputs=[CLEAN],
                           code=CODE, environment=ENVIRONMENT, hyperparameters={"lr": "0.1", "depth": "6"},
                           seeds={"numpy": 42})
    e["completed"] = job.add("RunEvent", run_id="run-train", name="train", state="COMPLETED", inputs=[CLEAN],
                             outputs=["churn@3"], metrics={"auc": 0.91})
    e["model2"] = job.add("ModelVersion", model_name="churn", version="2", artifact_uri="s3://m/churn/2",
                          artifact_sha256="b" * 64, run_id="run-old", datasets=[RAW])
    e["model"] = job.add("ModelVersion", model_name="churn", version="3", artifact_uri="s3://m/churn/3",
                         artifact_sha256="a" * 64, run_id="run-train", datasets=[CLEAN], feature_sets=[FS])
    e["evaluation"] = job.add("Evaluation", model_name="churn", model_version="3", dataset=CLEAN, passed=True,
                              metrics=[{"name": "auc", "value": 0.91, "threshold": 0.85, "passed": True}])
    e["approval"] = job.add("Decision", subject="model:churn@3", transition="staging->production",
                            outcome="APPROVED", actor="rita", role="risk", rationale="auc above 0.85 on clean")
    e["deploy2"] = job.add("Deployment", model_name="churn", model_version="2", environment="prod",
                           endpoint="/predict", action="DEPLOY")
    e["deploy3"] = job.add("Deployment", model_name="churn", model_version="3", environment="prod",
                           endpoint="/predict", action="PROMOTE", previous_version="2", reason="better auc")
    serving = Session("sidecar", job.clock)
    e["request"] = serving.add("InferenceRequest", prediction_id="p1", endpoint="/predict", method="POST",
                               path="/predict", model_name="churn", model_version="3", body_size=len(BODY),
                               body_sha256=hashlib.sha256(BODY).hexdigest(), body=BODY, body_truncated=False,
                               features={"age": 41.0, "plan": "gold"}, content_type="application/json")
    e["response"] = serving.add("InferenceResponse", prediction_id="p1", endpoint="/predict", status=200,
                                body_size=13, body_sha256="e" * 64, body=b'{"churn": 0.7}', latency_us=900,
                                outputs={"churn": 0.7})
    processors = Session("stream_processors", serving.clock)
    e["trace"] = processors.add(
        "PredictionTrace", prediction_id="p1", endpoint="/predict", complete=True, model_name="churn",
        model_version="3", artifact_sha256="a" * 64, training_run_id="run-train", dataset_digests=[CLEAN],
        feature_sets=[FS], request_sha256=hashlib.sha256(BODY).hexdigest(), status=200,
        request_time=e["request"]["event_time"], response_time=e["response"]["event_time"],
        deployment_event_id=e["deploy3"]["event_id"], request_event_id=e["request"]["event_id"],
        response_event_id=e["response"]["event_id"], features={"age": 41.0, "plan": "gold"},
        outputs={"churn": 0.7})
    e["feedback"] = serving.add("Feedback", prediction_id="p1", label="churned", source="crm",
                                observed_time=processors.clock + timedelta(days=30))
    return job.events + serving.events + processors.events, e


@pytest.fixture
def stored(chdb_path: str) -> Iterator[tuple[Client, TestClient, dict[str, dict[str, Any]]]]:
    client = open_store(chdb_path)
    try:
        migrate(client)
        events, by_name = seed()
        catalog = default_catalog()
        messages = [StoredMessage("t", 0, n, catalog.encode(kind, value)) for n, (kind, value) in enumerate(events)]
        plan = plan_batch(messages, catalog)
        assert not plan.dead_letters
        assert insert_plan(client, plan, catalog) == []
        settings = ServeSettings(
            store={"url": chdb_path},
            api={"tokens": {name: {"token": token, "role": role} for name, (token, role) in TOKENS.items()}},
            evidence={"trusted_keys": {name: [public_text(key)] for name, key in KEYS.items()}},
        )
        yield client, TestClient(create_api(settings, client)), by_name
    finally:
        client.close()


def answer(http: TestClient, reader: str = "vic", prediction: str = "p1") -> dict[str, Any]:
    response = http.get(f"/v1/traces/{prediction}", headers={"Authorization": f"Bearer {TOKENS[reader][0]}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def by_id(chain: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in chain["nodes"]}


def test_the_trace_answers_the_whole_chain_every_record_verified(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    _, http, e = stored
    found = answer(http)
    # the fields answered before issue 18 are unchanged
    assert (found["model_name"], found["model_version"], found["training_run_id"]) == ("churn", "3", "run-train")
    assert (found["code_commit"], found["dataset_digests"]) == ("c0ffee12", [CLEAN])
    assert found["sources"]["trace"] == e["trace"]["event_id"]
    chain = found["chain"]
    nodes = by_id(chain)
    prediction, model, run = "prediction:p1", "model:churn@3", "run:run-train"
    commit, environment = "commit:git@x:ml.git@c0ffee12", "environment:run-train"
    dataset, feature_set = f"dataset:{CLEAN}", f"feature_set:{FS}"
    evaluation, approval = f"evaluation:{e['evaluation']['event_id']}", f"approval:{e['approval']['event_id']}"
    deployed, replaced = f"deployment:{e['deploy3']['event_id']}", f"deployment:{e['deploy2']['event_id']}"
    truth = f"ground_truth:{e['feedback']['event_id']}"
    assert set(nodes) == {prediction, model, run, commit, environment, dataset, feature_set, evaluation, approval,
                          deployed, replaced, truth}
    assert {(x["from"], x["to"], x["relation"]) for x in chain["edges"]} == {
        (prediction, model, "served_by"), (model, run, "trained_by"), (run, commit, "code"),
        (run, environment, "environment"), (run, dataset, "trained_on"), (model, feature_set, "features"),
        (feature_set, dataset, "input"), (model, evaluation, "evaluated"), (model, approval, "approved"),
        (model, deployed, "deployed"), (deployed, replaced, "replaced"), (prediction, truth, "labelled"),
    }
    assert {n["id"]: n["kind"] for n in chain["nodes"]} == {
        prediction: "prediction", model: "model", run: "run", commit: "commit", environment: "environment",
        dataset: "dataset", feature_set: "feature_set", evaluation: "evaluation", approval: "approval",
        deployed: "deployment", replaced: "deployment", truth: "ground_truth",
    }
    assert all(len(n["label"]) <= 40 for n in chain["nodes"])
    # the nodes the lineage explorer walks have its ids: a chain node links to its up- and downstream
    walked = http.get("/v1/lineage/graph", params={"node": prediction, "direction": "upstream"},
                      headers={"Authorization": f"Bearer {TOKENS['vic'][0]}"})
    assert walked.status_code == 200, walked.text
    lineage_ids = {n["id"] for n in walked.json()["nodes"]}
    assert {model, run, dataset, feature_set} <= lineage_ids, lineage_ids
    # every record verified by its bytes, its ledger entry, its chain link and a trusted signature
    for n in chain["nodes"]:
        assert n["verification"]["status"] == "verified", (n["id"], n["verification"])
        assert (n["verification"]["hash_chain"], n["verification"]["signature"], n["verification"]["anchor"]) == (
            True, True, None)
    events = {prediction: "trace", model: "model", run: "completed", commit: "started", environment: "started",
              dataset: "clean", feature_set: "features", evaluation: "evaluation", approval: "approval",
              deployed: "deploy3", replaced: "deploy2", truth: "feedback"}
    assert {ident: nodes[ident]["event_id"] for ident in events} == {
        ident: e[name]["event_id"] for ident, name in events.items()}

    p = nodes[prediction]["fields"]
    assert p["request_body_sha256"] == hashlib.sha256(BODY).hexdigest() == p["request_sha256"]
    assert (p["features"], p["outputs"]) == ({"age": 41.0, "plan": "gold"}, {"churn": 0.7})
    assert p["request_time"] == e["request"]["event_time"].isoformat()
    assert {(r["kind"], r["event_id"], r["status"]) for r in p["records"]} == {
        ("InferenceRequest", e["request"]["event_id"], "verified"),
        ("InferenceResponse", e["response"]["event_id"], "verified")}
    assert "request_body" not in p  # a viewer never gets the payload
    m = nodes[model]["fields"]
    assert (m["version"], m["artifact_sha256"], m["artifact_uri"]) == ("3", "a" * 64, "s3://m/churn/3")
    r = nodes[run]["fields"]
    assert (r["state"], r["hyperparameters"], r["seeds"]) == ("COMPLETED", {"lr": "0.1", "depth": "6"}, {"numpy": 42})
    assert [s["state"] for s in r["states"]] == ["STARTED", "COMPLETED"]
    c = nodes[commit]["fields"]
    assert (c["repo"], c["commit"], c["dirty"], c["branch"]) == ("git@x:ml.git", "c0ffee12", True, "main")
    v = nodes[environment]["fields"]
    assert (v["python"], v["packages_sha256"], v["container_image"], v["container_digest"], v["cpu"], v["gpus"]) == (
        "3.11.9", "9" * 64, "ghcr.io/acme/train:1.4", "sha256:" + "c" * 64, "x86_64", ["NVIDIA A10"])
    d = nodes[dataset]["fields"]
    assert (d["digest"], d["license"], d["pii_tags"], d["consent"] is None) == (CLEAN, "CC-BY-4.0", ["postcode"], True)
    f = nodes[feature_set]["fields"]
    assert f["features"][0]["code"] == {"repo": "git@x:ml.git", "commit": "c0ffee12", "path": "features.py",
                                        "symbol": "age_years"}
    ev = nodes[evaluation]["fields"]
    assert ev["passed"] is True and ev["metrics"][0]["threshold"] == 0.85 and ev["metrics"][0]["passed"] is True
    a = nodes[approval]["fields"]
    assert (a["actor"], a["role"], a["rationale"], a["outcome"]) == ("rita", "risk", "auc above 0.85 on clean",
                                                                      "APPROVED")
    assert a["event_time"] == e["approval"]["event_time"].isoformat()
    assert (nodes[deployed]["fields"]["in_force"], nodes[deployed]["fields"]["model_version"]) == (True, "3")
    assert (nodes[replaced]["fields"]["in_force"], nodes[replaced]["fields"]["model_version"]) == (False, "2")
    g = nodes[truth]["fields"]
    assert (g["label"], g["source"]) == ("churned", "crm")


def test_an_auditor_gets_the_payload_a_viewer_does_not(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    _, http, _ = stored
    viewer = by_id(answer(http, "vic")["chain"])["prediction:p1"]["fields"]
    auditor = by_id(answer(http, "ann")["chain"])["prediction:p1"]["fields"]
    assert "request_body" not in viewer and "response_body" not in viewer
    assert base64.b64decode(auditor["request_body"]) == BODY
    assert base64.b64decode(auditor["response_body"]) == b'{"churn": 0.7}'
    assert {k: v for k, v in auditor.items() if not k.startswith(("request_body", "response_body"))} == {
        k: v for k, v in viewer.items() if not k.startswith(("request_body", "response_body"))}


def update(client: Client, table: str, assignments: str, event_id: str, **parameters: Any) -> None:
    client.command(f"ALTER TABLE {table} UPDATE {assignments} WHERE event_id = {{id:String}}",
                   parameters={"id": event_id, **parameters}, settings={"mutations_sync": 2})


def stored_raw(client: Client, table: str, event_id: str) -> bytes:
    return bytes(client.query(f"SELECT raw FROM {table} WHERE event_id = {{id:String}}", parameters={"id": event_id},
                              column_formats={"raw": "bytes"}).result_rows[0][0])


def statuses(chain: dict[str, Any]) -> dict[str, str]:
    return {n["id"]: n["verification"]["status"] for n in chain["nodes"]}


def test_a_tampered_record_is_shown_not_verified_and_the_rest_stay_verified(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    client, http, e = stored
    approval = f"approval:{e['approval']['event_id']}"
    assert statuses(answer(http)["chain"])[approval] == "verified"  # and the API keeps the checked registry
    raw = bytearray(stored_raw(client, "decisions", e["approval"]["event_id"]))
    at = raw.index(b"rita")
    raw[at] = ord("m")  # "mita" approved it
    update(client, "decisions", "raw = unhex({hex:String})", e["approval"]["event_id"], hex=raw.hex())
    chain = answer(http)["chain"]
    found = statuses(chain)
    assert found.pop(approval) == "not_verified"
    assert set(found.values()) == {"verified"}
    node = by_id(chain)[approval]
    assert node["event_id"] == e["approval"]["event_id"]  # shown, not hidden
    assert node["verification"]["hash_chain"] is False and "altered" in node["verification"]["detail"]


def test_a_payload_column_changed_under_intact_bytes_is_not_verified(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    """Finding 5 of issue 13: the payload an answer is read from, changed; raw untouched."""
    client, http, e = stored
    forged = "replaceOne(payload, '\"status\":200', '\"status\":500')"
    update(client, "prediction_traces", f"payload = {forged}", e["trace"]["event_id"])
    found = answer(http)
    assert found["status"] == 500  # the answer of before reads the payload column
    node = by_id(found["chain"])["prediction:p1"]
    assert node["fields"]["status"] == 200  # the chain reads the verified bytes
    assert node["verification"]["status"] == "not_verified"
    assert "payload" in node["verification"]["detail"]
    assert {s for ident, s in statuses(found["chain"]).items() if ident != "prediction:p1"} == {"verified"}


def test_a_deleted_predecessor_fails_the_link_of_the_record_after_it(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    """The evaluation was deleted everywhere (its table and the ledger): the approval after it no longer
    links to a recorded event; the evaluation itself is gone from the answer."""
    client, http, e = stored
    for table in ("evaluations", "event_ledger"):
        client.command(f"ALTER TABLE {table} DELETE WHERE event_id = {{id:String}}",
                       parameters={"id": e["evaluation"]["event_id"]}, settings={"mutations_sync": 2})
    chain = answer(http)["chain"]
    found = statuses(chain)
    assert f"evaluation:{e['evaluation']['event_id']}" not in found
    approval = by_id(chain)[f"approval:{e['approval']['event_id']}"]["verification"]
    assert approval["status"] == "not_verified" and "not recorded" in approval["detail"]
    assert found.pop(f"approval:{e['approval']['event_id']}") == "not_verified"
    assert set(found.values()) == {"verified"}


def test_an_unknown_prediction_is_404(stored: tuple[Client, TestClient, dict[str, dict[str, Any]]]) -> None:
    _, http, _ = stored
    response = http.get("/v1/traces/nope", headers={"Authorization": f"Bearer {TOKENS['vic'][0]}"})
    assert response.status_code == 404


def test_a_request_column_an_answer_reads_changed_is_not_verified(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    """body_sha256 of the request row changed, its bytes untouched (finding 5 of issue 13)."""
    client, http, e = stored
    update(client, "inference_requests", "body_sha256 = {h:String}", e["request"]["event_id"], h="f" * 64)
    node = by_id(answer(http)["chain"])["prediction:p1"]
    assert node["verification"]["status"] == "not_verified" and "body_sha256" in node["verification"]["detail"]
    assert {r["kind"]: r["status"] for r in node["fields"]["records"]} == {
        "InferenceRequest": "not_verified", "InferenceResponse": "verified"}
    assert node["fields"]["request_body_sha256"] == hashlib.sha256(BODY).hexdigest()  # the bytes' own


# Issue 18: every record's anchor status, from the anchors `provline anchor` published (read by serve).

ANCHOR_KEY = Ed25519PrivateKey.generate()


def publish_anchor(client: Client, directory: Path, key: Ed25519PrivateKey = ANCHOR_KEY) -> dict[str, Any]:
    """An anchor of the store as it is now, signed and published as ``provline anchor`` does it."""
    heads = anchor_heads(client)
    assert all(head["intact"] for head in heads)
    document = anchor.build(anchor.anchored_sessions(heads), key)
    anchor.publish(document, str(directory))
    return document


def store_events(client: Client, events: list[tuple[str, dict[str, Any]]]) -> None:
    catalog = default_catalog()
    messages = [StoredMessage("t", 0, n, catalog.encode(kind, value)) for n, (kind, value) in enumerate(events)]
    plan = plan_batch(messages, catalog)
    assert not plan.dead_letters and insert_plan(client, plan, catalog) == []


def api_reading_anchors(client: Client, chdb_path: str, directory: Path,
                        key: Ed25519PrivateKey = ANCHOR_KEY) -> TestClient:
    settings = ServeSettings(
        store={"url": chdb_path},
        api={"tokens": {name: {"token": token, "role": role} for name, (token, role) in TOKENS.items()}},
        evidence={"trusted_keys": {name: [public_text(k)] for name, k in KEYS.items()}},
        anchor={"destination": str(directory), "public_keys": [public_text(key)]},
    )
    return TestClient(create_api(settings, client))


def anchors_of(chain: dict[str, Any]) -> dict[str, str]:
    return {n["id"]: n["verification"]["anchor"]["status"] for n in chain["nodes"]}


def test_each_record_says_whether_an_anchor_covers_it(chdb_path: str, tmp_path: Path) -> None:
    client = open_store(chdb_path)
    try:
        migrate(client)
        events, e = seed()
        feedback = next(event for event in events if event[0] == "Feedback")
        store_events(client, [event for event in events if event is not feedback])
        first = publish_anchor(client, tmp_path / "anchors")
        store_events(client, [feedback])  # stored after the anchor

        chain = answer(api_reading_anchors(client, chdb_path, tmp_path / "anchors"))["chain"]
        found = anchors_of(chain)
        truth = f"ground_truth:{e['feedback']['event_id']}"
        assert found.pop(truth) == "pending"
        assert set(found.values()) == {"anchored"}, {k: v for k, v in found.items() if v != "anchored"}
        head = by_id(chain)[f"deployment:{e['deploy3']['event_id']}"]["verification"]
        assert head["anchor"]["created"] == first["created"] and head["anchor"]["root"] == first["root"]
        assert "its session's head" in head["detail"]
        covered = by_id(chain)[f"approval:{e['approval']['event_id']}"]["verification"]
        assert "covered by the anchor" in covered["detail"] and covered["status"] == "verified"
        assert "the next anchor covers it" in by_id(chain)[truth]["verification"]["detail"]

        publish_anchor(client, tmp_path / "anchors")  # the next anchor: read by a serve started now
        assert set(anchors_of(answer(api_reading_anchors(client, chdb_path, tmp_path / "anchors"))["chain"])
                   .values()) == {"anchored"}

        # an anchor signed by a key serve does not trust vouches for nothing
        untrusting = api_reading_anchors(client, chdb_path, tmp_path / "anchors", key=Ed25519PrivateKey.generate())
        assert set(anchors_of(answer(untrusting)["chain"]).values()) == {"unanchored"}

        # the training job's anchored head deleted from the store and its ledger: its records say so
        for table in ("deployments", "event_ledger"):
            client.command(f"ALTER TABLE {table} DELETE WHERE event_id = {{id:String}}",
                           parameters={"id": e["deploy3"]["event_id"]}, settings={"mutations_sync": 2})
        chain = answer(api_reading_anchors(client, chdb_path, tmp_path / "anchors"))["chain"]
        approval = by_id(chain)[f"approval:{e['approval']['event_id']}"]["verification"]
        assert approval["anchor"]["status"] == "head_missing" and "were deleted" in approval["detail"]
        assert anchors_of(chain)["prediction:p1"] == "anchored"  # the serving side's sessions are whole
    finally:
        client.close()


def test_without_anchors_configured_the_anchor_is_null(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    _, http, _ = stored
    chain = answer(http)["chain"]
    assert {n["verification"]["anchor"] for n in chain["nodes"]} == {None}
    assert all("provline verify --anchor" in n["verification"]["detail"] for n in chain["nodes"])


def test_the_ledger_lookup_reads_links_through_its_projection_not_the_whole_ledger(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]],
) -> None:
    """bench/sink.py at 10 M predictions: a column the by_session_hash projection lacks, added to the link
    branch, had ClickHouse scan half the ledger per trace (1.85 s p50)."""
    client, _, e = stored
    sql = queries.chain_sql("chain_ledger.sql")
    plan = "\n".join(row[0] for row in client.query(f"EXPLAIN indexes = 1 {sql}", parameters={
        "event_ids": [e["trace"]["event_id"]], "links": [("s", e["trace"]["prev_hash"] or "h")],
        "tables": []}).result_rows)
    assert "(by_session_hash)" in plan, plan
    assert plan.count("ReadFromMergeTree") == 1, plan  # the lookup by id; the links come from the projection


def counting_queries(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every query ``client`` sends from now on (the real chDB client answers them)."""
    sent: list[str] = []
    real_query = client.query

    def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(sql)
        return real_query(sql, *args, **kwargs)

    monkeypatch.setattr(client, "query", counted)
    return sent


def test_a_complete_trace_whose_registry_is_cached_makes_two_queries_and_answers_as_trace_does(
    stored: tuple[Client, TestClient, dict[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fields trace() answers come from the registry records the chain verified already: no registry
    lookup of its own (it cost a query and a registry version check per trace, about 3 ms of 30 at 1 M)."""
    client, _, _ = stored
    catalog, trust, chains = default_catalog(), Trust(), queries.ChainCache()
    plain = queries.trace(client, "p1")
    assert queries.complete_trace(client, "p1", catalog=catalog, trust=trust, chains=chains) is not None  # warm
    sent = counting_queries(client, monkeypatch)
    found = queries.complete_trace(client, "p1", queries.RegistryCache(), catalog=catalog, trust=trust,
                                   chains=chains)
    assert len(sent) == 2, sent  # the prediction's records; their ledger rows with the registry's parts
    assert found is not None and plain is not None
    assert {name: found[name] for name in plain} == plain


def test_with_anchors_a_cached_registrys_heads_are_looked_up_in_the_same_two_queries(
    chdb_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry records' sessions are known only once they are read; those of the cached ones are
    asked for ahead, in the ledger query (before: one more ledger lookup per trace)."""
    client = open_store(chdb_path)
    try:
        migrate(client)
        events, _ = seed()
        store_events(client, events)
        publish_anchor(client, tmp_path / "anchors")
        book = anchor.AnchorBook(str(tmp_path / "anchors"), [ANCHOR_KEY.public_key()])
        catalog, trust, chains = default_catalog(), Trust(), queries.ChainCache()
        queries.complete_trace(client, "p1", catalog=catalog, trust=trust, chains=chains, anchor_heads=book.heads())
        sent = counting_queries(client, monkeypatch)
        found = queries.complete_trace(client, "p1", catalog=catalog, trust=trust, chains=chains,
                                       anchor_heads=book.heads())
        assert len(sent) == 2, sent
        assert found is not None and set(anchors_of(found["chain"]).values()) == {"anchored"}
    finally:
        client.close()
