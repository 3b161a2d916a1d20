"""``provline openlineage`` through the real audit API on real chDB: a training run that registered a model
version which was approved, deployed to staging, promoted to production and rolled back.

The events are stored through the writer's own planning and insert path; the command reads them with
the read-only SQL the CLI uses. Every exported line must be rebuilt by openlineage-python's own model
(and written back identically by its Serde), and every provline facet must fit its JSON schema.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from deploy.local.kafka.broker import free_port
from provline.cli import app
from provline.sink.api import create_api
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from tests.integration.test_sink_audit import store_sessions
from tests.integration.test_sink_console_data import CODE, Session, at, metric
from tests.unit.test_sink_openlineage import assert_round_trip

pytestmark = pytest.mark.integration

TOKEN = "a" * 32
DATA = "sha256:" + "d" * 64


def seed() -> Session:
    job = Session("train-churn")
    job.add("DatasetVersion", at(-60), name="customers", digest=DATA)
    job.add("RunEvent", at(-50), run_id="run-1", name="train", state="COMPLETED", inputs=[DATA],
            outputs=["churn@1"], code={**CODE, "commit": "c1" * 20})
    job.add("ModelVersion", at(-49), model_name="churn", version="1", artifact_uri="s3://m/churn/1",
            artifact_sha256="a" * 64, run_id="run-1", datasets=[DATA])
    job.add("Deployment", at(-45), model_name="churn", model_version="1", environment="production",
            endpoint="/predict", action="DEPLOY")
    job.add("RunEvent", at(-41), run_id="run-2", name="train", state="STARTED", stage="training", inputs=[DATA],
            code={**CODE, "commit": "c2" * 20}, hyperparameters={"lr": "0.1"}, seeds={"seed": 7})
    job.add("RunEvent", at(-40), run_id="run-2", name="train", state="COMPLETED", stage="training", inputs=[DATA],
            outputs=["churn@2"], code={**CODE, "commit": "c2" * 20}, hyperparameters={"lr": "0.1"},
            seeds={"seed": 7}, metrics={"loss": 0.25})
    job.add("ModelVersion", at(-39), model_name="churn", version="2", artifact_uri="s3://m/churn/2",
            artifact_sha256="b" * 64, run_id="run-2", datasets=[DATA], framework="sklearn",
            input_names=["age", "plan"], output_names=["churn"])
    job.add("Evaluation", at(-38), model_name="churn", model_version="2", dataset=DATA, passed=True,
            metrics=[metric("auc", 0.86, 0.8, True)])
    job.add("Decision", at(-37), subject="model:churn@2", transition="staging->production", outcome="APPROVED",
            actor="rita", role="risk-officer", rationale="auc above 0.8")
    job.add("Deployment", at(-34), model_name="churn", model_version="2", environment="staging",
            endpoint="/predict", action="DEPLOY")
    job.add("Deployment", at(60), model_name="churn", model_version="2", environment="production",
            endpoint="/predict", action="PROMOTE", reason="approved")
    job.add("Deployment", at(120), model_name="churn", model_version="1", environment="production",
            endpoint="/predict", action="ROLLBACK", reason="auc dropped", previous_version="2")
    job.add("ModelVersion", at(130), model_name="churn", version="3", artifact_uri="s3://m/churn/3",
            artifact_sha256="c" * 64, run_id="run-3", datasets=[DATA])  # registered, never deployed
    return job


@pytest.fixture
def served(chdb_path: str) -> Iterator[str]:
    """The seeded store's audit API on a local port (uvicorn, as ``provline serve`` runs it); its URL."""
    client = open_store(chdb_path)
    migrate(client)
    store_sessions(client, seed())
    settings = ServeSettings(store={"url": chdb_path}, api={"tokens": {"ana": {"token": TOKEN, "role": "auditor"}}})
    server = uvicorn.Server(uvicorn.Config(create_api(settings, client), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the audit API did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)
        client.close()


def exported(served: str, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["openlineage", *args, "--api", served, "--namespace", "acme"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_run_and_its_models_deployments_export_with_ml_facets(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_CLIENT__API_TOKEN", TOKEN)

    run = exported(served, "run-2")
    assert [e["eventType"] for e in run] == ["START", "COMPLETE"]
    complete = run[1]
    training = complete["run"]["facets"]["mlTraining"]
    assert (training["hyperparameters"], training["seeds"], training["metrics"]) == (
        {"lr": "0.1"}, {"seed": 7}, {"loss": 0.25})
    [evaluation] = complete["run"]["facets"]["mlEvaluation"]["evaluations"]
    assert (evaluation["modelVersion"], evaluation["result"], evaluation["dataset"]) == ("2", "PASS", DATA)
    assert evaluation["metrics"] == [{"name": "auc", "value": 0.86, "threshold": 0.8, "passed": True}]
    [model] = [o for o in complete["outputs"] if o["namespace"] == "acme.models"]
    ml_model = model["facets"]["mlModel"]
    assert (ml_model["name"], ml_model["version"], ml_model["framework"], ml_model["artifactSha256"]) == (
        "churn", "2", "sklearn", "b" * 64)
    assert ml_model["signature"] == {"inputs": ["age", "plan"], "outputs": ["churn"]}
    assert ml_model["registeredTime"].startswith("2025-05-01T09:21:00") and ml_model["trainingRunId"] == "run-2"

    deployments = exported(served, "--model", "churn@2")
    assert [e["job"]["name"] for e in deployments] == ["endpoint:production:/predict", "endpoint:staging:/predict"]
    production = deployments[0]
    chain = production["job"]["facets"]["endpointDeploymentChain"]
    assert [(d["action"], d["modelVersion"], d.get("previousVersion")) for d in chain["deployments"]] == [
        ("DEPLOY", "1", None), ("PROMOTE", "2", "1"), ("ROLLBACK", "1", "2")]
    assert chain["currentVersion"] == "1" and chain["deployments"][1]["approvedBy"] == "rita"
    assert chain["deployments"][2]["reason"] == "auc dropped"
    assert chain["deployments"][1]["time"].startswith("2025-05-01T11:00:00")
    lifecycle = production["inputs"][0]["facets"]["stageLifecycle"]
    assert [(t["stage"], t["stageStatus"]) for t in lifecycle["transitions"]] == [
        ("registered", "Registered"), ("production", "Approved"), ("staging", "Deployed"),
        ("production", "Deployed"), ("production", "RolledBack")]
    assert (lifecycle["stage"], lifecycle["stageStatus"]) == ("production", "RolledBack")
    for event in run + deployments:
        assert_round_trip(event)


def test_the_command_names_what_it_cannot_export(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_CLIENT__API_TOKEN", TOKEN)
    runner = CliRunner()
    missing = runner.invoke(app, ["openlineage", "--model", "churn@9", "--api", served])
    assert missing.exit_code == 1 and "no model version churn@9" in missing.output
    never = runner.invoke(app, ["openlineage", "--model", "churn@3", "--api", served])
    assert never.exit_code == 1 and "churn@3 was never deployed" in never.output
    both = runner.invoke(app, ["openlineage", "run-2", "--model", "churn@2", "--api", served])
    assert both.exit_code == 2 and "one of them" in both.output
    malformed = runner.invoke(app, ["openlineage", "--model", "churn", "--api", served])
    assert malformed.exit_code == 2 and "NAME@VERSION" in malformed.output
