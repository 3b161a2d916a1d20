"""``run_sidecar`` as a process: configured from the environment, admin port, graceful SIGTERM."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = (
    "import logging; logging.basicConfig(level=logging.INFO)\n"
    "from provline.sidecar import SidecarSettings, run_sidecar\n"
    "run_sidecar(SidecarSettings())\n"
)


class ModelHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"score": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ModelHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_sidecar_serves_reports_and_stops_on_sigterm(model_server: str) -> None:
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVLINE_")}
    env.update({
        "PROVLINE_SIDECAR__UPSTREAM": model_server, "PROVLINE_SIDECAR__HOST": "127.0.0.1",
        "PROVLINE_SIDECAR__PORT": str(port), "PROVLINE_SIDECAR__ADMIN_PORT": str(admin_port),
        "PROVLINE_EMITTER__TRANSPORT": "console", "PYTHONPATH": str(REPO),
    })
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{admin}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "sidecar did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"{admin}/healthz").json() == {"status": "ok"}

        reply = httpx.post(f"http://127.0.0.1:{port}/predict", content=b'{"x": 2}',
                           headers={"X-Request-ID": "run-1"})
        assert reply.status_code == 200 and reply.content == b'{"score": 1}'
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 501  # proxied, not the admin's
        metrics = httpx.get(f"{admin}/metrics").text
        assert 'provline_sidecar_requests_total{status="200"} 1.0' in metrics
        assert "provline_sidecar_upstream_latency_seconds_count 2.0" in metrics

        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "InferenceRequest" in stdout and "InferenceResponse" in stdout and "key=run-1" in stdout
    assert "provline sidecar stopping" in stderr


def wait_ready(admin: str, process: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = httpx.get(f"{admin}/readyz")
            if reply.status_code == 200:
                return reply.json()
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "sidecar did not become ready"
        time.sleep(0.1)


def test_the_cli_runs_several_workers_behind_one_port_and_one_admin_port(model_server: str, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVLINE_")}
    env.update({"PROVLINE_EMITTER__TRANSPORT": "console", "PYTHONPATH": str(REPO)})
    command = [sys.executable, "-c", "from provline.cli import app; app()", "sidecar", "--upstream", model_server,
               "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port), "--workers", "2"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    ids = [f"w-{i}" for i in range(40)]
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        assert wait_ready(admin, process) == {"status": "ready", "workers": 2, "ready_workers": 2}
        for prediction_id in ids:  # a new connection each time, so the kernel spreads them over the workers
            reply = httpx.post(f"http://127.0.0.1:{port}/predict", content=b'{"x": 2}',
                               headers={"X-Request-ID": prediction_id})
            assert reply.status_code == 200 and reply.content == b'{"score": 1}'
        metrics = httpx.get(f"{admin}/metrics").text  # summed over both workers
        assert 'provline_sidecar_requests_total{status="200"} 40.0' in metrics
        assert 'provline_events_emitted_total{kind="InferenceRequest"} 40.0' in metrics

        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    for prediction_id in ids:  # every worker flushed its events before exiting
        for kind in ("InferenceRequest", "InferenceResponse"):
            assert f"{kind} key={prediction_id} " in stdout
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {line.get("worker") for line in logged if "worker" in line} == {0, 1}  # structured logs, per worker
    assert any(line["message"] == "provline sidecar stopping" for line in logged)
