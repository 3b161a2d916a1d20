"""The console's data through the real audit API on real chDB: a model's page and the lineage explorer.

The events of two versions of one model (registration, evaluations, approvals, a rollout and a
rollback), traces on both versions in several windows and drift rows with a breach are stored
through the writer's own planning and insert path, so the prediction index and the lineage edges
are the ones the sink derives. Answers are asserted exactly, against what the events say.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.sink.api import create_api
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store, store_tables
from tests.helpers import seal
from tests.integration.test_sink_audit import store_sessions

pytestmark = pytest.mark.integration

T0 = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
RAW, CLEAN, OTHER = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64
CODE = {"repo": "git@github.com:acme/churn.git", "branch": "main", "dirty": False, "diff_sha256": None,
        "entrypoint": "train.py", "argv": []}
ODD_MODEL = "o'brien\"; DROP TABLE x --%_\\"  # quotes, comment, LIKE wildcards, a backslash
TOKENS = {"vic": "v" * 32}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Session:
    """One producer session's events, each at the time given."""

    def __init__(self, name: str) -> None:
        self.chain = HashChain(default_catalog())
        self.producer = producer_identity(name, f"{name}-{uuid.uuid4().hex[:6]}")
        self.events: list[tuple[str, dict[str, Any]]] = []

    def add(self, kind: str, when: datetime, **fields: Any) -> dict[str, Any]:
        value = seal(self.chain, kind, {**new_envelope(self.producer, event_time=when), **fields})
        self.events.append((kind, value))
        return value


def metric(name: str, value: float, threshold: float | None = None, passed: bool | None = None) -> dict[str, Any]:
    return {"name": name, "value": value, "ci_low": None, "ci_high": None, "threshold": threshold, "passed": passed}


# (minute of the trace, prediction id, version): churn@1 in the 10:00 and 12:00 windows, churn@2 at 11:00;
# p-2a is traced again (a labelled revision) at 12:05, and still counts once, at 11:00.
TRACES = [(5, "p-1a", "1"), (20, "p-1b", "1"), (59, "p-1c", "1"), (61, "p-2a", "2"), (90, "p-2b", "2"),
          (125, "p-2a", "2"), (130, "p-1d", "1")]


