"""The whole provline system on one machine, started as real processes.

Used by ``python -m deploy.demo`` and by the end-to-end test, so both exercise the same path:

    broker (deploy/local/kafka)  ->  provline serve (sink + audit API on chDB)
                                 ->  provline processors (Faust trace joiner)
    training job (producers)     ->  model server  <-  provline sidecar  <-  client requests

Every process logs to ``<workdir>/logs/<name>.log``; ``stop()`` ends them all (SIGTERM, then
SIGKILL after a deadline) in the reverse order of their start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy.demo import model as churn
from deploy.local.kafka import LocalKafka, create_topics
from deploy.local.kafka.broker import free_ports
from provline.producers import JobSettings, Lineage
from provline.schemas import Topics

REPO = Path(__file__).resolve().parents[2]
ENDPOINT = "/predict"
MODEL_NAME = "churn"
MODEL_VERSION = "1"
START_TIMEOUT_S = 90.0
# The demo's audit API token (role admin); `provline serve` refuses /v1 requests without one.
DEMO_API_TOKEN = "demo-admin-token-not-for-production"
STOP_TIMEOUT_S = 20.0
TOPIC_PARTITIONS = 4


class StackError(RuntimeError):
    """A demo component did not start or answer; the message names its log file."""


@dataclass
class Service:
    """One child process with its log file and an optional HTTP health URL."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        assert self.process is not None and self.health_url is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"{self.name} exited with code {self.process.returncode}; "
                                 f"last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(self.health_url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{self.name} was not healthy at {self.health_url} within {timeout:.0f}s; "
                         f"last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Prediction:
    prediction_id: str
    request_body: bytes
    status: int
    response_body: bytes
    model_version: str | None


@dataclass
class TrainingFacts:
    """What the training job recorded: the answers an audit of its predictions must find."""

    run_id: str
    commit: str | None
    dataset_digest: str
    artifact_sha256: str
    model_path: Path
    accuracy: float


