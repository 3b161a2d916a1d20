"""The real training job records its lineage: scikit-learn's NumPy metrics (finding 2) and an MLflow
model directory (finding 3) go in as they are, and the job completes."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.local.model_servers import venv_tool
from provline.producers.digest import manifest, merkle_root
from tests.real_servers.audit import wait_for_rows
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
MODELS = ("iris", "diabetes")


def test_the_job_needs_neither_faust_nor_clickhouse() -> None:
    """The job's environment has provline without its dependencies: provline.producers loads without them."""
    probe = ("import sys, provline.producers; "
             "print([m for m in ('faust', 'clickhouse_connect', 'chdb', 'provline.sink') if m in sys.modules])")
    done = subprocess.run([str(venv_tool("mlflow", "python")), "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_scikit_learn_metrics_are_recorded(servers: RealServers) -> None:
    """Finding 2: accuracy_score, r2_score and bootstrap intervals are NumPy floats; evaluate records them."""
    training = servers.training
    for name in MODELS:
        assert not training.model(name).get("error"), training.summary()
    rows = wait_for_rows(servers.stack, "SELECT model_name, payload FROM evaluations FINAL "
                                        "WHERE model_version = '1' ORDER BY model_name", at_least=len(MODELS))
    recorded = {row["model_name"]: json.loads(row["payload"]) for row in rows}
    assert sorted(recorded) == sorted(MODELS), training.summary()
    for name in MODELS:
        metrics = {metric["name"]: metric for metric in recorded[name]["metrics"]}
        expected = training.model(name)["metrics"]
        assert sorted(metrics) == sorted(expected)
        for metric, value in expected.items():
            assert math.isclose(metrics[metric]["value"], value, rel_tol=1e-9), (name, metric)
        assert recorded[name]["passed"] is True
        interval = metrics["f1_macro" if name == "iris" else "r2"]
        assert interval["ci_low"] <= interval["value"] <= interval["ci_high"]


def test_an_mlflow_model_directory_is_registered(servers: RealServers) -> None:
    """Finding 3: register_model takes a model directory: its digest is a Merkle root over its files, the
    ModelVersion carries what MLmodel says (flavors, signature, model uuid), and the run completes."""
    training = servers.training
    iris = training.model("iris")
    assert not iris.get("error"), training.summary()
    model_dir = Path(iris["mlflow_dir"])
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    rows = wait_for_rows(servers.stack, "SELECT artifact_sha256, payload FROM model_versions FINAL "
                                        "WHERE model_name = 'iris' AND model_version = '1'")
    assert rows, f"no ModelVersion iris@1 in the store; {training.summary()}"
    row = rows[0]
    root = merkle_root(manifest(model_dir))
    assert row["artifact_sha256"] in (root, root.removeprefix("sha256:"))
    payload = row["payload"]
    assert mlmodel["model_uuid"] in payload
    assert all(flavor in payload for flavor in mlmodel["flavors"])
    assert all(column in payload for column in iris["columns"])
    states = wait_for_rows(servers.stack, f"SELECT state FROM run_events FINAL WHERE run_id = '{iris['run_id']}' "
                                          "AND state != 'STARTED'")
    assert [s["state"] for s in states] == ["COMPLETED"], training.summary()