def seed() -> tuple[Session, Session]:
    job, serving = Session("train-churn"), Session("sidecar")
    job.add("DatasetVersion", at(-60), name="raw", digest=RAW)
    job.add("DatasetVersion", at(-59), name="clean", digest=CLEAN, parents=[RAW])
    job.add("DatasetVersion", at(-58), name="other", digest=OTHER)
    job.add("RunEvent", at(-50), run_id="run-1", name="train-v1", state="COMPLETED", inputs=[RAW],
            outputs=["churn@1"], code={**CODE, "commit": "c1" * 20})
    job.add("ModelVersion", at(-49), model_name="churn", version="1", artifact_uri="s3://m/churn/1",
            artifact_sha256="a" * 64, run_id="run-1", datasets=[RAW])
    job.add("Evaluation", at(-48), model_name="churn", model_version="1", dataset=RAW, passed=True,
            metrics=[metric("auc", 0.84, 0.8, True)])
    job.add("Decision", at(-47), subject="model:churn@1", transition="staging->production", outcome="APPROVED",
            actor="rita", role="risk-officer", rationale="auc above 0.8")
    job.add("Deployment", at(-46), model_name="churn", model_version="1", environment="production",
            endpoint="/predict", action="DEPLOY")
    job.add("RunEvent", at(-40), run_id="run-2", name="train-v2", state="COMPLETED", inputs=[CLEAN],
            outputs=["churn@2"], code={**CODE, "commit": "c2" * 20})
    job.add("ModelVersion", at(-39), model_name="churn", version="2", artifact_uri="s3://m/churn/2",
            artifact_sha256="b" * 64, run_id="run-2", datasets=[CLEAN])
    job.add("Evaluation", at(-38), model_name="churn", model_version="2", dataset=CLEAN, passed=False,
            metrics=[metric("auc", 0.78, 0.8, False), metric("latency_ms", 12.0)])
    job.add("Decision", at(-37), subject="model:churn@2", transition="staging->production", outcome="REJECTED",
            actor="rita", role="risk-officer", rationale="auc below 0.8")
    job.add("Decision", at(-36), subject="model:churn@2", transition="staging->production", outcome="APPROVED",
            actor="sam", role="cto", rationale=None)
    job.add("Decision", at(-35), subject="model:churn-eu@1", transition="staging->production",
            outcome="APPROVED", actor="eve", role="risk-officer")  # another model whose name starts alike
    job.add("Deployment", at(-34), model_name="churn", model_version="2", environment="staging",
            endpoint="/predict", action="DEPLOY")
    job.add("Deployment", at(60), model_name="churn", model_version="2", environment="production",
            endpoint="/predict", action="PROMOTE", reason="approved")  # replaces 1: not stated, derived
    job.add("Deployment", at(120), model_name="churn", model_version="1", environment="production",
            endpoint="/predict", action="ROLLBACK", reason="auc dropped", previous_version="2")
    job.add("RunEvent", at(-30), run_id="run-o", name="train-other", state="COMPLETED", inputs=[OTHER],
            outputs=[f"{ODD_MODEL}@1"])
    job.add("ModelVersion", at(-29), model_name=ODD_MODEL, version="1", artifact_uri="s3://m/odd/1",
            artifact_sha256="c" * 64, run_id="run-o", datasets=[OTHER])
    for minute, prediction, version in TRACES:
        serving.add("PredictionTrace", at(minute), prediction_id=prediction, endpoint="/predict", complete=True,
                    model_name="churn", model_version=version, request_sha256="e" * 64, status=200)
    serving.add("PredictionTrace", at(30), prediction_id="p-odd", endpoint="/predict", complete=True,
                model_name=ODD_MODEL, model_version="1", request_sha256="e" * 64, status=200)
    for version, feature, stat, start, value, threshold in (
        ("1", "age", "psi", at(0), 0.05, 0.2), ("2", "age", "psi", at(60), 0.35, 0.2),
        ("2", "plan", "ks", at(60), 0.01, 0.05), ("1", "age", "psi", at(120), 0.12, 0.2),
    ):
        serving.add("DriftMetric", start + timedelta(hours=1), model_name="churn", model_version=version,
                    feature=feature, metric=stat, window_start=start, window_end=start + timedelta(hours=1),
                    value=value, threshold=threshold, breached=value > threshold, sample_size=100)
    return job, serving


@pytest.fixture
def seeded(chdb_path: str) -> Iterator[tuple[Client, TestClient, Session, Session]]:
    client = open_store(chdb_path)
    try:
        migrate(client)
        job, serving = seed()
        store_sessions(client, job, serving)
        grants = {name: {"token": token, "role": "viewer"} for name, token in TOKENS.items()}
        settings = ServeSettings(store={"url": chdb_path}, api={"tokens": grants})
        yield client, TestClient(create_api(settings, client)), job, serving
    finally:
        client.close()


