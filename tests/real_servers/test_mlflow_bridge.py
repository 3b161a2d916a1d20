"""`provline mlflow import` against a real MLflow tracking server, into the real broker's lineage topic.

The set-up starts ``mlflow server`` (full MLflow, build/venvs/mlflow-server: SQLite backend, the
artifact proxy over a local folder) and runs a training job that uses MLflow only
(tests/real_servers/mlflow_training.py: autolog, ``mlflow.log_input``, a registered model, the
``champion`` alias), in two steps, importing after each:

    train v1, @champion -> v1   import 1 (state file)
    train v2, @champion -> v2   `mlflow models serve -m models:/iris-bridge/2` behind a sidecar given only
                                the model's directory: one prediction, traced before v2 is imported
                                import 2 (same state file)   import 3 (same state file)
                                import 4 (--no-state: what was sent is read back from the topic)
    @champion -> v1 (rollback)  import 5 (--no-state)

Every assertion compares the events on the lineage topic (decoded with the current schemas) with
what MLflow itself recorded (the job's facts, MLflow's REST API, the artifact files on the server's
disk), so an import that loses or changes something fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.demo.stack import REPO, DemoStack, Service
from deploy.local.kafka import create_topics
from deploy.local.kafka.broker import free_port, free_ports
from deploy.local.model_servers import Server, venv_tool
from provline.producers.models import describe_artifact
from provline.schemas import Topics
from tests.helpers import consume_events
from tests.real_servers.audit import predict, provline, provline_json, trace_of, wait_for_rows, wait_for_trace
from tests.real_servers.mlflow_server import clean_env, mlflow_server
from tests.real_servers.mlflow_server import server_env as mlflow_env
from tests.real_servers.mlflow_training import ALIAS, APPROVER, DATASET, EXPERIMENT, MODEL

pytestmark = pytest.mark.real_servers
TRAINING = Path(__file__).with_name("mlflow_training.py")
STEP_TIMEOUT_S = 300.0
IMPORT_TIMEOUT_S = 180.0
READ_TIMEOUT_S = 60.0
Event = tuple[str, dict[str, Any]]
NOTHING_SENT = re.compile(r"\b0 events sent\b")
IMPORT_PRODUCER = "provline-mlflow-import"
SERVED_ENDPOINT = f"models:/{MODEL}@{ALIAS}"  # the sidecar records the alias it serves: its moves are the deployments
IRIS_ROW = {"sepal length (cm)": 5.9, "sepal width (cm)": 3.0, "petal length (cm)": 5.1, "petal width (cm)": 1.8}
PROCESSORS_ENV = {"PROVLINE_PROCESSORS__LINEAGE_WAIT_S": "3"}  # a trace of unknown lineage goes out after 3 s


@dataclass(frozen=True)
class Import:
    """One `provline mlflow import`: its exit code, its output and the events its session sent."""

    returncode: int
    output: str
    events: list[Event]

    def ids(self) -> set[str]:
        return {value["event_id"] for kind, value in self.events if kind != "SessionSeal"}

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [value for k, value in self.events if k == kind]


@dataclass(frozen=True)
class Bridge:
    stack: DemoStack  # provline serve and processors on the same broker and topics
    url: str
    artifacts: Path
    facts: list[dict[str, Any]]  # what the job recorded in MLflow, per step
    imports: list[Import]
    mlflow_sidecar: Server  # the sidecar in front of `mlflow models serve` of version 2
    early: tuple[str, dict[str, Any]]  # a prediction of version 2 and its trace, stored before v2 was imported


def _sessions(events: list[Event]) -> dict[str, list[Event]]:
    """The imports' sessions on the lineage topic (the sidecar's seals go there too)."""
    sessions: dict[str, list[Event]] = {}
    for kind, value in events:
        if value["producer"]["name"] == IMPORT_PRODUCER:
            sessions.setdefault(value["producer"]["session_id"], []).append((kind, value))
    return sessions


def _final_seals(events: list[Event]) -> int:
    return sum(1 for kind, value in events
               if kind == "SessionSeal" and value.get("final") and value["producer"]["name"] == IMPORT_PRODUCER)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Bridge]:
    folder = tmp_path_factory.mktemp("mlflow-bridge")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base_env, server_env = clean_env(), mlflow_env()
    server = mlflow_server(folder, port).start()
    topics = Topics(prefix=f"mlflow-{uuid.uuid4().hex[:10]}")
    create_topics(kafka_bootstrap, topics.all)
    stack = DemoStack(folder / "provline", kafka_bootstrap=kafka_bootstrap, topics=topics)
    import_env = {**base_env, "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
                  "COLUMNS": "200"}
    state = folder / "state" / "mlflow-import.json"
    serving: list[Service] = []
    try:
        stack.start_broker()
        stack.start_platform(processors_env=PROCESSORS_ENV)
        server.wait_healthy(timeout=120.0)

        def train(version: str) -> dict[str, Any]:
            facts = folder / f"facts-v{version}.json"
            done = subprocess.run([str(venv_tool("mlflow-server", "python")), str(TRAINING), "--version", version,
                                   "--facts", str(facts)], env={**server_env, "MLFLOW_TRACKING_URI": url}, cwd=REPO,
                                  capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False)
            assert done.returncode == 0, f"the training job failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            return dict(json.loads(facts.read_text()))

        seen: list[Event] = []

        def run_import(*extra: str) -> Import:
            done = subprocess.run([sys.executable, "-m", "provline", "mlflow", "import", "--tracking-uri", url,
                                   *extra], env=import_env, cwd=folder, capture_output=True, text=True,
                                  timeout=IMPORT_TIMEOUT_S, check=False)
            output = done.stdout + done.stderr
            sessions_before = set(_sessions(seen))
            expected_seals = _final_seals(seen) + (0 if NOTHING_SENT.search(output) else 1)
            everything = consume_events(kafka_bootstrap, topics.lineage,
                                        lambda events: _final_seals(events) >= expected_seals, READ_TIMEOUT_S)
            new = [event for session, events in _sessions(everything).items() if session not in sessions_before
                   for event in events]
            seen[:] = everything
            return Import(done.returncode, output, new)

        facts = [train("1")]
        imports = [run_import("--state", str(state))]
        facts.append(train("2"))
        sidecar = serve_behind_sidecar(stack, url, folder, facts[1]["model_version"], server_env, serving)
        early = predict(sidecar, "/invocations", {"dataframe_records": [IRIS_ROW]}).prediction_id
        early_trace = wait_for_trace(stack, early)  # out after the lineage wait: version 2 is not imported yet
        imports += [run_import("--state", str(state)), run_import("--state", str(state)), run_import("--no-state")]
        rollback = httpx.post(f"{url}/api/2.0/mlflow/registered-models/alias", timeout=30.0,
                              json={"name": MODEL, "alias": ALIAS, "version": "1"})
        assert rollback.status_code == 200, rollback.text
        imports.append(run_import("--no-state"))
        yield Bridge(stack, url, folder / "artifacts", facts, imports, sidecar, (early, early_trace))
    finally:
        for service in reversed(serving):
            service.stop()
        server.stop()
        stack.stop()


def serve_behind_sidecar(stack: DemoStack, tracking_uri: str, folder: Path, version: str, server_env: dict[str, str],
                         serving: list[Service]) -> Server:
    """`mlflow models serve -m models:/<MODEL>/<version>` (build/venvs/mlflow-server, --env-manager local) and
    a `provline sidecar` in front of it given only the model's directory (its MLmodel names the uuid):
    the version's artifacts, where the tracking server keeps them."""
    answer = httpx.get(f"{tracking_uri}/api/2.0/mlflow/model-versions/get-download-uri", timeout=30.0,
                       params={"name": MODEL, "version": version})
    assert answer.status_code == 200, answer.text
    model_dir = folder / "artifacts" / str(answer.json()["artifact_uri"]).removeprefix("mlflow-artifacts:").strip("/")
    assert (model_dir / "MLmodel").is_file(), f"no MLmodel under {model_dir}"
    port, sidecar_port, admin_port = free_ports(3)
    model_server = Service("mlflow-models-serve", [
        str(venv_tool("mlflow-server", "mlflow")), "models", "serve", "-m", f"models:/{MODEL}/{version}",
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ], {**server_env, "MLFLOW_TRACKING_URI": tracking_uri}, folder / "mlflow-models-serve.log",
        f"http://127.0.0.1:{port}/ping").start()
    serving.append(model_server)
    env = {name: value for name, value in server_env.items() if not name.startswith("PROVLINE_")}
    env.update({f"PROVLINE_KAFKA__{name.upper()}": value for name, value in stack.kafka_section("sidecar").items()})
    env.update(PROVLINE_TOPICS__PREFIX=stack.topics.prefix, PROVLINE_SIDECAR__MLFLOW_MODEL=str(model_dir),
               PROVLINE_SIDECAR__ENDPOINT=SERVED_ENDPOINT, PYTHONUNBUFFERED="1")
    sidecar = Service("sidecar-mlflow-serve", [
        sys.executable, "-m", "provline", "sidecar", "--upstream", f"http://127.0.0.1:{port}", "--host", "127.0.0.1",
        "--port", str(sidecar_port), "--admin-port", str(admin_port),
    ], env, folder / "sidecar-mlflow-serve.log", f"http://127.0.0.1:{admin_port}/readyz").start()
    serving.append(sidecar)
    model_server.wait_healthy(timeout=120.0)
    sidecar.wait_healthy()
    return Server(f"http://127.0.0.1:{sidecar_port}", sidecar, admin_url=f"http://127.0.0.1:{admin_port}")


