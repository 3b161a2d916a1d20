"""The procedures of docs/operations.md, run as an operator would run them.

Backup and restore: `provline serve` stores a job's session, is stopped and its store's directory
archived; a second session is stored; the store is lost and put back from the archive; the sink's
consumer group is rewound to the backup's time with Kafka's own consumer-group tool; once serve
runs again the store holds both sessions, each event once, and verifies clean.

Key rotation: a producer signs with one key, then with its next; with both public keys trusted the
store verifies clean, with only the new one the events signed before the rotation are findings.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from deploy.demo.stack import Service
from deploy.local.kafka import create_topics
from deploy.local.kafka.broker import LIB_DIR, ensure_artifacts, free_port
from provline.schemas import Topics, default_catalog
from provline.sink.verifier import verify_store
from provline.sink.verify import Trust
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage, events_sent, memory_emitter

pytestmark = pytest.mark.integration

JOB = "train-churn"
TOKEN = "operations-test-admin-token"
DEADLINE_S = 90.0


def private_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def public_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def job_session(key: Ed25519PrivateKey, run_id: str) -> list[bytes]:
    """One signed session of a training job, closed with its final seal: the messages it sent."""
    emitter, transport = memory_emitter(JOB, signing={"key": private_text(key)})
    digest = "sha256:" + uuid.uuid4().hex * 2
    emitter.emit("DatasetVersion", {"name": f"data-{run_id}", "digest": digest})
    emitter.emit("RunEvent", {"run_id": run_id, "name": "train", "state": "COMPLETED", "inputs": [digest]})
    assert emitter.close(10)
    return events_sent(transport)


# ---------------------------------------------------------------- backup and restore


class Serve:
    """`provline serve` on one store directory, started and stopped as a service would be."""

    def __init__(self, workdir: Path, bootstrap: str, topics: Topics) -> None:
        self.port = free_port()
        self.store = workdir / "data" / "clickhouse"
        self.log = workdir / "serve.log"
        self.env = {
            **os.environ, "PROVLINE_KAFKA__BOOTSTRAP": bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
            "PROVLINE_STORE__URL": f"chdb://{self.store}", "PROVLINE_API__PORT": str(self.port),
            "PROVLINE_SINK__CONSUMER_GROUP": f"{topics.prefix}-sink", "PROVLINE_SINK__BATCH_MAX_S": "0.1",
            "PROVLINE_API__TOKENS": json.dumps({"ops": {"token": TOKEN, "role": "admin"}}),
            "PROVLINE_EVIDENCE__TRUSTED_KEYS": "{}",
        }
        self.service: Service | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.service = Service("serve", [sys.executable, "-m", "provline", "serve"], self.env, self.log,
                               health_url=f"{self.base}/readyz").start()
        self.service.wait_healthy(DEADLINE_S)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def verify(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.base}/v1/verify", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_for_events(self, count: int) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        report = self.verify()
        while report["events"] < count and time.monotonic() < deadline:
            time.sleep(0.3)
            report = self.verify()
        assert report["events"] == count, f"the store holds {report['events']} events, not {count}; see {self.log}"
        return report


def produce(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for message in messages:
        producer.produce(topic, value=message)
    assert producer.flush(10) == 0


def rewind_group(bootstrap: str, group: str, to: datetime) -> str:
    """kafka-consumer-groups.sh --reset-offsets --to-datetime, as docs/operations.md tells operators."""
    classpath = os.pathsep.join(str(jar) for jar in ensure_artifacts())
    assert any(LIB_DIR.glob("kafka-tools-*.jar")), "Kafka's tools are missing from the broker's jars; run make broker"
    result = subprocess.run(
        ["java", "-cp", classpath, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", bootstrap, "--group", group, "--reset-offsets", "--all-topics",
         "--to-datetime", to.strftime("%Y-%m-%dT%H:%M:%S.") + f"{to.microsecond // 1000:03d}Z", "--execute"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def serve(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Serve]:
    topics = Topics(f"ops{uuid.uuid4().hex[:10]}")
    create_topics(kafka_bootstrap, topics.all)
    running = Serve(tmp_path, kafka_bootstrap, topics)
    try:
        yield running
    finally:
        running.stop()


def test_a_restored_backup_and_a_rewound_sink_hold_every_event_once(
    serve: Serve, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    lineage_topic = Topics(serve.env["PROVLINE_TOPICS__PREFIX"]).lineage
    before, after = job_session(key, "run-before"), job_session(key, "run-after")

    produce(kafka_bootstrap, lineage_topic, before)
    serve.start()
    serve.wait_for_events(len(before))
    serve.stop()
    backup_time = datetime.now(UTC)
    archive = tmp_path / "provline-store.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(serve.store, arcname=serve.store.name)

    time.sleep(0.01)  # every message of `after` is stamped after the backup
    produce(kafka_bootstrap, lineage_topic, after)
    serve.start()
    serve.wait_for_events(len(before) + len(after))
    serve.stop()

    shutil.rmtree(serve.store)  # the disaster
    with tarfile.open(archive) as tar:
        tar.extractall(serve.store.parent, filter="data")
    rewind_group(kafka_bootstrap, serve.env["PROVLINE_SINK__CONSUMER_GROUP"], backup_time)
    serve.start()
    report = serve.wait_for_events(len(before) + len(after))
    assert report["findings"] == [] and report["unsealed"] == [], report
    assert report["sessions"] == 2


# ---------------------------------------------------------------- key rotation


def store_messages(client: Client, messages: list[bytes]) -> None:
    catalog = default_catalog()
    plan = plan_batch([StoredMessage("provline.lineage.v1", 0, n, raw) for n, raw in enumerate(messages)], catalog)
    assert insert_plan(client, plan, catalog) == []


def test_a_rotated_signing_key_verifies_while_both_keys_are_trusted(store: Client) -> None:
    old_key, new_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signed_before, signed_after = job_session(old_key, "run-old-key"), job_session(new_key, "run-new-key")
    store_messages(store, signed_before + signed_after)
    catalog = default_catalog()

    both = verify_store(store, catalog, Trust.from_config({JOB: [public_text(old_key), public_text(new_key)]}))
    assert both.findings == [] and both.events == len(signed_before) + len(signed_after)

    only_new = verify_store(store, catalog, Trust.from_config({JOB: [public_text(new_key)]}))
    flagged = {finding.event_id for finding in only_new.findings}
    old_ids = {default_catalog().decode(raw).value["event_id"] for raw in signed_before}
    assert flagged == old_ids, "only the events signed with the retired key are findings"
    assert {finding.problem for finding in only_new.findings} == {"bad-signature"}