def get(http: TestClient, path: str, **params: Any) -> Any:
    reply = http.get(path, params=params, headers={"Authorization": f"Bearer {TOKENS['vic']}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def event_id(session: Session, kind: str, **match: Any) -> str:
    [found] = [v["event_id"] for k, v in session.events if k == kind and all(v[f] == x for f, x in match.items())]
    return found


def iso(minutes: float) -> str:
    return at(minutes).isoformat()


def test_a_models_page_has_its_versions_evaluations_approvals_timeline_traffic_and_drift(
    seeded: tuple[Client, TestClient, Session, Session],
) -> None:
    _, http, job, _ = seeded
    page = get(http, "/v1/models/churn/overview")
    assert page["model_name"] == "churn" and page["truncated"] == []
    assert page["versions"] == [
        {"version": "1", "artifact_sha256": "a" * 64, "run_id": "run-1", "registered_at": iso(-49),
         "event_id": event_id(job, "ModelVersion", version="1", model_name="churn")},
        {"version": "2", "artifact_sha256": "b" * 64, "run_id": "run-2", "registered_at": iso(-39),
         "event_id": event_id(job, "ModelVersion", version="2", model_name="churn")},
    ]
    v1_eval, v2_eval = (event_id(job, "Evaluation", model_version=v) for v in ("1", "2"))
    assert page["evaluations"] == [
        {"version": "1", "metric": "auc", "value": 0.84, "threshold": 0.8, "passed": True,
         "event_time": iso(-48), "event_id": v1_eval},
        {"version": "2", "metric": "auc", "value": 0.78, "threshold": 0.8, "passed": False,
         "event_time": iso(-38), "event_id": v2_eval},
        # no threshold: not judged
        {"version": "2", "metric": "latency_ms", "value": 12.0, "threshold": None, "passed": None,
         "event_time": iso(-38), "event_id": v2_eval},
    ]
    assert [(a["version"], a["actor"], a["role"], a["decision"], a["rationale"], a["event_time"])
            for a in page["approvals"]] == [
        ("1", "rita", "risk-officer", "APPROVED", "auc above 0.8", iso(-47)),
        ("2", "rita", "risk-officer", "REJECTED", "auc below 0.8", iso(-37)),
        ("2", "sam", "cto", "APPROVED", None, iso(-36)),
    ]  # not churn-eu's
    assert {a["transition"] for a in page["approvals"]} == {"staging->production"}
    assert [a["event_id"] for a in page["approvals"]] == [
        event_id(job, "Decision", subject="model:churn@1"),
        *(event_id(job, "Decision", subject="model:churn@2", actor=actor) for actor in ("rita", "sam")),
    ]
    assert [(d["event_time"], d["version"], d["action"], d["environment"], d["endpoint"], d["previous_version"])
            for d in page["deployments"]] == [
        (iso(-46), "1", "DEPLOY", "production", "/predict", None),
        (iso(-34), "2", "DEPLOY", "staging", "/predict", None),  # nothing was on staging before
        (iso(60), "2", "PROMOTE", "production", "/predict", "1"),  # derived from the timeline
        (iso(120), "1", "ROLLBACK", "production", "/predict", "2"),  # as stated
    ]
    assert [d["event_id"] for d in page["deployments"]] == [
        v["event_id"] for k, v in job.events if k == "Deployment"][:2] + [
        event_id(job, "Deployment", action="PROMOTE"), event_id(job, "Deployment", action="ROLLBACK")]
    assert page["traffic"] == [
        {"window_start": iso(0), "version": "1", "predictions": 3},
        {"window_start": iso(60), "version": "2", "predictions": 2},
        {"window_start": iso(120), "version": "1", "predictions": 1},
    ]
    assert page["drift"] == [
        {"feature": "age", "window_start": iso(0), "version": "1", "statistic": "psi", "value": 0.05,
         "threshold": 0.2, "breached": False},
        {"feature": "age", "window_start": iso(60), "version": "2", "statistic": "psi", "value": 0.35,
         "threshold": 0.2, "breached": True},
        {"feature": "plan", "window_start": iso(60), "version": "2", "statistic": "ks", "value": 0.01,
         "threshold": 0.05, "breached": False},
        {"feature": "age", "window_start": iso(120), "version": "1", "statistic": "psi", "value": 0.12,
         "threshold": 0.2, "breached": False},
    ]


def test_windows_time_bounds_and_limits_shape_the_series(seeded: tuple[Client, TestClient, Session, Session]) -> None:
    _, http, _, _ = seeded
    daily = get(http, "/v1/models/churn/overview", window_s=86400)
    assert daily["traffic"] == [{"window_start": "2025-05-01T00:00:00+00:00", "version": "1", "predictions": 4},
                                {"window_start": "2025-05-01T00:00:00+00:00", "version": "2", "predictions": 2}]
    later = get(http, "/v1/models/churn/overview", since=iso(61), until=iso(120))
    assert later["traffic"] == [{"window_start": iso(60), "version": "2", "predictions": 2}]  # traced in the range
    assert [(d["feature"], d["window_start"]) for d in later["drift"]] == [("age", iso(60)), ("plan", iso(60))]
    assert len(later["versions"]) == 2  # the registry is not cut by time
    cut = get(http, "/v1/models/churn/overview", limit=1)
    assert cut["truncated"] == ["versions", "evaluations", "approvals", "deployments", "traffic", "drift"]
    assert [v["version"] for v in cut["versions"]] == ["2"]  # the newest
    assert [d["action"] for d in cut["deployments"]] == ["ROLLBACK"]
    assert len(cut["evaluations"]) == 2 and {e["version"] for e in cut["evaluations"]} == {"2"}
    assert cut["traffic"] == [{"window_start": iso(0), "version": "1", "predictions": 3}]  # the oldest


def test_a_model_name_full_of_sql_metacharacters_is_just_a_name(
    seeded: tuple[Client, TestClient, Session, Session],
) -> None:
    _, http, _, _ = seeded
    page = get(http, f"/v1/models/{quote(ODD_MODEL, safe='')}/overview")
    assert page["model_name"] == ODD_MODEL
    assert [(v["version"], v["run_id"]) for v in page["versions"]] == [("1", "run-o")]
    assert page["traffic"] == [{"window_start": iso(0), "version": "1", "predictions": 1}]
    assert page["evaluations"] == page["approvals"] == page["deployments"] == page["drift"] == []
    graph = get(http, "/v1/lineage/graph", node=f"model:{ODD_MODEL}@1", direction="upstream")
    assert {n["id"] for n in graph["nodes"]} == {f"model:{ODD_MODEL}@1", "run:run-o", f"dataset:{OTHER}"}


def predictions_of(serving: Session, *models: tuple[str, str]) -> int:
    """Distinct predictions traced on these model versions, from the events written."""
    return len({v["prediction_id"] for k, v in serving.events
                if k == "PredictionTrace" and (v["model_name"], v["model_version"]) in models})


def test_the_lineage_graph_has_every_edge_and_counts_the_predictions_below(
    seeded: tuple[Client, TestClient, Session, Session],
) -> None:
    _, http, _, serving = seeded
    down = get(http, "/v1/lineage/graph", node=f"dataset:{RAW}", direction="downstream")
    prod, staging = "deployment:production:/predict", "deployment:staging:/predict"
    assert (down["node"], down["direction"], down["truncated"]) == (f"dataset:{RAW}", "downstream", False)
    assert [(n["id"], n["kind"], n["label"], n["depth"]) for n in down["nodes"]] == [
        (f"dataset:{RAW}", "dataset", "raw sha256:111111111111", 0),
        (f"dataset:{CLEAN}", "dataset", "clean sha256:222222222222", 1),
        ("model:churn@1", "model", "churn@1", 1),
        ("run:run-1", "run", "train-v1 (run-1)", 1),
        (prod, "deployment", "production:/predict", 2),
        ("model:churn@2", "model", "churn@2", 2),
        ("run:run-2", "run", "train-v2 (run-2)", 2),
        (staging, "deployment", "staging:/predict", 3),
    ]  # nearest first; no prediction is a node
    assert sorted((e["from"], e["to"], e["relation"]) for e in down["edges"]) == sorted([
        (f"dataset:{RAW}", f"dataset:{CLEAN}", "parent"), (f"dataset:{RAW}", "run:run-1", "input"),
        (f"dataset:{RAW}", "model:churn@1", "trained_on"), ("run:run-1", "model:churn@1", "trained"),
        (f"dataset:{CLEAN}", "run:run-2", "input"), (f"dataset:{CLEAN}", "model:churn@2", "trained_on"),
        ("run:run-2", "model:churn@2", "trained"), ("model:churn@1", prod, "deployed"),
        ("model:churn@2", prod, "deployed"), ("model:churn@2", staging, "deployed"),
    ])
    churn = [("churn", "1"), ("churn", "2")]
    assert down["predictions_downstream"] == predictions_of(serving, *churn) == 6
    for node, models in ((f"dataset:{CLEAN}", [("churn", "2")]), ("model:churn@1", [("churn", "1")]),
                         ("run:run-2", [("churn", "2")]), (f"dataset:{OTHER}", [(ODD_MODEL, "1")])):
        answer = get(http, "/v1/lineage/graph", node=node, direction="downstream")
        assert answer["predictions_downstream"] == predictions_of(serving, *models), node
    near = get(http, "/v1/lineage/graph", node=f"dataset:{RAW}", direction="downstream", max_depth=1)
    assert near["predictions_downstream"] == 0  # the predictions are three hops away at the nearest
    assert get(http, "/v1/lineage/graph", node=f"dataset:{RAW}", direction="downstream",
               max_depth=2)["predictions_downstream"] == predictions_of(serving, ("churn", "1"))

    up = get(http, "/v1/lineage/graph", node="prediction:p-2b", direction="upstream")
    assert up["predictions_downstream"] == 0
    commit = "commit:git@github.com:acme/churn.git@" + "c2" * 20
    assert {(n["id"], n["label"]) for n in up["nodes"]} == {
        ("prediction:p-2b", "p-2b"), ("model:churn@2", "churn@2"), ("run:run-2", "train-v2 (run-2)"),
        (f"dataset:{CLEAN}", "clean sha256:222222222222"), (f"dataset:{RAW}", "raw sha256:111111111111"),
        (commit, "churn@c2c2c2c2c2"),
    }
    assert sorted((e["from"], e["to"], e["relation"]) for e in up["edges"]) == sorted([
        ("model:churn@2", "prediction:p-2b", "served"), ("run:run-2", "model:churn@2", "trained"),
        (f"dataset:{CLEAN}", "model:churn@2", "trained_on"), (f"dataset:{CLEAN}", "run:run-2", "input"),
        (commit, "run:run-2", "code"), (f"dataset:{RAW}", f"dataset:{CLEAN}", "parent"),
    ])
    leaf = get(http, "/v1/lineage/graph", node="prediction:p-2b", direction="downstream")
    assert [n["id"] for n in leaf["nodes"]] == ["prediction:p-2b"] and leaf["edges"] == []
    cut = get(http, "/v1/lineage/graph", node=f"dataset:{RAW}", direction="downstream", limit=2)
    assert cut["truncated"] is True and len(cut["nodes"]) == 3
    assert cut["predictions_downstream"] == 6  # the count is not cut


def table_counts(client: Client) -> dict[str, int]:
    return {table: int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])
            for table in sorted(store_tables(client)) if table != "access_log"}


