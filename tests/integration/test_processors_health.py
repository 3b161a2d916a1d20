"""A processors worker answers /healthz and /readyz on its web port, as the Kubernetes probes and
compose health checks in deploy/ call them."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from provline.schemas import Topics
from provline.stream_processors.app import create_internal_topics
from provline.stream_processors.settings import ProcessorSettings
from tests.integration.test_processors_join import start_worker, wait_settled

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0
REBALANCE_LIMIT_S = 3


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


def test_the_drift_partials_topic_is_made_and_visible_before_the_worker_subscribes(
    kafka_bootstrap: str, topics: Topics,
) -> None:
    settings = ProcessorSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
                                 processors={"app_id": f"{topics.prefix}-processors"})
    name = f"{topics.prefix}-processors-drift-partials"
    for _ in range(2):  # the second start finds it
        create_internal_topics(settings)
        reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "unused"})  # a client of its own
        try:
            found = reader.list_topics(timeout=10).topics
        finally:
            reader.close()
        assert name in found and len(found[name].partitions) == settings.topics.partitions


def test_a_fresh_worker_holds_its_drift_partials_from_its_first_assignment(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path,
) -> None:
    """CI, stop 26: Faust created the partials topic as the worker started, the first assignment came
    before the brokers' metadata showed it, and its appearing then started a second rebalance, which
    hung in a commit: the worker computed no drift again. A race: here it usually did not happen."""
    worker = start_worker(kafka_bootstrap, topics, tmp_path / "data", tmp_path / "worker.log")
    try:
        wait_settled([worker], topics)
        partials = f"{topics.prefix}-processors-drift-partials"
        assert worker.assignment().get(partials), worker.assignment()
        assert "Ignoring missing topic" not in worker.log_path.read_text()
    finally:
        worker.stop()


def test_a_worker_stuck_in_a_rebalance_exits_so_that_it_is_restarted(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path,
) -> None:
    """A group member that stops answering holds a rebalance up to its session timeout (45 s): the
    worker joining meanwhile is stuck in it, outside table recovery, as a worker whose Faust hangs
    in a revoke is for good. With a 3 s limit the newcomer exits, code 1, saying why."""
    silent = start_worker(kafka_bootstrap, topics, tmp_path / "silent", tmp_path / "silent.log")
    newcomer = None
    try:
        wait_settled([silent], topics)
        os.kill(silent.process.pid, signal.SIGSTOP)
        newcomer = start_worker(kafka_bootstrap, topics, tmp_path / "newcomer", tmp_path / "newcomer.log",
                                extra_env={"PROVLINE_PROCESSORS__REBALANCE_LIMIT_S": str(REBALANCE_LIMIT_S)})
        deadline = time.monotonic() + DEADLINE_S
        while newcomer.process.poll() is None:
            assert time.monotonic() < deadline, "the worker stuck in a rebalance kept running"
            time.sleep(0.2)  # polling interval
        log = newcomer.log_path.read_text()
        assert newcomer.process.returncode == 1, log[-3000:]
        assert f"more than PROVLINE_PROCESSORS__REBALANCE_LIMIT_S={REBALANCE_LIMIT_S}" in log, log[-3000:]
    finally:
        os.kill(silent.process.pid, signal.SIGCONT)
        silent.stop()
        if newcomer is not None:
            newcomer.stop()
