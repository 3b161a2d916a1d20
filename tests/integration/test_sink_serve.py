"""``run_serve`` in its own process (its own chDB engine): serves, writes, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.local.kafka.broker import free_port
from schemas import Topics, default_catalog, key_for, new_envelope, producer_identity
from schemas.integrity import HashChain

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 30.0


def wait_for_trace(base: str, prediction_id: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "provline serve exited early"
        try:
            reply = httpx.get(f"{base}/v1/traces/{prediction_id}", timeout=2)
            if reply.status_code == 200:
                return reply.json()
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"no trace for {prediction_id} within {DEADLINE_SECONDS:.0f} s")


def test_serve_writes_serves_and_stops_on_sigterm(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    value = new_envelope(producer_identity("test", "serve"))
    value.update(prediction_id="pred-serve", endpoint="/predict", complete=True)
    HashChain(default_catalog()).seal("PredictionTrace", value)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.traces, key=key_for("PredictionTrace", value),
                     value=default_catalog().encode("PredictionTrace", value))
    assert producer.flush(10) == 0

    port = free_port()
    env = {
        **os.environ,
        "PROVLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PROVLINE_TOPIC_PREFIX": topics.prefix,
        "PROVLINE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}",
        "PROVLINE_API_PORT": str(port),
        "PROVLINE_BATCH_MAX_SECONDS": "0.1",
    }
    code = "from sink.serve import run_serve; from sink.settings import SinkSettings; run_serve(SinkSettings())"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2])
    try:
        found = wait_for_trace(f"http://127.0.0.1:{port}", "pred-serve", process)
        assert found["trace_event_id"] == value["event_id"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