def _mlflow(bridge: Bridge, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{bridge.url}/api/2.0/mlflow/{path}", params=params, timeout=30.0)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_every_import_exits_cleanly_and_seals_its_session(bridge: Bridge) -> None:
    for number, done in enumerate(bridge.imports, 1):
        assert done.returncode == 0, f"import {number} exited {done.returncode}:\n{done.output}"
    for number in (1, 2, 5):
        events = bridge.imports[number - 1].events
        assert events, f"import {number} sent nothing:\n{bridge.imports[number - 1].output}"
        seals = [value for kind, value in events if kind == "SessionSeal" and value["final"]]
        sealed = [value for kind, value in events if kind != "SessionSeal"]
        assert len(seals) == 1 and seals[0]["count"] == len(sealed), f"import {number} left its session unsealed"
        assert all(value["hash"] and value["producer"]["name"] == "provline-mlflow-import" for _, value in events)


def test_run_events_carry_params_git_commit_dataset_and_environment(bridge: Bridge) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    runs = {value["run_id"]: value for done in bridge.imports[:2] for value in done.of("RunEvent")}
    for step, facts in enumerate(bridge.facts, 1):
        run = runs.get(facts["run_id"])
        assert run is not None, f"the run of step {step} ({facts['run_id']}) was not imported; runs: {sorted(runs)}"
        assert run["state"] == "COMPLETED" and run["name"] == f"train-v{step}"
        assert run["hyperparameters"] == facts["params"], "the run's params (autolog) differ from MLflow's"
        assert facts["git_commit"] == commit, "MLflow did not record the job's git commit"
        assert run["code"]["commit"] == commit and run["code"]["entrypoint"].endswith("mlflow_training.py")
        assert sorted(run["inputs"]) == facts["inputs"] and len(facts["inputs"]) == 2, "autolog's and log_input's"
        assert f"mlflow:{DATASET}:{facts['dataset_digest']}" in run["inputs"]
        assert run["outputs"] == [f"{MODEL}@{facts['model_version']}"]
        recorded = _mlflow(bridge, "runs/get", run_id=facts["run_id"])["run"]["data"]
        assert run["metrics"] == {m["key"]: m["value"] for m in recorded["metrics"]} and run["metrics"]
        environment = run["environment"]
        assert environment is not None, "the environment of the model's requirements.txt was not read"
        assert environment["packages"].get("scikit-learn") == "1.9.1" and environment["python"].startswith("3.")


def test_the_dataset_version_has_mlflows_digest_schema_and_rows(bridge: Bridge) -> None:
    datasets = [value for done in bridge.imports[:2] for value in done.of("DatasetVersion")]
    assert sorted(d["digest"] for d in datasets) == bridge.facts[0]["inputs"] == bridge.facts[1]["inputs"], \
        "one DatasetVersion for each table both runs used"
    [dataset] = [d for d in datasets if d["name"] == DATASET]
    assert dataset["digest"] == f"mlflow:{DATASET}:{bridge.facts[0]['dataset_digest']}" and dataset["row_count"] == 150
    assert [c["name"] for c in dataset["columns"]][-1] == "target" and len(dataset["columns"]) == 5
    assert dataset["run_id"] == bridge.facts[0]["run_id"] and dataset["sources"][0].endswith(f"{DATASET}.csv")


def test_model_versions_name_their_run_and_the_digest_of_their_artifacts(bridge: Bridge) -> None:
    versions: dict[str, dict[str, Any]] = {}
    for done in bridge.imports[:2]:
        for value in done.of("ModelVersion"):
            versions.setdefault(value["version"], value)
    assert sorted(versions) == ["1", "2"]
    for facts in bridge.facts:
        version = versions[facts["model_version"]]
        assert version["model_name"] == MODEL and version["run_id"] == version["mlflow_run_id"] == facts["run_id"]
        assert sorted(version["datasets"]) == facts["inputs"]
        uri = version["artifact_uri"]
        assert uri.startswith("mlflow-artifacts:/"), uri
        on_disk = bridge.artifacts / uri.removeprefix("mlflow-artifacts:/")
        assert on_disk.is_dir(), f"{uri} is not under the server's artifact root {bridge.artifacts}"
        expected = describe_artifact(on_disk)
        assert version["artifact_sha256"] == expected["artifact_sha256"], "the downloaded artifacts differ"
        assert version["artifact_files"] == expected["artifact_files"]
        assert {"MLmodel", "requirements.txt", "python_env.yaml"} <= {f["path"] for f in version["artifact_files"]}
        assert version["framework"] == "sklearn" and "python_function" in version["flavors"]
        registered = _mlflow(bridge, "model-versions/get", name=MODEL, version=facts["model_version"])
        assert version["mlflow_model_uuid"] and registered["model_version"]["source"] == facts["model_source"]
        assert version["input_names"] == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                                          "petal width (cm)"]


