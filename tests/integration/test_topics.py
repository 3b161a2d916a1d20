"""Services make sure of their topics at start, on a real broker; late topics are picked up promptly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from deploy.local.kafka import create_topics
from provline.cli import app
from provline.config import ConfigError, KafkaSettings, TopicSettings
from provline.schemas import Topics
from provline.topics import describe, ensure_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROVLINE = str(Path(sys.executable).with_name("provline"))


def fresh_prefix() -> str:
    return f"fresh-{uuid.uuid4().hex[:10]}"


def test_missing_topics_are_created_as_the_settings_say_and_then_found_as_wanted(kafka_bootstrap: str) -> None:
    kafka, settings = KafkaSettings(bootstrap=kafka_bootstrap), TopicSettings(prefix=fresh_prefix(), partitions=3)
    first = ensure_topics(kafka, settings, service="test")
    assert [report.status for report in first] == ["created"] * 5
    states = describe(AdminClient({"bootstrap.servers": kafka_bootstrap}), Topics(settings.prefix).all, timeout_s=10)
    assert {state.partitions for state in states.values()} == {3}
    assert states[Topics(settings.prefix).lineage].config["retention.ms"] == "-1"
    assert [report.status for report in ensure_topics(kafka, settings, service="test")] == ["as wanted"] * 5


def test_an_inference_topic_with_other_partitions_stops_the_service_naming_the_setting(kafka_bootstrap: str) -> None:
    prefix = fresh_prefix()
    create_topics(kafka_bootstrap, [Topics(prefix).inference], partitions=2)
    with pytest.raises(ConfigError, match="has 2 partitions, the settings say 4; set PROVLINE_TOPICS__PARTITIONS=2"):
        ensure_topics(KafkaSettings(bootstrap=kafka_bootstrap), TopicSettings(prefix=prefix), service="test")


def test_with_create_off_nothing_is_created_and_the_cli_shows_what_is_missing(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = fresh_prefix()
    reports = ensure_topics(KafkaSettings(bootstrap=kafka_bootstrap), TopicSettings(prefix=prefix, create=False),
                            service="test")
    assert {report.status for report in reports} == {"missing"}
    assert not describe(AdminClient({"bootstrap.servers": kafka_bootstrap}), [Topics(prefix).lineage],
                        timeout_s=10)[Topics(prefix).lineage].exists
    monkeypatch.setenv("PROVLINE_KAFKA__BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("PROVLINE_TOPICS__PREFIX", prefix)
    runner = CliRunner()
    missing = runner.invoke(app, ["topics", "describe", "--json"])
    assert missing.exit_code == 1 and {row["differences"][0] for row in json.loads(missing.output)} == {"missing"}
    created = runner.invoke(app, ["topics", "create"])
    assert created.exit_code == 0 and created.output.count(": created") == 5
    described = runner.invoke(app, ["topics", "describe", "--json"])
    assert described.exit_code == 0, described.output
    assert all(row["exists"] and row["partitions"] == 4 for row in json.loads(described.output))


def test_serve_creates_its_topics_at_start(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    """Fresh start: nothing exists; `provline serve` creates the topics."""
    prefix = fresh_prefix()
    env = {**os.environ, "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": prefix,
           "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}", "PROVLINE_API__PORT": "0",
           "PROVLINE_TOPICS__METADATA_REFRESH_S": "1"}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    process = subprocess.Popen([PROVLINE, "serve"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, "provline serve exited"
            states = describe(admin, Topics(prefix).all, timeout_s=10)
            if all(state.exists for state in states.values()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("provline serve did not create its topics")
        assert {state.partitions for state in states.values()} == {4}
    finally:
        process.terminate()
        process.wait(30)


def test_a_topic_created_after_serve_started_is_consumed_within_seconds(kafka_bootstrap: str, tmp_path: Path) -> None:
    """With creation off, a topic created after `provline serve` started is consumed at the next
    metadata refresh (1 s here; 10 s by default), not librdkafka's five minutes."""
    from confluent_kafka import Producer

    from deploy.local.kafka.broker import free_port
    from provline.schemas import default_catalog, key_for, new_envelope, producer_identity
    from provline.schemas.integrity import HashChain
    from tests.helpers import seal
    from tests.integration.test_sink_serve import TOKEN, wait_for_trace

    topics, port = Topics(fresh_prefix()), free_port()
    env = {**os.environ, "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
           "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}", "PROVLINE_API__PORT": str(port),
           "PROVLINE_TOPICS__CREATE": "false", "PROVLINE_TOPICS__METADATA_REFRESH_S": "1",
           "PROVLINE_SINK__BATCH_MAX_S": "0.1",
           "PROVLINE_API__TOKENS": json.dumps({"ops": {"token": TOKEN, "role": "auditor"}})}
    process = subprocess.Popen([PROVLINE, "serve"], env=env, cwd=REPO)
    try:
        time.sleep(3)  # serve is consuming, and the topics do not exist
        assert process.poll() is None
        create_topics(kafka_bootstrap, topics.all)
        value = new_envelope(producer_identity("test", "late"))
        value.update(prediction_id="pred-late", endpoint="/predict", complete=False, missing="lineage")
        seal(HashChain(default_catalog()), "PredictionTrace", value)
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topics.traces, key=key_for("PredictionTrace", value),
                         value=default_catalog().encode("PredictionTrace", value))
        assert producer.flush(10) == 0
        assert wait_for_trace(f"http://127.0.0.1:{port}", "pred-late", process)["prediction_id"] == "pred-late"
    finally:
        process.terminate()
        process.wait(30)
