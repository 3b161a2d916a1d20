"""provline's alerts in the real Alertmanager (Debian's prometheus-alertmanager, `make deploy-tools`):
a drift breach stored in chDB is posted once by the monitor, listed by Alertmanager's /api/v2/alerts,
and gone from it once resolved (endsAt) when a later window is back within its threshold."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client

from provline.sink.monitor import Monitor
from provline.sink.settings import MonitoringSettings
from tests.deploy.assets import tool
from tests.integration.test_monitor import story
from tests.integration.test_sink_store import Events, insert_directly

DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [tool("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else "exited"
            assert time.monotonic() < deadline, "Alertmanager did not get ready"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def active(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(url + "/api/v2/alerts", timeout=5).json())


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_alertmanager_receives_one_alert_per_breach_and_its_resolution(store: Client, alertmanager: str) -> None:
    events, _, _ = story(drifted=True, wrong=0, gap=False)
    insert_directly(store, events)
    monitor = Monitor(MonitoringSettings(receivers=[{"kind": "alertmanager", "url": alertmanager}],
                                         generator_url="http://console.example/drift"), store)
    monitor.run_once()
    monitor.run_once()
    [alert] = wait_for(lambda: active(alertmanager), "the drift alert in Alertmanager")
    assert alert["labels"]["alertname"] == "drift_breach" and alert["labels"]["feature"] == "age"
    assert alert["generatorURL"] == "http://console.example/drift" and alert["status"]["state"] == "active"

    t0 = events.all[0][1]["event_time"]
    later = Events()
    later.add("DriftMetric", model_name="churn", model_version="3", feature="age", window_start=t0 + timedelta(hours=1),
              window_end=t0 + timedelta(hours=2), metric="psi", value=0.01, threshold=0.2, breached=False,
              sample_size=100)
    insert_directly(store, later)
    assert monitor.run_once().resolve == [f"drift_breach|churn@3/age/psi|{alert['labels']['window']}"]
    wait_for(lambda: active(alertmanager) == [], "the resolved alert to leave Alertmanager's active list")
