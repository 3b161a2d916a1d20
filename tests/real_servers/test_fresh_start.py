"""Finding 1: a fresh start traces its first request within seconds, and operators can create and
check the topics themselves (``provline topics``).

The fresh start: a Kafka broker of its own with no topic at all; then, in the README's order,
``provline serve``, ``provline processors`` (default settings), the training job recording its
lineage, and ``provline sidecar`` in front of MLServer (the session's, serving the same models).
Nothing creates a topic but the services themselves.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from deploy.local.kafka import create_topics
from deploy.local.model_servers import RealServersStack
from provline.schemas import Topics
from tests.real_servers.audit import model_inputs, predict, provline, trace_of, v2_request
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
FIRST_TRACE_WITHIN_S = 10.0


def test_a_fresh_start_traces_its_first_request_within_10_s(servers: RealServers, tmp_path: Path) -> None:
    stack = RealServersStack(tmp_path)  # no broker given: it starts one of its own, empty
    try:
        stack.start_broker(with_topics=False)
        stack.start_platform()
        training = stack.train_models(tmp_path / "models")
        sidecar = stack.start_sidecar("sidecar", servers.mlserver.url)
        _, rows = model_inputs(training, "iris")

        deadline = time.monotonic() + FIRST_TRACE_WITHIN_S
        sent = predict(sidecar, "/v2/models/iris/infer", v2_request(rows[:1]))
        while trace_of(stack, sent.prediction_id) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        found = trace_of(stack, sent.prediction_id)
        logs = "\n".join(f"--- {s.name}\n{s.log_tail(12)}" for s in stack.services)
        assert found is not None, (f"the first request's trace was not queryable within {FIRST_TRACE_WITHIN_S:.0f} s "
                                   f"of the request; {training.summary()}\n{logs}")
    finally:
        stack.stop()


def topic_settings(bootstrap: str, prefix: str, partitions: int) -> dict[str, str]:
    return {"PROVLINE_KAFKA__BOOTSTRAP": bootstrap, "PROVLINE_TOPICS__PREFIX": prefix,
            "PROVLINE_TOPICS__PARTITIONS": str(partitions)}


def test_provline_topics_creates_and_describes_the_topics(kafka_bootstrap: str) -> None:
    prefix, partitions = f"ops-{uuid.uuid4().hex[:8]}", 3
    settings = topic_settings(kafka_bootstrap, prefix, partitions)
    created = provline(None, "topics", "create", env=settings)
    assert created.returncode == 0, created.stdout + created.stderr
    found = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    for name in Topics(prefix).all:
        assert name in found, f"provline topics create made no {name}:\n{created.stdout}"
        assert len(found[name].partitions) == partitions, name
    described = provline(None, "topics", "describe", env=settings)
    assert described.returncode == 0, described.stdout + described.stderr
    assert all(name in described.stdout for name in Topics(prefix).all), described.stdout


def test_a_topic_unlike_the_settings_is_never_used_silently(kafka_bootstrap: str) -> None:
    prefix = f"ops-{uuid.uuid4().hex[:8]}"
    inference = Topics(prefix).inference
    create_topics(kafka_bootstrap, [inference], partitions=1)
    settings = topic_settings(kafka_bootstrap, prefix, 4)
    for command in ("describe", "create"):
        answered = provline(None, "topics", command, env=settings)
        assert answered.returncode != 0, f"provline topics {command} accepted {inference} with 1 partition, not 4"
        assert inference in answered.stdout + answered.stderr