@dataclass
class DemoStack:
    workdir: Path
    kafka_bootstrap: str | None = None
    topics: Topics = field(default_factory=lambda: Topics("provline"))
    services: list[Service] = field(default_factory=list)
    broker: LocalKafka | None = None

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self._own_broker = False
        (self.api_port, self.model_port, self.sidecar_port, self.sidecar_admin_port, self.processors_web_port,
         self.processors_metrics_port) = free_ports(6)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def console_url(self) -> str:
        """The web console's sign-in page; it takes the API token (:data:`DEMO_API_TOKEN`)."""
        return f"{self.api_url}/console/"

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {DEMO_API_TOKEN}"}

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    def kafka_section(self, service: str) -> dict[str, str]:
        """The ``kafka`` settings of one service: as its own user when the broker is a secure one."""
        if self.broker is not None and self.broker.secure:
            return self.broker.kafka_section(service)
        assert self.kafka_bootstrap is not None, "start_broker() first"
        return {"bootstrap": self.kafka_bootstrap}

    def _env(self, service: str | None, **extra: str) -> dict[str, str]:
        """The environment of a child process; a provline ``service`` gets its Kafka and topic settings."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("PROVLINE_")}
        if service is not None:
            env.update({f"PROVLINE_KAFKA__{name.upper()}": value
                        for name, value in self.kafka_section(service).items()})
            env["PROVLINE_TOPICS__PREFIX"] = self.topics.prefix
        env.update(PYTHONUNBUFFERED="1", **extra)
        return env

    def _provline(self, name: str, args: list[str], env: dict[str, str], health_url: str | None) -> Service:
        service = Service(name, [sys.executable, "-m", "provline", *args], env,
                          self.workdir / "logs" / f"{name}.log", health_url).start()
        self.services.append(service)
        return service

    def start_broker(self, *, with_topics: bool = True) -> None:
        """Use PROVLINE_KAFKA__BOOTSTRAP's broker when given, else start the local one; create the topics
        unless ``with_topics`` is false (a fresh start, where the services must create what they need)."""
        if self.broker is None and self.kafka_bootstrap is None:
            self.broker = LocalKafka(self.workdir / "kafka")
            self._own_broker = True
        if self.broker is not None:
            self.kafka_bootstrap = self.broker.start().bootstrap
        if not with_topics:
            return
        admin = self.broker.client_config() if self.broker is not None else self.kafka_bootstrap
        assert admin is not None
        create_topics(admin, self.topics.all, partitions=TOPIC_PARTITIONS)

    def start_platform(self, *, processors_env: Mapping[str, str] | None = None,
                       api_tokens: Mapping[str, Mapping[str, str]] | None = None, processors: bool = True) -> None:
        """``provline serve`` (sink + audit API on chDB) and ``provline processors`` (Faust; not with
        ``processors`` false, for tests of lineage events only).

        Consumer groups are named after the topic prefix, so stacks sharing a broker never share a
        group; ``processors_env`` adds PROVLINE_ settings of the processors (drift windows, waits);
        ``api_tokens`` adds readers (name -> token and role) beside the demo's admin.
        """
        tokens = {"demo": {"token": DEMO_API_TOKEN, "role": "admin"}, **(api_tokens or {})}
        serve = self._provline("serve", ["serve"], self._env(
            "serve",
            PROVLINE_STORE__URL=f"chdb://{self.workdir / 'clickhouse'}",
            PROVLINE_API__PORT=str(self.api_port),
            PROVLINE_API__TOKENS=json.dumps(tokens),
            PROVLINE_SINK__CONSUMER_GROUP=f"{self.topics.prefix}-sink",
        ), f"{self.api_url}/healthz")
        if not processors:
            serve.wait_healthy()
            return
        self._provline("processors", ["processors"], self._env(
            "processors",
            PROVLINE_PROCESSORS__APP_ID=f"{self.topics.prefix}-processors",
            PROVLINE_PROCESSORS__DATA_DIR=str(self.workdir / "processors"),
            PROVLINE_PROCESSORS__WEB_PORT=str(self.processors_web_port),
            PROVLINE_PROCESSORS__METRICS_PORT=str(self.processors_metrics_port),
            PROVLINE_TOPICS__PARTITIONS=str(TOPIC_PARTITIONS),
            **(processors_env or {}),
        ), None)
        serve.wait_healthy()

    def train(self, *, rows: int = 2000, seed: int = 7) -> TrainingFacts:
        """The ML job: generate data, train, register the model, all recorded through ``producers``."""
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        dataset, model_path = data_dir / "customers.csv", data_dir / "churn-model.json"
        churn.generate_customers(dataset, rows=rows, seed=seed)
        settings = JobSettings(kafka=self.kafka_section("job"), topics={"prefix": self.topics.prefix})
        learning_rate, epochs = 0.5, 300
        params = {"learning_rate": learning_rate, "epochs": epochs}
        with Lineage(settings=settings, producer_name="demo-train") as lineage:
            with lineage.run("train-churn", stage="training", params=params, seed=seed) as run:
                digest = run.use_dataset(dataset, name="customers", license="synthetic", owner="demo")
                features, labels = churn.load_customers(dataset)
                model = churn.train(features, labels, learning_rate=learning_rate, epochs=epochs)
                run.log_metric("train_accuracy", churn.accuracy(model, features, labels))
                churn.save(model, model_path)
                registered = run.register_model(model_path, name=MODEL_NAME, version=MODEL_VERSION,
                                                framework="numpy-logistic-regression")
            lineage.deploy(MODEL_NAME, MODEL_VERSION, endpoint=ENDPOINT, environment="demo",
                           reason="first release")
        return TrainingFacts(run_id=run.run_id, commit=run.code["commit"], dataset_digest=digest,
                             artifact_sha256=registered["artifact_sha256"], model_path=model_path,
                             accuracy=run.metrics["train_accuracy"])

    def start_serving(self, model_path: Path) -> None:
        """The model server and the sidecar in front of it."""
        model_server = Service(
            "model-server",
            [sys.executable, "-m", "deploy.demo.model_server", "--model", str(model_path),
             "--version", MODEL_VERSION, "--port", str(self.model_port)],
            self._env(None), self.workdir / "logs" / "model-server.log", f"http://127.0.0.1:{self.model_port}/healthz",
        ).start()
        self.services.append(model_server)
        sidecar = self._provline("sidecar", [
            "sidecar", "--upstream", f"http://127.0.0.1:{self.model_port}", "--port", str(self.sidecar_port),
            "--admin-port", str(self.sidecar_admin_port),
        ], self._env("sidecar"), f"http://127.0.0.1:{self.sidecar_admin_port}/readyz")
        model_server.wait_healthy()
        sidecar.wait_healthy()

    def predict(self, customers: list[dict[str, Any]]) -> list[Prediction]:
        """Send each customer through the sidecar, as a client of the model would."""
        predictions = []
        with httpx.Client(base_url=self.sidecar_url, timeout=10.0) as client:
            for customer in customers:
                body = json.dumps(customer).encode()
                response = client.post(ENDPOINT, content=body, headers={"Content-Type": "application/json"})
                predictions.append(Prediction(
                    prediction_id=response.headers["X-Prediction-ID"], request_body=body,
                    status=response.status_code, response_body=response.content,
                    model_version=response.headers.get("X-Model-Version"),
                ))
        return predictions

    def wait_for_trace(self, prediction_id: str, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Poll the audit API until the prediction's trace is stored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.api_url}/v1/traces/{prediction_id}", headers=self.api_headers, timeout=5.0)
            if response.status_code == 200:
                return response.json()
            time.sleep(0.5)
        logs = "\n".join(f"--- {s.name}\n{s.log_tail(10)}" for s in self.services)
        raise StackError(f"no trace for {prediction_id} within {timeout:.0f}s\n{logs}")

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Rows of a read-only query, run by the process that owns the store."""
        response = httpx.post(f"{self.api_url}/v1/sql", json={"sql": query}, headers=self.api_headers, timeout=30.0)
        if response.status_code != 200:
            raise StackError(f"SQL failed ({response.status_code}): {response.text}")
        body = response.json()
        return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        if self.broker is not None and self._own_broker:  # a broker given to the stack is its giver's to stop
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> DemoStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
