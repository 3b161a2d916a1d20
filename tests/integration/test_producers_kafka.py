from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from provline.producers import JobSettings, Lineage
from provline.schemas import Topics, default_catalog
from tests.helpers import chain_findings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    messages, deadline = [], time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_job_events_reach_the_broker_with_the_captured_facts(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    dataset = tmp_path / "train.csv"
    dataset.write_text("x,y\n1,0\n2,1\n")
    settings = JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix})
    with Lineage(settings=settings, producer_name="integration-job") as lineage:
        with lineage.run("train", stage="training", params={"lr": 0.1}, seed=5) as run:
            digest = run.use_dataset(dataset, name="train")
            run.register_model(dataset, name="m", version="1")
        lineage.deploy("m", "1", endpoint="/predict")

    # five lineage events and the session's final seal, in partition order, not emit order
    messages = consume(kafka_bootstrap, topics.lineage, 6)
    decoded = [default_catalog().decode(m.value()) for m in messages]
    by_kind = {}
    for message, event in zip(messages, decoded, strict=True):
        by_kind.setdefault(event.record, []).append(event.value)
        assert message.key().decode() in (event.value.get("run_id"), event.value.get("digest"), "m@1",
                                          event.value["producer"]["session_id"])
    assert sorted(by_kind) == ["DatasetVersion", "Deployment", "ModelVersion", "RunEvent", "SessionSeal"]
    assert len(by_kind["RunEvent"]) == 2 and by_kind["SessionSeal"][0]["final"]

    completed = next(v for v in by_kind["RunEvent"] if v["state"] == "COMPLETED")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert completed["code"]["commit"] == commit
    assert completed["environment"]["python"] == platform.python_version()
    assert completed["environment"]["packages"]["fastavro"] == metadata.version("fastavro")
    assert completed["hyperparameters"] == {"lr": "0.1"} and completed["seeds"] == {"seed": 5}
    assert by_kind["DatasetVersion"][0]["digest"] == digest
    assert by_kind["ModelVersion"][0]["run_id"] == completed["run_id"]


def _emit_in_child(emitter, count: int) -> None:
    for index in range(count):
        emitter.emit("Deployment", {"model_name": "child", "model_version": str(index), "environment": "e",
                                    "endpoint": "/p", "action": "DEPLOY"})
    raise SystemExit(0 if emitter.close(timeout=30) else 1)


def test_a_forked_child_gets_its_own_session_and_delivers(kafka_bootstrap: str, topics: Topics, tmp_path) -> None:
    import multiprocessing

    from provline.producers import build_emitter
    emitter = build_emitter(JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
                                        emitter={"spool_dir": tmp_path / "spool"}), producer_name="parent")
    emitter.emit("Deployment", {"model_name": "parent", "model_version": "0", "environment": "e",
                                "endpoint": "/p", "action": "DEPLOY"})
    child = multiprocessing.get_context("fork").Process(target=_emit_in_child, args=(emitter, 3))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    emitter.emit("Deployment", {"model_name": "parent", "model_version": "1", "environment": "e",
                                "endpoint": "/p", "action": "DEPLOY"})
    assert emitter.close(timeout=30)

    catalog = default_catalog()  # read from several partitions: put back in creation (event id) order
    raws = sorted((m.value() for m in consume(kafka_bootstrap, topics.lineage, 7)),
                  key=lambda raw: catalog.decode(raw).value["event_id"])
    sessions: dict[str, list[bytes]] = {}
    for raw in raws:
        sessions.setdefault(default_catalog().decode(raw).value["producer"]["session_id"], []).append(raw)
    assert len(raws) == 7 and len(sessions) == 2
    assert sorted(len(chain) for chain in sessions.values()) == [3, 4]  # each closed by its final seal
    assert all(chain_findings(chain) == [] for chain in sessions.values())