HOSTILE = [
    # (path, params, status, what the detail names)
    ("/v1/models/churn'%20OR%20'1'='1/overview", {}, 404, "churn' OR '1'='1"),
    ("/v1/models/churn%27--/overview", {}, 404, "churn'--"),
    ("/v1/models/%25/overview", {}, 404, "'%'"),
    ("/v1/models/churn%25/overview", {}, 404, "churn%"),
    ("/v1/models/churn@/overview", {}, 404, "churn@"),
    ("/v1/models/%20/overview", {}, 400, "empty"),
    ("/v1/models/" + "x" * 1001 + "/overview", {}, 400, "1001 characters"),
    ("/v1/models/churn/overview", {"window_s": 0}, 400, "window_s=0"),
    ("/v1/models/churn/overview", {"limit": 0}, 400, "limit=0"),
    ("/v1/models/churn/overview", {"since": "2025-05-02T00:00:00Z", "until": "2025-05-01T00:00:00Z"}, 400,
     "is not before"),
    ("/v1/lineage/graph", {"node": "dataset:x' OR '1'='1", "direction": "downstream"}, 404, "dataset:x' OR"),
    ("/v1/lineage/graph", {"node": f"dataset:{RAW}'; DROP TABLE lineage_edges; --", "direction": "upstream"}, 404,
     "DROP TABLE"),
    ("/v1/lineage/graph", {"node": "model:churn@1' OR 1=1 --", "direction": "downstream"}, 404, "OR 1=1"),
    ("/v1/lineage/graph", {"node": "model:%@%", "direction": "downstream"}, 404, "model:%@%"),
    ("/v1/lineage/graph", {"node": "churn@1", "direction": "downstream"}, 400, "not a lineage node"),
    ("/v1/lineage/graph", {"node": "table:lineage_edges", "direction": "downstream"}, 400, "not a lineage node"),
    ("/v1/lineage/graph", {"node": "dataset:", "direction": "downstream"}, 400, "not a lineage node"),
    ("/v1/lineage/graph", {"direction": "downstream"}, 400, "'' is not a lineage node"),
    ("/v1/lineage/graph", {"node": f"dataset:{RAW}"}, 400, "direction '' is neither"),
    ("/v1/lineage/graph", {"node": f"dataset:{RAW}", "direction": "upstream' OR 1=1 --"}, 400,
     "neither 'upstream' nor 'downstream'"),
    ("/v1/lineage/graph", {"node": f"dataset:{RAW}", "direction": "downstream", "max_depth": 0}, 400,
     "max_depth=0"),
    ("/v1/lineage/graph", {"node": f"dataset:{RAW}", "direction": "downstream", "limit": 100_000}, 400,
     "limit=100000"),
]


