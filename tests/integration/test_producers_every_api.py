"""A job that uses every producers API, on the real broker; the sink stores it in chDB; the
promotion guardrail reads it back. Facts are compared with git, platform and importlib.metadata."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path

import clickhouse_connect
import pandas as pd
import pytest
from confluent_kafka import Consumer

from provline.producers import JobSettings, Lineage
from provline.schemas import Topics, default_catalog
from provline.sink.facts import model_facts
from provline.sink.promotion import PromotionPolicy, missing_requirements
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.writer import SinkWriter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def double(value: float) -> float:
    return 2 * value


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[tuple[str, dict]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"every-api-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    events: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(events) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    decoded = default_catalog().decode(message.value())
                    events.append((decoded.record, decoded.value))
    finally:
        consumer.close()
    return events


def test_every_api_records_the_captured_facts_and_the_guardrail_reads_them(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, chdb_path: str, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    csv = tmp_path / "customers.csv"
    csv.write_text("tenure,plan\n" + "".join(f"{i % 70},{'pro' if i % 4 else 'free'}\n" for i in range(500)))
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights-v1")
    settings = JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix})

    with Lineage(settings=settings, producer_name="every-api") as lineage:
        with lineage.run("pipeline", stage="orchestration") as pipeline:
            with lineage.run("train", stage="training", params={"lr": 0.05}, seed=1) as run:
                run.seed_everything(42)
                raw = run.use_dataset(csv, name="customers", license="CC0", consent="opt-in", pii=["none"])
                frame = run.use_dataset(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}), name="extra")
                features = run.log_feature_set("churn-features", [{"name": "tenure2", "dtype": "float",
                                                                    "code": double}])
                out = tmp_path / "scored.csv"
                out.write_text("id,score\n1,0.5\n")
                produced = run.produce_dataset(out, name="scored")
                run.log_metric("auc", 0.93)
                run.register_model(artifact, name="churn", version="1", framework="numpy")
        lineage.evaluate("churn", "1", metrics={"auc": (0.93, 0.9, 0.95)}, minimums={"auc": 0.8}, dataset=raw)
        lineage.decide("model:churn@1", transition="staging->production", approved=True, actor="ada",
                       role="risk-officer", rationale="meets the bar")
        lineage.deploy("churn", "1", endpoint="/predict", environment="staging")

    command = subprocess.run(
        [sys.executable, "-m", "provline", "run", "--name", "report", "--", sys.executable, "-c", "exit(4)"],
        env={**os.environ, "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix},
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert command.returncode == 4, command.stderr

    received = consume_all(kafka_bootstrap, topics.lineage, expected=16)
    seals = [v for kind, v in received if kind == "SessionSeal"]
    events = [(kind, v) for kind, v in received if kind != "SessionSeal"]
    assert len(events) == 14
    assert len(seals) == 2 and all(seal["final"] for seal in seals)  # the job's session and `provline run`'s
    kinds = [kind for kind, _ in events]
    assert sorted(set(kinds)) == ["DatasetVersion", "Decision", "Deployment", "Evaluation", "FeatureSetVersion",
                                  "ModelVersion", "RunEvent"]
    runs = {(v["name"], v["state"]): v for kind, v in events if kind == "RunEvent"}
    train = runs[("train", "COMPLETED")]
    assert train["parent_run_id"] == pipeline.run_id
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert train["code"]["commit"] == commit
    assert train["environment"]["python"] == platform.python_version()
    assert train["environment"]["kernel"] == platform.release()
    assert train["environment"]["packages"]["pyarrow"] == metadata.version("pyarrow")
    assert train["seeds"] == {"seed": 42} and train["hyperparameters"] == {"lr": "0.05"}
    assert train["inputs"] == [raw, frame] and train["outputs"] == [produced, "churn@1"]
    assert runs[("report", "FAILED")]["exit_code"] == 4
    datasets = {v["digest"]: v for kind, v in events if kind == "DatasetVersion"}
    assert datasets[raw]["row_count"] == 500 and datasets[raw]["consent"] == "opt-in"
    assert {p["column"]: p["kind"] for p in datasets[raw]["profiles"]} == {"tenure": "NUMERIC",
                                                                            "plan": "CATEGORICAL"}
    assert datasets[produced]["run_id"] == run.run_id and datasets[produced]["parents"] == [raw, frame]
    [model] = [v for kind, v in events if kind == "ModelVersion"]
    assert model["feature_sets"] == [features] and model["datasets"] == [raw, frame]

    # The sink stores everything; the promotion guardrail reads the lineage back from ClickHouse.
    sink_settings = ServeSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
                                  store={"url": chdb_path}, sink={"consumer_group": f"sink-{uuid.uuid4().hex[:6]}"})
    store = open_store(chdb_path)
    migrate(store)
    stop = threading.Event()
    writer = threading.Thread(target=SinkWriter(sink_settings, store).run, args=(stop,))
    writer.start()
    reader = clickhouse_connect.get_client(dsn=chdb_path)
    try:
        def query(sql: str) -> list[dict]:
            result = reader.query(sql)
            return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

        def stored() -> int:
            tables = ["run_events", "dataset_versions", "feature_set_versions", "model_versions", "evaluations",
                      "decisions", "deployments"]
            return sum(query(f"SELECT count() AS n FROM {table} FINAL")[0]["n"] for table in tables)

        deadline = time.monotonic() + 60
        while stored() < len(events) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored() == len(events)
        facts = model_facts(query, "churn", "1")
        assert missing_requirements(facts, PromotionPolicy(), "production") == []
        dirty = [f"training run {run.run_id} ran from a working tree with uncommitted changes"]
        assert missing_requirements(facts, PromotionPolicy(require_clean_tree=True), "production") == (
            dirty if train["code"]["dirty"] else [])
        assert missing_requirements(facts, PromotionPolicy(required_roles={"*": ["ceo"]}), "production") == [
            "no approval by role ceo for model:churn@1 -> production"]
    finally:
        stop.set()
        writer.join(30)
        reader.close()
        store.close()
