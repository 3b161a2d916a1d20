"""A processors worker answers /healthz and /readyz on its web port, as the Kubernetes probes and
compose health checks in deploy/ call them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from provline.schemas import Topics
from tests.integration.test_processors_join import start_worker

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0


def answer(port: int, path: str) -> tuple[int, dict[str, str]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None


def test_a_worker_is_healthy_and_then_ready(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    worker = start_worker(kafka_bootstrap, topics, tmp_path / "data", tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + DEADLINE_S
        ready = None
        while time.monotonic() < deadline:
            worker.check_alive()
            ready = answer(worker.web_port, "/readyz")
            if ready is not None and ready[0] == 200:
                break
            if ready is not None:
                assert ready[0] == 503 and ready[1]["status"] == "not ready" and ready[1]["reason"], ready
            time.sleep(0.3)
        assert ready == (200, {"status": "ready"}), f"not ready within {DEADLINE_S:.0f}s: {ready}"
        assert answer(worker.web_port, "/healthz") == (200, {"status": "ok"})
    finally:
        worker.stop()