def test_hostile_and_malformed_input_is_refused_with_a_reason_and_changes_nothing(
    seeded: tuple[Client, TestClient, Session, Session],
) -> None:
    client, http, _, _ = seeded
    before = table_counts(client)
    page_before = get(http, "/v1/models/churn/overview")
    graph_before = get(http, "/v1/lineage/graph", node=f"dataset:{RAW}", direction="downstream")
    for path, params, status, named in HOSTILE:
        reply = http.get(path, params=params, headers={"Authorization": f"Bearer {TOKENS['vic']}"})
        assert reply.status_code == status, (path, params, reply.text)
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and named in detail, (path, params, detail)
    assert table_counts(client) == before
    assert get(http, "/v1/models/churn/overview") == page_before
    assert get(http, "/v1/lineage/graph", node=f"dataset:{RAW}", direction="downstream") == graph_before


def test_both_routes_need_a_reader_and_every_request_is_in_the_access_log(
    seeded: tuple[Client, TestClient, Session, Session],
) -> None:
    client, http, _, _ = seeded
    graph_query = {"node": f"dataset:{RAW}", "direction": "downstream"}
    assert http.get("/v1/models/churn/overview").status_code == 401
    assert http.get("/v1/lineage/graph", params=graph_query).status_code == 401
    assert http.get("/v1/models/churn/overview", headers={"Authorization": "Bearer " + "w" * 32}).status_code == 401
    get(http, "/v1/models/churn/overview")
    get(http, "/v1/lineage/graph", **graph_query)
    assert http.get("/v1/models/nope/overview", headers={"Authorization": f"Bearer {TOKENS['vic']}"}
                    ).status_code == 404
    logged = client.query("SELECT reader, path, status, allowed FROM access_log ORDER BY time").result_rows
    assert logged == [
        ("", "/v1/models/churn/overview", 401, False), ("", "/v1/lineage/graph", 401, False),
        ("", "/v1/models/churn/overview", 401, False), ("vic", "/v1/models/churn/overview", 200, True),
        ("vic", "/v1/lineage/graph", 200, True), ("vic", "/v1/models/nope/overview", 404, True),
    ]