def test_the_logged_models_metrics_are_an_evaluation_of_each_version(bridge: Bridge) -> None:
    evaluations = [value for done in bridge.imports[:2] for value in done.of("Evaluation")]
    for facts in bridge.facts:
        [evaluation] = [e for e in evaluations if e["model_version"] == facts["model_version"]]
        model_id = facts["model_source"].removeprefix("models:/")
        logged = _mlflow(bridge, f"logged-models/{model_id}")["model"]["data"]["metrics"]
        assert {m["name"]: m["value"] for m in evaluation["metrics"]} == {m["key"]: m["value"] for m in logged}
        assert "training_accuracy_score" in {m["name"] for m in evaluation["metrics"]}
        digests = {f"mlflow:{m['dataset_name']}:{m['dataset_digest']}" for m in logged}
        assert [evaluation["dataset"]] == sorted(digests) and evaluation["dataset"] in facts["inputs"]
        assert evaluation["model_name"] == MODEL and evaluation["run_id"] == facts["run_id"] and evaluation["passed"]


def test_an_approval_tag_on_a_version_is_a_decision(bridge: Bridge) -> None:
    assert bridge.imports[0].of("Decision") == [], "version 1 has no approval tag"
    [decision] = bridge.imports[1].of("Decision")
    assert decision["subject"] == f"model:{MODEL}@2" and decision["outcome"] == "APPROVED"
    assert (decision["role"], decision["actor"], decision["transition"]) == \
        ("risk-officer", APPROVER, "registered->production")


