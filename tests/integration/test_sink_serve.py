"""``run_serve`` in its own process (its own chDB engine): serves, writes, and stops cleanly on SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from typer.testing import CliRunner, Result

from deploy.local.kafka.broker import free_port
from provline.schemas import Topics, default_catalog, key_for, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from tests.helpers import seal

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 30.0


TOKEN = "t" * 32


def wait_for_trace(base: str, prediction_id: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "provline serve exited early"
        try:
            reply = httpx.get(f"{base}/v1/traces/{prediction_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=2)
            if reply.status_code == 200:
                return reply.json()
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"no trace for {prediction_id} within {DEADLINE_SECONDS:.0f} s")


def test_serve_writes_serves_and_stops_on_sigterm(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from confluent_kafka import Producer

    chain = HashChain(default_catalog())
    model = new_envelope(producer_identity("test", "serve"))
    model.update(model_name="churn", version="3", artifact_uri="s3://m", artifact_sha256="a" * 64,
                 run_id="run-1", datasets=["sha256:d"])
    seal(chain, "ModelVersion", model)
    value = new_envelope(producer_identity("test", "serve"))
    value.update(prediction_id="pred-serve", endpoint="/predict", complete=True, model_name="churn",
                 model_version="3", outputs={"predict": "1"})
    seal(chain, "PredictionTrace", value)
    feedback = new_envelope(producer_identity("test", "serve"))
    feedback.update(prediction_id="pred-serve", label="1", source="crm", observed_time=feedback["event_time"])
    seal(chain, "Feedback", feedback)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.lineage, key=key_for("ModelVersion", model),
                     value=default_catalog().encode("ModelVersion", model))
    producer.produce(topics.traces, key=key_for("PredictionTrace", value),
                     value=default_catalog().encode("PredictionTrace", value))
    producer.produce(topics.inference, key=key_for("Feedback", feedback),
                     value=default_catalog().encode("Feedback", feedback))
    assert producer.flush(10) == 0

    port = free_port()
    env = {
        **os.environ,
        "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap,
        "PROVLINE_TOPICS__PREFIX": topics.prefix,
        "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}",
        "PROVLINE_API__PORT": str(port),
        "PROVLINE_SINK__BATCH_MAX_S": "0.1",
        "PROVLINE_MONITORING__INTERVAL_S": "0.5",
        "PROVLINE_API__TOKENS": json.dumps({"ops": {"token": TOKEN, "role": "auditor"}}),
        "PROVLINE_EVIDENCE__SIGNING_KEY": base64.b64encode(SIGNING_KEY).decode(),
    }
    code = ("from provline.sink.serve import run_serve; from provline.sink.settings import ServeSettings; "
            "run_serve(ServeSettings())")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2])
    try:
        base = f"http://127.0.0.1:{port}"
        found = wait_for_trace(base, "pred-serve", process)
        assert found["trace_event_id"] == value["event_id"]
        assert httpx.get(f"{base}/v1/traces/pred-serve", timeout=5).status_code == 401
        check_cli(base, tmp_path, monkeypatch)
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


SIGNING_KEY = bytes(range(32))


def check_performance(base: str) -> None:
    """serve's monitor computes performance from the stored label on its own; the command reads it."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not (rows := json.loads(cli("performance", "churn", "--version", "3", "--json", "--api", base).output)):
        assert time.monotonic() < deadline, "serve's monitor stored no performance for churn@3"
        time.sleep(0.2)
    accuracy = next(row for row in rows if row["metric"] == "accuracy")
    assert (accuracy["value"], accuracy["sample_count"]) == (1.0, 1)
    refreshed = cli("performance", "churn", "--refresh", "--api", base)
    assert refreshed.exit_code == 0 and "accuracy" in refreshed.output


def cli(*args: str) -> Result:
    from provline.cli import app

    return CliRunner().invoke(app, list(args))