@pytest.fixture
def served(seeded: tuple[Client, TestClient, Session, Session]) -> Iterator[str]:
    """The seeded store's audit API on a local port (uvicorn, as ``provline serve`` runs it); its URL."""
    import threading
    import time

    import uvicorn

    from deploy.local.kafka.broker import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(seeded[1].app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the audit API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_provline_model_prints_the_page_in_80_columns(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from provline.cli import app

    monkeypatch.setenv("PROVLINE_CLIENT__API_TOKEN", TOKENS["vic"])
    shown = CliRunner().invoke(app, ["model", "churn", "--api", served])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert [line.rstrip() for line in lines if line.startswith("churn: ")] == [
        "churn: versions", "churn: evaluations", "churn: approvals", "churn: deployment timeline",
        "churn: predictions per window", "churn: drift per feature",
    ]
    rollback = next(line for line in lines if "ROLLBACK" in line)
    assert rollback.split("│")[1:5] == [" 2025-05-01 12:00:00 ", " 1       ", " ROLLBACK ", " 2        "]
    assert any("2025-05-01 11:00:00" in line and "age" in line and "True" in line for line in lines)
    as_json = CliRunner().invoke(app, ["model", "churn", "--json", "--window-s", "86400", "--api", served])
    assert json.loads(as_json.output)["traffic"][0]["predictions"] == 4
    missing = CliRunner().invoke(app, ["model", "nope", "--api", served])
    assert missing.exit_code == 1 and "nothing is stored for model 'nope'" in missing.output