def test_moving_the_champion_alias_is_a_deployment_naming_the_version_it_left(bridge: Bridge) -> None:
    first, second = bridge.imports[0].of("Deployment"), bridge.imports[1].of("Deployment")
    assert [(d["model_version"], d["action"], d["previous_version"]) for d in first] == [("1", "DEPLOY", None)]
    assert [(d["model_version"], d["action"], d["previous_version"]) for d in second] == [("2", "PROMOTE", "1")]
    # the rollback, seen by an import with no state file: the alias's history came back from the topic
    rollback = bridge.imports[4].of("Deployment")
    assert [(d["model_version"], d["action"], d["previous_version"]) for d in rollback] == [("1", "PROMOTE", "2")]
    assert rollback[0]["event_id"] != first[0]["event_id"], "the rollback to v1 is a new event, not v1's first"
    for deployment in first + second + rollback:
        assert deployment["model_name"] == MODEL and deployment["environment"] == ALIAS
        assert deployment["endpoint"] == f"models:/{MODEL}@{ALIAS}"
    aliases = _mlflow(bridge, "registered-models/get", name=MODEL)["registered_model"]["aliases"]
    assert aliases == [{"alias": ALIAS, "version": "1"}]


def test_importing_again_sends_only_what_changed_and_then_nothing(bridge: Bridge) -> None:
    first, second, third, stateless, rollback = bridge.imports
    assert not first.ids() & second.ids(), "the second import sent again what the first had delivered"
    assert sorted(kind for kind, _ in second.events if kind != "SessionSeal") == \
        ["Decision", "Deployment", "Evaluation", "ModelVersion", "RunEvent"], second.output
    assert third.events == [] and NOTHING_SENT.search(third.output), third.output
    # without the state file, what was sent is read back from the lineage topic: nothing is sent again
    assert stateless.events == [] and NOTHING_SENT.search(stateless.output), stateless.output
    assert sorted(kind for kind, _ in rollback.events if kind != "SessionSeal") == ["Deployment"], rollback.output
    experiments = {e["name"] for e in _mlflow(bridge, "experiments/search", max_results=100)["experiments"]}
    assert EXPERIMENT in experiments
    skipped = re.search(r"(\d+) already sent before", stateless.output)
    assert skipped and int(skipped.group(1)) >= len(first.ids() | second.ids()), stateless.output


