"""`provline mlflow follow` against a real MLflow tracking server, with its promotion guard over a real store.

The set-up starts ``mlflow server`` (tests/real_servers/mlflow_server.py) and ``provline serve`` on the
session's broker, records three finished runs and their registered versions of ``MODEL`` through
MLflow's REST API (v1 and v2 approved for production by the tag `provline mlflow import` reads, v3
not), points ``@champion`` (guarded: ``--guard champion=production --enforce``) and ``@challenger``
(not guarded) at v1, and starts ``provline mlflow follow`` as a subprocess. While it runs:

    @challenger -> 2 -> 3              two moves, two Deployments naming the version each left
    @champion -> 3                     v3 lacks the approval: rejected, and moved back to 1 in MLflow
    @champion -> 2                     approved: a clean PROMOTE
    (three more rounds)                nothing is sent again
    mlflow server stopped, restarted   follow says so, backs off, and carries on
    @challenger -> 1                   seen after the restart
    SIGTERM                            follow stops, its session sealed

Every assertion reads the events on the lineage topic, MLflow's own answers, or the store.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from deploy.demo.stack import DEMO_API_TOKEN, REPO, DemoStack
from deploy.local.kafka import create_topics
from deploy.local.kafka.broker import free_port
from provline.producers.mlflow_bridge.webhooks import signature
from provline.schemas import Topics, default_catalog
from provline.schemas.frames import events_in
from tests.real_servers.audit import provline
from tests.real_servers.mlflow_server import clean_env, mlflow_server

pytestmark = pytest.mark.real_servers
MODEL = "follow-iris"
GUARDED, FREE = "champion", "challenger"
APPROVAL_TAG = "provline.approval.production.risk-officer"
# what the guard requires here: a completed run with a commit, and the risk officer's approval
POLICY = {"require_training_run": True, "require_commit": True, "require_environment": False,
          "require_dataset_digests": False, "require_passing_evaluation": False,
          "required_roles": {"production": ["risk-officer"]}}
WAIT_S = 60.0
ROUND = re.compile(r"round \d+: ")
Event = tuple[str, dict[str, Any]]


class LineageTopic:
    """Every event on the lineage topic so far, read by one consumer assigned to each partition from the start."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.events: list[Event] = []
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"follow-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False})
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def read(self) -> list[Event]:
        for message in self._consumer.consume(500, 0.2):
            if message.error() is None:
                self.events += [(d.record, d.value) for d in map(default_catalog().decode,
                                                                 events_in(default_catalog(), message.value()))]
        return self.events

    def wait(self, what: str, condition: Callable[[list[Event]], bool], timeout: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout
        while not condition(self.read()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self) -> None:
        self._consumer.close()


def deployments(events: list[Event], alias: str) -> list[tuple[str, str, str | None]]:
    return [(v["model_version"], v["action"], v["previous_version"]) for kind, v in events
            if kind == "Deployment" and v["endpoint"] == f"models:/{MODEL}@{alias}"]


class Mlflow:
    """MLflow's REST API, as a training job's client would call it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=f"{url}/api/2.0", timeout=30.0)

    def call(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        response = (self.http.get(f"/mlflow/{path}", params=body) if method == "GET" else
                    self.http.post(f"/mlflow/{path}", json=body))
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text[:300]}"
        return dict(response.json())

    def register(self, experiment_id: str, number: int) -> str:
        """A finished run with a git commit, its model's files in the artifact store, and a version from it."""
        now = int(time.time() * 1000)
        run = self.call("POST", "runs/create", experiment_id=experiment_id, run_name=f"train-{number}", start_time=now,
                        tags=[{"key": "mlflow.source.git.commit", "value": f"{number:040x}"}])["run"]["info"]
        self.call("POST", "runs/update", run_id=run["run_id"], status="FINISHED", end_time=now + 1)
        model = f"{run['artifact_uri'].removeprefix('mlflow-artifacts:/')}/model"
        for name, text in (("MLmodel", f"model_uuid: {uuid.uuid4().hex}\nflavors: {{}}\n"),
                           ("requirements.txt", "scikit-learn==1.9.1\n")):
            stored = self.http.put(f"/mlflow-artifacts/artifacts/{model}/{name}", content=text.encode())
            assert stored.status_code == 200, stored.text
        return str(self.call("POST", "model-versions/create", name=MODEL, source=f"{run['artifact_uri']}/model",
                             run_id=run["run_id"])["model_version"]["version"])

    def move(self, alias: str, version: str) -> None:
        self.call("POST", "registered-models/alias", name=MODEL, alias=alias, version=version)

    def alias(self, alias: str) -> str | None:
        response = self.http.get("/mlflow/registered-models/alias", params={"name": MODEL, "alias": alias})
        return str(response.json()["model_version"]["version"]) if response.status_code == 200 else None


@dataclass
class Followed:
    """What happened while follow ran, phase by phase (False: the phase's wait timed out)."""

    stack: DemoStack
    output: list[str]
    events: list[Event] = field(default_factory=list)
    reached: dict[str, bool] = field(default_factory=dict)
    champion_after_rejection: str | None = None
    champion_at_end: str | None = None
    running_after_restart: bool = False
    returncode: int | None = None
    import_after: subprocess.CompletedProcess[str] | None = None  # `provline mlflow import --no-state`, then

    def text(self) -> str:
        return "\n".join(self.output)

    def rounds(self) -> int:
        return len({line.split(":", 1)[0] for line in self.output if ROUND.match(line)})

    def session_events(self) -> list[Event]:
        return [(kind, value) for kind, value in self.events if value["producer"]["name"] == "provline-mlflow-import"]


def start_follow(args: list[str], env: dict[str, str], output: list[str]) -> tuple[subprocess.Popen[str],
                                                                                  threading.Thread]:
    """``provline mlflow follow ARGS`` in the background, its output lines appended to ``output``."""
    follow = subprocess.Popen([sys.executable, "-m", "provline", "mlflow", "follow", *args], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert follow.stdout is not None
    lines = follow.stdout
    reader = threading.Thread(target=lambda: output.extend(line.rstrip("\n") for line in lines), daemon=True)
    reader.start()
    return follow, reader


def _wait_output(output: list[str], condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def followed(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Followed]:
    folder = tmp_path_factory.mktemp("mlflow-follow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = mlflow_server(folder, port).start()
    topics = Topics(prefix=f"follow-{uuid.uuid4().hex[:10]}")
    create_topics(kafka_bootstrap, topics.all)
    stack = DemoStack(folder / "provline", kafka_bootstrap=kafka_bootstrap, topics=topics)
    policy = folder / "policy.json"
    policy.write_text(json.dumps(POLICY))
    output: list[str] = []
    follow: subprocess.Popen[str] | None = None
    topic: LineageTopic | None = None
    result = Followed(stack, output)
    try:
        stack.start_broker()
        stack.start_platform(processors=False)
        server.wait_healthy(timeout=180.0)
        mlflow = Mlflow(url)
        experiment = str(mlflow.call("POST", "experiments/create", name="follow")["experiment_id"])
        mlflow.call("POST", "registered-models/create", name=MODEL)
        versions = [mlflow.register(experiment, number) for number in (1, 2, 3)]
        assert versions == ["1", "2", "3"]
        for version in ("1", "2"):
            mlflow.call("POST", "model-versions/set-tag", name=MODEL, version=version, key=APPROVAL_TAG, value="ada")
        mlflow.move(GUARDED, "1")
        mlflow.move(FREE, "1")
        env = {**clean_env(), "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
               "PROVLINE_CLIENT__API_URL": stack.api_url, "PROVLINE_CLIENT__API_TOKEN": DEMO_API_TOKEN,
               "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        follow, reader = start_follow(
            ["--tracking-uri", url, "--interval", "0.5", "--guard", f"{GUARDED}=production", "--policy", str(policy),
             "--enforce", "--state", str(folder / "state.json"),
             "--webhook-listen", f"127.0.0.1:{free_port()}"],  # refused: this server delivers to https only
            env, output)
        topic = LineageTopic(kafka_bootstrap, topics.lineage)
        reached = result.reached

        def has(alias: str, move: tuple[str, str, str | None]) -> Callable[[list[Event]], bool]:
            return lambda events: move in deployments(events, alias)

        reached["first round"] = topic.wait("the aliases as they stand", lambda events: has(
            GUARDED, ("1", "DEPLOY", None))(events) and has(FREE, ("1", "DEPLOY", None))(events))
        mlflow.move(FREE, "2")
        reached["challenger -> 2"] = topic.wait("challenger -> 2", has(FREE, ("2", "PROMOTE", "1")))
        mlflow.move(FREE, "3")
        reached["challenger -> 3"] = topic.wait("challenger -> 3", has(FREE, ("3", "PROMOTE", "2")))
        mlflow.move(GUARDED, "3")
        reached["champion -> 3 rolled back"] = topic.wait("the rollback", has(GUARDED, ("1", "ROLLBACK", "3")))
        result.champion_after_rejection = mlflow.alias(GUARDED)
        mlflow.move(GUARDED, "2")
        reached["champion -> 2"] = topic.wait("champion -> 2", has(GUARDED, ("2", "PROMOTE", "1")))
        rounds = result.rounds()
        reached["three more rounds"] = _wait_output(output, lambda: result.rounds() >= rounds + 3)
        server.stop()
        reached["server down noticed"] = _wait_output(output, lambda: "2 failed round(s) in a row" in result.text())
        server.start().wait_healthy(timeout=180.0)
        mlflow.move(FREE, "1")
        reached["challenger -> 1 after the restart"] = topic.wait("challenger -> 1", has(FREE, ("1", "PROMOTE", "3")))
        result.running_after_restart = follow.poll() is None
        result.champion_at_end = mlflow.alias(GUARDED)
        follow.send_signal(signal.SIGTERM)
        result.returncode = follow.wait(timeout=60)
        reader.join(timeout=10)
        topic.wait("the session's final seal", lambda events: any(
            kind == "SessionSeal" and value["final"] and value["producer"]["name"] == "provline-mlflow-import"
            for kind, value in events), timeout=30.0)
        result.events = topic.read()
        result.import_after = subprocess.run(
            [sys.executable, "-m", "provline", "mlflow", "import", "--tracking-uri", url, "--no-state"],
            env=env, cwd=folder, capture_output=True, text=True, timeout=120, check=False)
        yield result
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        if topic is not None:
            topic.close()
        server.stop()
        stack.stop()


def test_every_phase_was_reached_and_follow_stopped_cleanly(followed: Followed) -> None:
    assert all(followed.reached.values()), f"phases not reached: {followed.reached}\n{followed.text()}"
    assert followed.returncode == 0, followed.text()
    assert "stopped after" in followed.output[-1], followed.text()
    events = followed.session_events()
    assert len({value["producer"]["session_id"] for _, value in events}) == 1, "one follow, one producer session"
    assert events[-1][0] == "SessionSeal" and events[-1][1]["final"], "the session ends with its final seal"
    assert events[-1][1]["count"] == len(events) - 1, "the final seal covers every event of the session"
    session = events[-1][1]["producer"]["session_id"]
    verified = provline(followed.stack, "verify", "--session", session)
    assert verified.returncode == 0, f"provline verify --session {session}:\n{verified.stdout}{verified.stderr}"


def test_an_import_without_state_afterwards_finds_everything_sent(followed: Followed) -> None:
    done = followed.import_after
    assert done is not None and done.returncode == 0, f"{done.stdout}{done.stderr}"
    assert re.search(r"\b0 events sent\b", done.stdout), f"the import sent again what follow had sent:\n{done.stdout}"


def test_each_alias_move_is_one_deployment_naming_the_version_it_left(followed: Followed) -> None:
    events = followed.session_events()
    assert deployments(events, FREE) == [("1", "DEPLOY", None), ("2", "PROMOTE", "1"), ("3", "PROMOTE", "2"),
                                         ("1", "PROMOTE", "3")], followed.text()
    ids = [value["event_id"] for kind, value in events if kind != "SessionSeal"]
    assert len(ids) == len(set(ids)), "an event was sent twice"
    assert followed.rounds() >= 8, "follow kept polling"
    versions = sorted(value["version"] for kind, value in events if kind == "ModelVersion")
    assert versions == ["1", "2", "3"], "each version imported once"


def test_a_guarded_move_of_an_unapproved_version_is_rejected_and_moved_back(followed: Followed) -> None:
    events = followed.session_events()
    assert deployments(events, GUARDED) == [("1", "DEPLOY", None), ("3", "PROMOTE", "1"), ("1", "ROLLBACK", "3"),
                                            ("2", "PROMOTE", "1")], followed.text()
    assert followed.champion_after_rejection == "1", "--enforce moves the alias back in MLflow"
    assert followed.champion_at_end == "2", "an approved version stays"
    moves = {v["model_version"] + v["action"]: v for kind, v in events
             if kind == "Deployment" and v["endpoint"] == f"models:/{MODEL}@{GUARDED}"}
    [rejection] = [v for kind, v in events if kind == "Decision" and v["outcome"] == "REJECTED"]
    assert rejection["subject"] == f"model:{MODEL}@3" and rejection["transition"] == "registered->production"
    assert rejection["role"] == "promotion-guard" and "no approval by role risk-officer" in rejection["rationale"]
    assert moves["3PROMOTE"]["event_id"] in rejection["rationale"], "the Decision names the Deployment it rejects"
    # the move is recorded (clients were served v3), marked by the Decision that rejected it
    assert rejection["event_id"] in moves["3PROMOTE"]["reason"] and "rejected" in moves["3PROMOTE"]["reason"]
    assert "rejected" not in moves["2PROMOTE"]["reason"] and "rejected" not in moves["1DEPLOY"]["reason"]
    assert "guard REJECTED follow-iris@3" in followed.text() and "moved 'champion' back to 1" in followed.text()
    stored = followed.stack.sql(f"SELECT event_id FROM decisions FINAL WHERE event_id = '{rejection['event_id']}'")
    assert stored, "the rejection is in the store"


def test_follow_rides_out_a_tracking_server_restart(followed: Followed) -> None:
    text = followed.text()
    assert "did not answer" in text and "--tracking-uri" in text, text
    assert "Traceback" not in text, text
    assert followed.running_after_restart, "follow must survive the tracking server going away"
    assert ("1", "PROMOTE", "3") in deployments(followed.session_events(), FREE)


def test_a_webhook_the_server_refuses_leaves_follow_polling(followed: Followed) -> None:
    text = followed.text()
    assert "MLflow refused the webhook" in text and "MLFLOW_WEBHOOK_ALLOWED_SCHEMES" in text, text
    assert "polling only" in text and followed.rounds() >= 8, text


def test_a_guard_needs_the_audit_api(tmp_path: Path, kafka_bootstrap: str) -> None:
    env = {**clean_env(), "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "COLUMNS": "200",
           "PROVLINE_CLIENT__API_URL": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run([sys.executable, "-m", "provline", "mlflow", "follow", "--tracking-uri",
                           f"http://127.0.0.1:{free_port()}", "--guard", "champion=production"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "audit API" in done.stdout, done.stdout + done.stderr
    bad = subprocess.run([sys.executable, "-m", "provline", "mlflow", "follow", "--tracking-uri", "http://x",
                          "--guard", "champion"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "ALIAS=ENV" in bad.stdout, bad.stdout + bad.stderr



def test_a_webhook_delivery_starts_a_round_at_once_and_a_forged_one_nothing(tmp_path: Path,
                                                                            kafka_bootstrap: str) -> None:
    """`--webhook-listen` with a ten-minute --interval: after the first round, only MLflow's webhook can
    start another. A delivery with a wrong signature, and one correctly signed long ago, are refused 401;
    the alias move MLflow then delivers is the one further round, and the webhook is gone after follow."""
    port, listen_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    server = mlflow_server(tmp_path, port, local_webhooks=True).start()
    topics = Topics(prefix=f"hook-{uuid.uuid4().hex[:10]}")
    create_topics(kafka_bootstrap, topics.all)
    secret = tmp_path / "webhook-secret"
    secret.write_text("s3cret-for-this-test\n")
    output: list[str] = []
    follow: subprocess.Popen[str] | None = None
    topic: LineageTopic | None = None
    try:
        server.wait_healthy(timeout=180.0)
        mlflow = Mlflow(url)
        experiment = str(mlflow.call("POST", "experiments/create", name="hook")["experiment_id"])
        mlflow.call("POST", "registered-models/create", name=MODEL)
        # no alias is set before the webhook exists: MLflow would cache "no webhooks" for alias events (1 s here)
        assert [mlflow.register(experiment, number) for number in (1, 2)] == ["1", "2"]
        env = {**clean_env(), "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
               "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        follow, reader = start_follow(
            ["--tracking-uri", url, "--interval", "600", "--webhook-listen", f"127.0.0.1:{listen_port}",
             "--webhook-secret-file", str(secret), "--state", str(tmp_path / "state.json")], env, output)
        topic = LineageTopic(kafka_bootstrap, topics.lineage)
        assert topic.wait("the first round", lambda events: sorted(
            value["version"] for kind, value in events if kind == "ModelVersion") == ["1", "2"]), "\n".join(output)
        assert _wait_output(output, lambda: any(ROUND.match(line) for line in output)), "\n".join(output)
        hooks = mlflow.http.get("/mlflow/webhooks").json().get("webhooks", [])
        assert [hook["url"] for hook in hooks] == [f"http://127.0.0.1:{listen_port}/"], hooks

        body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {}}).encode()
        now = str(int(time.time()))
        forged = {"X-MLflow-Delivery-Id": str(uuid.uuid4()), "X-MLflow-Timestamp": now,
                  "X-MLflow-Signature": signature("not-the-secret", "x", now, body)}
        old = str(int(time.time()) - 3600)
        replayed = {"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": old,
                    "X-MLflow-Signature": signature("s3cret-for-this-test", "d-1", old, body)}
        for headers in (forged, replayed, {}):
            refused = httpx.post(f"http://127.0.0.1:{listen_port}/", content=body, headers=headers, timeout=10)
            assert refused.status_code == 401, (refused.status_code, refused.text)

        mlflow.move(FREE, "2")
        assert topic.wait("challenger -> 2, long before --interval", lambda events: deployments(events, FREE) == [
            ("2", "DEPLOY", None)], timeout=30.0), \
            "\n".join(output) + "\nmlflow server:\n" + (tmp_path / "mlflow-server.log").read_text()[-4000:]
        follow.send_signal(signal.SIGTERM)
        assert follow.wait(timeout=60) == 0, "\n".join(output)
        reader.join(timeout=10)
        text = "\n".join(output)
        assert len({line.split(":", 1)[0] for line in output if ROUND.match(line)}) == 2, \
            f"one round at the start and one for the delivery, none for the refused ones:\n{text}"
        assert mlflow.http.get("/mlflow/webhooks").json().get("webhooks", []) == [], "follow deletes its webhook"
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        if topic is not None:
            topic.close()
        server.stop()