def check_cli(base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit commands against the running serve, with and without PROVLINE_CLIENT__API_TOKEN."""
    refused = cli("trace", "pred-serve", "--api", base)
    assert refused.exit_code == 2 and "401" in refused.output
    monkeypatch.setenv("PROVLINE_CLIENT__API_TOKEN", TOKEN)
    traced = cli("trace", "pred-serve", "--json", "--api", base)
    assert traced.exit_code == 0, traced.output
    assert json.loads(traced.output)["model_name"] == "churn"
    counted = cli("sql", "SELECT count() AS n FROM prediction_traces", "--api", base)
    assert counted.exit_code == 0 and json.loads(counted.output) == {"n": 1}
    walked = cli("lineage", "downstream", "dataset:sha256:d", "--kind", "prediction", "--json", "--api", base)
    assert walked.exit_code == 0, walked.output
    assert [row["node"] for row in json.loads(walked.output)] == ["prediction:pred-serve"]
    listed = cli("models", "--json", "--api", base)
    assert listed.exit_code == 0 and [m["model_version"] for m in json.loads(listed.output)] == ["3"]
    assert json.loads(cli("runs", "--json", "--api", base).output) == []
    assert json.loads(cli("drift", "churn@3", "--json", "--api", base).output) == []
    assert cli("verify", "--api", base).exit_code == 0
    check_performance(base)
    check_anchors(base, tmp_path, monkeypatch)
    out = tmp_path / "bundle"
    exported = cli("export", "pred-serve", "--format", "prov", "--out", str(out), "--api", base)
    assert exported.exit_code == 0, exported.output
    public = base64.b64encode(
        Ed25519PrivateKey.from_private_bytes(SIGNING_KEY).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    assert cli("verify", str(out), "--public-key", public).exit_code == 0
    (out / "events.jsonl").write_bytes((out / "events.jsonl").read_bytes().replace(b"A", b"B", 1))
    tampered = cli("verify", str(out), "--public-key", public)
    assert tampered.exit_code == 1 and "events.jsonl" in tampered.output


def check_anchors(base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``provline anchor`` publishes the session heads; ``verify --anchor`` holds the store to them."""
    anchor_key = Ed25519PrivateKey.generate()
    public = base64.b64encode(anchor_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    private = base64.b64encode(anchor_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()
    refused = cli("anchor", "--api", base)
    assert refused.exit_code == 2 and "PROVLINE_ANCHOR__SIGNING_KEY" in refused.output
    monkeypatch.setenv("PROVLINE_ANCHOR__SIGNING_KEY", private)
    anchors = tmp_path / "anchors"
    anchored = cli("anchor", "--to", str(anchors), "--api", base)
    assert anchored.exit_code == 0, anchored.output
    [published] = list(anchors.iterdir())
    assert "anchored 1 sessions" in anchored.output

    held = cli("verify", "--anchor", str(anchors), "--anchor-public-key", public, "--api", base)
    assert held.exit_code == 0 and "consistent with 1 anchors" in held.output, held.output
    untrusted = cli("verify", "--anchor", str(anchors), "--api", base)  # no key: an anchor's own proves nothing
    assert untrusted.exit_code == 2 and "no trusted anchor key" in untrusted.output
    document = json.loads(published.read_text())
    document["sessions"][0]["count"] -= 1  # as if the anchor had seen fewer events
    published.write_text(json.dumps(document))
    altered = cli("verify", "--anchor", str(anchors), "--anchor-public-key", public, "--api", base)
    assert altered.exit_code == 2 and "Merkle root" in altered.output


def test_migrate_command_is_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}",
           "PROVLINE_STORE__RETENTION_DAYS": json.dumps({"inference_requests": 30})}
    command = [sys.executable, "-m", "provline", "migrate"]
    first = subprocess.run(command, env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    assert "0002_audit_store.sql" in first.stdout
    second = subprocess.run(command, env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0 and "up to date" in second.stdout