def test_the_store_keeps_one_row_per_event_verifies_clean_and_promote_takes_the_approved_version(
        bridge: Bridge) -> None:
    stack = bridge.stack
    sessions = sorted({v["producer"]["session_id"] for done in bridge.imports for _, v in done.events})
    assert len(sessions) == 3  # imports 1, 2 and 5 sent something
    seals = wait_for_rows(stack, "SELECT producer_session FROM session_seals WHERE is_final AND "
                                 "producer_name = 'provline-mlflow-import'", at_least=3)
    assert sorted(row["producer_session"] for row in seals) == sessions, "the sink did not store every import"
    expected = {"run_events": 2, "dataset_versions": 2, "model_versions": 2, "evaluations": 2, "decisions": 1,
                "deployments": 3}
    stored = {table: len(stack.sql(f"SELECT event_id FROM {table} FINAL WHERE producer_name = "
                                   "'provline-mlflow-import'")) for table in expected}
    assert stored == expected, "the store must hold each imported event once"
    for session in sessions:
        done = provline(stack, "verify", "--session", session)
        assert done.returncode == 0, f"provline verify --session {session}:\n{done.stdout}{done.stderr}"
    kafka = {"PROVLINE_KAFKA__BOOTSTRAP": stack.kafka_section("job")["bootstrap"],
             "PROVLINE_TOPICS__PREFIX": stack.topics.prefix}
    endpoint = f"models:/{MODEL}@{ALIAS}"
    refused = provline(stack, "promote", MODEL, "1", "--to", "production", "--endpoint", endpoint, env=kafka)
    assert refused.returncode == 1 and "no approval by role risk-officer" in refused.stdout, refused.stdout
    assert refused.stdout.count("\n  - ") == 1, f"only the approval should be missing for v1:\n{refused.stdout}"
    promoted = provline(stack, "promote", MODEL, "2", "--to", "production", "--endpoint", endpoint, env=kafka)
    assert promoted.returncode == 0, f"provline promote of the imported, approved v2:\n{promoted.stdout}"


def test_an_unreachable_tracking_server_is_named_and_no_state_written(tmp_path: Path, kafka_bootstrap: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    state = tmp_path / "state.json"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PROVLINE_", "MLFLOW_"))},
           "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "provline", "mlflow", "import", "--tracking-uri", url, "--state",
                           str(state)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert url in done.stdout and "--tracking-uri" in done.stdout, done.stdout
    assert not state.exists(), "a failed import must not write its state"


def test_a_prediction_through_the_sidecar_of_mlflow_models_serve_traces_to_the_run_commit_and_dataset(
        bridge: Bridge) -> None:
    stack, facts = bridge.stack, bridge.facts[1]
    expected = {"model_name": MODEL, "model_version": facts["model_version"], "training_run_id": facts["run_id"],
                "code_commit": facts["git_commit"]}
    digest = f"mlflow:{DATASET}:{facts['dataset_digest']}"
    # served before version 2 was imported, while the record had @champion on version 1: the trace waited
    # for the lineage of the model's uuid and went out missing it, never crediting version 1
    early, before_import = bridge.early
    assert before_import["missing"] == "lineage" and before_import["model_version"] is None, before_import
    stored = trace_of(stack, early)
    assert stored is not None and stored["model_version"] in (None, facts["model_version"]), stored

    # served now, while @champion is back on version 1 (the rollback): the uuid names version 2
    sent = predict(bridge.mlflow_sidecar, "/invocations", {"dataframe_records": [IRIS_ROW]})
    assert sent.response.json()["predictions"] in ([0], [1], [2]), sent.response.text
    trace = wait_for_trace(stack, sent.prediction_id, until=lambda t: t.get("complete") is True)
    assert trace["complete"], trace
    assert {name: trace[name] for name in expected} == expected
    assert digest in trace["dataset_digests"]
    # the last deployment of version 2 to the alias: the import's move to v2, or `provline promote`'s of v2
    # when test_the_store_keeps_one_row... ran first; never the rollback to v1
    [deployed] = stack.sql(f"SELECT model_name, model_version, endpoint FROM deployments FINAL "
                           f"WHERE event_id = '{trace['deployment_event_id']}'")
    assert deployed == {"model_name": MODEL, "model_version": facts["model_version"], "endpoint": SERVED_ENDPOINT}
    audited = provline_json(stack, "trace", sent.prediction_id)
    assert {name: audited[name] for name in expected} == expected and digest in audited["dataset_digests"]
    verified = provline(stack, "verify")
    assert verified.returncode == 0, f"provline verify:\n{verified.stdout}{verified.stderr}"
