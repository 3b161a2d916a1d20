"""One provline system in front of real third-party model servers, shared by every test of this folder.

Started once per session, all as real processes, in the README's order: the session's Kafka broker
(tests/conftest.py) with this suite's own topics, ``provline serve`` and ``provline processors``,
the training job (``deploy/local/model_servers/train.py``, in the MLflow virtualenv, recording its
lineage through Kafka), Seldon MLServer serving its models (``iris``, ``diabetes``, and
``iris-canary``: the iris model under a name nothing has deployed yet), ``mlflow models serve`` of
the iris MLflow model, and a ``provline sidecar`` in front of each server.

The training job may fail (on today's code it does); the servers start anyway from the model files
it saved before failing, so every test fails for what it checks, and the job's own tests say why
it failed. ``make model-servers`` installs MLServer and MLflow (``make test`` does it first).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.demo.stack import StackError
from deploy.local.model_servers import RealServersStack, Server, TrainingRun
from provline.schemas import Topics

DRIFT_WINDOW_S = 5
PROCESSORS_ENV = {
    "PROVLINE_PROCESSORS__LINEAGE_WAIT_S": "3",  # an unresolved trace is stored after 3 s instead of 10
    "PROVLINE_DRIFT__WINDOW_S": str(DRIFT_WINDOW_S),
    "PROVLINE_DRIFT__LATENESS_S": "2",
    # the mapping the user of the issue had (finding 7): model output `predict` against the label column
    "PROVLINE_DRIFT__OUTPUT_COLUMNS": json.dumps({"predict": "target"}),
}
CANARY = "iris-canary"


@dataclass(frozen=True)
class RealServers:
    stack: RealServersStack
    training: TrainingRun
    mlserver: Server
    mlflow: Server
    mlserver_sidecar: Server
    mlflow_sidecar: Server


def add_canary(training: TrainingRun) -> None:
    """MLServer serves the iris model a second time, as ``iris-canary``, from the same joblib file."""
    model = training.mlserver_repository / "iris" / "model.joblib"
    if not model.exists():
        raise StackError(f"the training job saved no iris model for MLServer; {training.summary()}")
    folder = training.mlserver_repository / CANARY
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"name": CANARY, "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(model), "version": "v1"}}
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RealServers]:
    workdir: Path = tmp_path_factory.mktemp("real-servers")
    stack = RealServersStack(workdir, kafka_bootstrap=kafka_bootstrap, topics=Topics(f"real-{uuid.uuid4().hex[:8]}"))
    try:
        stack.start_broker()
        stack.start_platform(processors_env=PROCESSORS_ENV)
        training = stack.train_models(workdir / "models")
        add_canary(training)
        mlserver = stack.start_mlserver(training.mlserver_repository, wait=False)
        mlflow = stack.start_mlflow(training.mlflow_model("iris"), wait=False)
        mlserver.service.wait_healthy()
        mlflow.service.wait_healthy()
        mlserver_sidecar = stack.start_sidecar("sidecar-mlserver", mlserver.url, wait=False)
        mlflow_sidecar = stack.start_sidecar("sidecar-mlflow", mlflow.url, wait=False)
        mlserver_sidecar.service.wait_healthy()
        mlflow_sidecar.service.wait_healthy()
        yield RealServers(stack, training, mlserver, mlflow, mlserver_sidecar, mlflow_sidecar)
    finally:
        stack.stop()
