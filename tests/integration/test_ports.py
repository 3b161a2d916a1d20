"""Every port provline opens is set one way (its PROVLINE_ variable), and 0 means any free port,
which the service prints at start (issue 14, item 13)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.local.kafka import LocalKafka
from deploy.local.kafka.broker import BrokerError, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROVLINE = str(Path(sys.executable).with_name("provline"))
LISTENING = re.compile(r"(?:listening on|running on) http://[\d.]+:(\d+)(/\S*)?")


def ports_printed(process: subprocess.Popen[str], count: int, deadline_s: float = 60,
                  marker: str = "") -> list[tuple[int, str]]:
    """(port, path) of the first ``count`` "listening on" addresses the process prints on lines with ``marker``."""
    found: list[tuple[int, str]] = []
    deadline = time.monotonic() + deadline_s
    assert process.stdout is not None
    while len(found) < count and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if marker in line:
            found += [(int(match.group(1)), match.group(2) or "/") for match in LISTENING.finditer(line)]
    assert len(found) >= count, f"the service printed {found}, expected {count} ports"
    found = found[:count]
    return found


def answers(port: int, path: str, deadline_s: float = 60) -> str:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, env={**os.environ, **env}, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_processors_on_port_0_print_the_ports_they_serve_health_and_metrics_on(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    process = start([PROVLINE, "processors"], {
        "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": f"ports-{os.getpid()}",
        "PROVLINE_PROCESSORS__WEB_PORT": "0", "PROVLINE_PROCESSORS__METRICS_PORT": "0",
        "PROVLINE_PROCESSORS__DATA_DIR": str(tmp_path / "data"),
    })
    try:
        (web, _), (metrics, path) = ports_printed(process, 2)
        assert 0 not in (web, metrics) and web != metrics
        assert "provline_processors_traces_out_total" in answers(metrics, path)
        answers(web, "/")
    finally:
        stop(process)


def test_serve_on_port_0_prints_the_port_its_api_answers_on(kafka_bootstrap: str, tmp_path: Path) -> None:
    process = start([PROVLINE, "serve"], {
        "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": f"ports-{os.getpid()}",
        "PROVLINE_API__PORT": "0", "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}",
    })
    try:
        [(port, _)] = ports_printed(process, 1)
        assert '"status":"ok"' in answers(port, "/healthz")
    finally:
        stop(process)


def test_the_local_broker_takes_its_controller_port_and_refuses_one_port_for_both(tmp_path: Path) -> None:
    controller = free_port()
    broker = LocalKafka(tmp_path / "kafka", controller_port=controller)
    assert broker.controller_port == controller and broker.port not in (0, controller)
    with broker:
        assert f"CONTROLLER://127.0.0.1:{controller}" in (broker.data_dir / "server.properties").read_text()
    with pytest.raises(BrokerError, match="both 9092"):
        LocalKafka(tmp_path / "other", port=9092, controller_port=9092)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_sidecar_on_port_0_prints_its_proxy_and_admin_ports(workers: int) -> None:
    process = start([PROVLINE, "sidecar"], {
        "PROVLINE_SIDECAR__UPSTREAM": "http://127.0.0.1:9", "PROVLINE_SIDECAR__PORT": "0",
        "PROVLINE_SIDECAR__ADMIN_PORT": "0", "PROVLINE_SIDECAR__WORKERS": str(workers),
        "PROVLINE_SIDECAR__LOG_FORMAT": "text",
    })
    try:
        (proxy, _), (admin, _) = ports_printed(process, 2, marker="provline sidecar")
        assert 0 not in (proxy, admin) and proxy != admin
        assert "ok" in answers(admin, "/healthz")
    finally:
        stop(process)
