"""Shared fixtures: one real Kafka broker per test session, isolated topics per test, a chDB store.

The broker is, in order of preference: the one named by ``TEST_KAFKA_BOOTSTRAP``; the local
KRaft broker from Maven artifacts (``deploy/local/kafka``), which also allows restarts for fault
tests; a testcontainers Kafka when ``TEST_DOCKER=1`` and a Docker engine is present.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local.kafka import LocalKafka, create_topics
from provline.schemas import Topics
from tests.helpers import LoopThread

TEST_PARTITIONS = 4


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PROVLINE_* setting leaks from the developer's shell into a test's settings."""
    for name in list(os.environ):
        if name.startswith("PROVLINE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The local broker this session started, or None when an external broker is used."""
    if os.environ.get("TEST_KAFKA_BOOTSTRAP"):
        yield None
        return
    if os.environ.get("TEST_DOCKER") == "1":
        yield None
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka | None) -> Iterator[str]:
    if local_kafka is not None:
        yield local_kafka.bootstrap
    elif os.environ.get("TEST_KAFKA_BOOTSTRAP"):
        yield os.environ["TEST_KAFKA_BOOTSTRAP"]
    else:
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """Fresh topics for one test, so tests sharing the session broker never see each other's events."""
    isolated = Topics(prefix=f"test-{uuid.uuid4().hex[:10]}")
    create_topics(kafka_bootstrap, isolated.all, partitions=TEST_PARTITIONS)
    return isolated


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An asyncio loop in a thread, for the servers (sidecar, model server doubles) a module's tests share."""
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def chdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data directory of this test process: chDB hosts ONE engine (path) per process."""
    return tmp_path_factory.mktemp("chdb") / "clickhouse"


@pytest.fixture
def chdb_path(chdb_root: Path) -> str:
    """A fresh store for one test: a new, empty database in the session's one on-disk chDB engine.

    ``chdb://<dir>?database=<db>``; the database already exists, so both ``sink.store.open_store``
    and ``clickhouse_connect.get_client(dsn=...)`` open it. Close every client a test opens.
    """
    import clickhouse_connect

    database = f"t_{uuid.uuid4().hex[:12]}"
    chdb_root.mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(interface="chdb", path=str(chdb_root))
    try:
        client.command(f"CREATE DATABASE {database}")
    finally:
        client.close()
    return f"chdb://{chdb_root}?database={database}"


@pytest.fixture
def store(chdb_path: str) -> Iterator[Any]:
    """A fresh store with every migration applied (a clickhouse-connect client); closed after the test."""
    from provline.sink.store import migrate, open_store

    client = open_store(chdb_path)
    try:
        migrate(client)
        yield client
    finally:
        client.close()


MARKED_FOLDERS = {"integration": "integration", "e2e": "e2e", "real_servers": "real_servers", "cluster": "cluster"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test file under tests/integration, tests/e2e, tests/real_servers or tests/cluster carries its
    folder's marker, so that ``-m "not integration and not e2e and not real_servers and not cluster"`` runs
    the unit tests alone."""
    unmarked = sorted({
        str(item.path.relative_to(Path(__file__).parent)) for item in items
        for folder, marker in MARKED_FOLDERS.items()
        if folder in item.path.parts and item.get_closest_marker(marker) is None
    })
    if unmarked:
        raise pytest.UsageError(f"these test files lack their folder's marker (pytestmark = pytest.mark.<folder>): "
                                f"{', '.join(unmarked)}")
