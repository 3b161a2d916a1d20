"""Real third-party model servers with provline in front of them, started as real processes.

Seldon MLServer (a KServe V2 server) and MLflow's scoring server (``mlflow models serve``) each
run from a virtual environment of their own, never from provline's: ``make model-servers`` builds
them under ``build/venvs`` from the pinned requirement files beside this module. The training job
(``train.py``) runs in the MLflow one, where scikit-learn and MLflow are, with provline installed
beside them without its dependencies.

:class:`RealServersStack` is the demo's stack (:class:`deploy.demo.stack.DemoStack`: broker,
``provline serve``, ``provline processors``, logs, health waits) with those servers in place of
the demo's model server, in the order the README's quick start gives:

    stack = RealServersStack(workdir)
    stack.start_broker()
    stack.start_platform()
    training = stack.train_models(workdir / "models")  # lineage recorded through Kafka
    mlserver = stack.start_mlserver(training.mlserver_repository)
    mlflow = stack.start_mlflow(training.mlflow_model("iris"))
    sidecar = stack.start_sidecar("sidecar-mlserver", mlserver.url)
    ...
    stack.stop()                                     # every process it started, newest first

Every server listens on 127.0.0.1 on ports chosen free; every process logs to
``<workdir>/logs/<name>.log``, and a server that does not come up raises
:class:`~deploy.demo.stack.StackError` with the last lines of its log.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.demo.stack import REPO, DemoStack, Service, StackError
from deploy.local.kafka.broker import free_port, free_ports

VENVS = REPO / "build" / "venvs"
TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
TRAIN_TIMEOUT_S = 300.0
LOG_TAIL_LINES = 40


def venv_tool(venv: str, tool: str) -> Path:
    """``build/venvs/<venv>/bin/<tool>``; StackError saying how to build it when it is not there."""
    path = VENVS / venv / "bin" / tool
    if not path.exists():
        raise StackError(f"{path} does not exist: the {venv} virtual environment is not built; run "
                         "`make model-servers` (it installs MLServer and MLflow apart from provline's .venv)")
    return path


def _on_path(venv: str) -> str:
    """PATH with the venv's bin first: MLflow's scoring server runs ``uvicorn`` by name."""
    return f"{venv_tool(venv, 'python').parent}{os.pathsep}{os.environ.get('PATH', '')}"


@dataclass(frozen=True)
class Server:
    """A started HTTP server: where it answers, its admin port's URL (sidecars), and its process."""

    url: str
    service: Service
    admin_url: str | None = None


@dataclass(frozen=True)
class TrainingRun:
    """What the training job did: its exit code, its output, and the facts it wrote (``facts.json``).

    ``facts`` has one entry per model (``iris``, ``diabetes``): run id, dataset digest, columns,
    metrics, where it saved the model, deployment event ids, and ``error`` when the model failed.
    Only what the job got to is there: a job that failed half way says so in ``error``.
    """

    out: Path
    returncode: int
    log_path: Path
    facts: dict[str, Any]

    @property
    def mlserver_repository(self) -> Path:
        """The folder MLServer loads every model of (one sub-folder with model-settings.json each)."""
        return self.out / "mlserver"

    def mlflow_model(self, name: str) -> Path:
        return self.out / "mlflow" / name

    def model(self, name: str) -> dict[str, Any]:
        return dict(self.facts.get(name) or {})

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def summary(self) -> str:
        """One line per model and the job's last log lines: what a failed assertion shows."""
        errors = "; ".join(f"{name}: {fact.get('error') or 'ok'}" for name, fact in self.facts.items()) or "no facts"
        return f"training job exited {self.returncode} ({errors}); last lines of {self.log_path}:\n{self.log_tail()}"


@dataclass
class RealServersStack(DemoStack):
    """The demo stack with MLServer and MLflow's scoring server, each fronted by a sidecar (see the module)."""

    def train_models(self, out: Path) -> TrainingRun:
        """Run the training job to completion in the mlflow venv; its lineage goes to this stack's topics.

        It runs in the checkout, as a job runs in its repository: its run records that code (commit,
        repo), which a trace needs to be complete."""
        log_path = self.workdir / "logs" / "train.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            result = subprocess.run(
                [str(venv_tool("mlflow", "python")), str(TRAIN_SCRIPT), "--out", str(out)],
                env=self._env("job", PATH=_on_path("mlflow")), cwd=REPO, stdout=log,
                stderr=subprocess.STDOUT, timeout=TRAIN_TIMEOUT_S, check=False,
            )
        facts_file = out / "facts.json"
        facts = json.loads(facts_file.read_text()) if facts_file.exists() else {}
        return TrainingRun(out=out, returncode=result.returncode, log_path=log_path, facts=facts)

    def _server(self, name: str, argv: list[str], env: dict[str, str], health_url: str) -> Service:
        service = Service(name, argv, env, self.workdir / "logs" / f"{name}.log", health_url).start()
        self.services.append(service)
        return service

    def start_mlserver(self, repository: Path, *, wait: bool = True) -> Server:
        """MLServer serving every model under ``repository``; inference in its own process (no
        worker pool), gRPC on a free port, its metrics server off."""
        port, grpc_port = free_ports(2)
        service = self._server("mlserver", [str(venv_tool("mlserver", "mlserver")), "start", str(repository)],
                               self._env(None, PATH=_on_path("mlserver"), MLSERVER_HOST="127.0.0.1",
                                         MLSERVER_HTTP_PORT=str(port), MLSERVER_GRPC_PORT=str(grpc_port),
                                         MLSERVER_METRICS_ENDPOINT="", MLSERVER_PARALLEL_WORKERS="0"),
                               f"http://127.0.0.1:{port}/v2/health/ready")
        if wait:
            service.wait_healthy()
        return Server(f"http://127.0.0.1:{port}", service)

    def start_mlflow(self, model_dir: Path, *, wait: bool = True) -> Server:
        """``mlflow models serve`` of one MLflow model directory, in the mlflow venv (``--env-manager local``)."""
        port = free_port()
        service = self._server("mlflow", [
            str(venv_tool("mlflow", "mlflow")), "models", "serve", "-m", str(model_dir), "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ], self._env(None, PATH=_on_path("mlflow")), f"http://127.0.0.1:{port}/ping")
        if wait:
            service.wait_healthy()
        return Server(f"http://127.0.0.1:{port}", service)

    def start_sidecar(self, name: str, upstream: str, *, wait: bool = True) -> Server:
        """``provline sidecar`` in front of ``upstream``, as the README starts it."""
        port, admin_port = free_ports(2)
        service = self._provline(name, [
            "sidecar", "--upstream", upstream, "--host", "127.0.0.1", "--port", str(port),
            "--admin-port", str(admin_port),
        ], self._env("sidecar"), f"http://127.0.0.1:{admin_port}/readyz")
        if wait:
            service.wait_healthy()
        return Server(f"http://127.0.0.1:{port}", service, admin_url=f"http://127.0.0.1:{admin_port}")
