from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from provline.config import ConfigError, load_settings
from provline.stream_processors.app import create_app
from provline.stream_processors.dead_letters import DeadLetters
from provline.stream_processors.join import Timing
from provline.stream_processors.join_agent import tick_interval
from provline.stream_processors.settings import ProcessorSettings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_KAFKA__BOOTSTRAP", "a:9092, b:9093")
    monkeypatch.setenv("PROVLINE_TOPICS__PREFIX", "acme")
    monkeypatch.setenv("PROVLINE_PROCESSORS__LINEAGE_WAIT_S", "2.5")
    settings = load_settings(ProcessorSettings)
    assert settings.kafka.servers() == ["a:9092", "b:9093"]
    assert settings.topics.prefix == "acme" and settings.processors.lineage_wait_s == 2.5
    assert settings.topics.partitions == 4 and settings.processors.web_port == 6066


def test_settings_refuse_unknown_and_invalid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="partitons"):
        ProcessorSettings(topics={"partitons": 3})
    with pytest.raises(ConfigError, match="PROVLINE_PROCESSORS__LINEAGE_WAIT_S"):
        load_settings(ProcessorSettings, processors={"lineage_wait_s": 0})
    with pytest.raises(ConfigError, match="PROVLINE_PROCESSORS__DEDUP_RETENTION_S"):
        load_settings(ProcessorSettings, processors={"pending_ttl_s": 100, "dedup_retention_s": 10})
    with pytest.raises(ValueError, match="PROVLINE_KAFKA__BOOTSTRAP"):
        ProcessorSettings(kafka={"bootstrap": " , "}).kafka.servers()
    monkeypatch.setenv("PROVLINE_PROCESSORS__LINEAGE_WAIT_SECONDS", "3")  # the old name, with the old unit
    with pytest.raises(ConfigError, match="did you mean PROVLINE_PROCESSORS__LINEAGE_WAIT_S"):
        load_settings(ProcessorSettings)


def test_create_app_builds_agents_and_tables_without_connecting() -> None:
    settings = ProcessorSettings(
        kafka={"bootstrap": "127.0.0.1:1"}, topics={"prefix": "acme", "partitions": 6},
        processors={"app_id": "unit-app"},
    )
    app = create_app(settings)
    assert set(app.agents) == {"lineage", "join", "drift"}
    assert set(app.tables) == {"lineage", "pending-predictions", "drift-windows"}
    assert app.conf.topic_partitions == 6 and app.conf.id == "unit-app"
    # two apps from one process do not share state
    assert create_app(settings) is not app


def test_changelogs_get_the_topics_replicas_and_one_without_a_number() -> None:
    def changelog_replicas(replication_factor: int) -> int:
        settings = ProcessorSettings(kafka={"bootstrap": "127.0.0.1:1"},
                                     topics={"replication_factor": replication_factor})
        return int(create_app(settings).conf.topic_replication_factor)

    # -1 is resolved by run_worker from the inference topic (tests/cluster) before the app is made
    assert (changelog_replicas(3), changelog_replicas(-1)) == (3, 1)


def test_tick_interval_is_bounded() -> None:
    assert tick_interval(Timing(ttl=60, lineage_wait=10, retention=300)) == 1.0
    assert tick_interval(Timing(ttl=60, lineage_wait=2, retention=300)) == 0.2
    assert tick_interval(Timing(ttl=0.01, lineage_wait=2, retention=300)) == 0.05


class FakeProducer:
    def __init__(self, *, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self.fail = fail

    def produce(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
                headers: Any = None) -> None:
        if self.fail:
            raise BufferError("local queue full")
        self.sent.append((topic, key, value, headers))


def garbage_event() -> Any:
    message = SimpleNamespace(topic="p.inference.v1", partition=2, offset=17, key=b"k", value=b"junk")
    return SimpleNamespace(message=message, key=b"k", value=b"junk")


def test_dead_letters_keep_the_bytes_and_say_why() -> None:
    producer = FakeProducer()
    dead_letters = DeadLetters(producer, "p.dlq.v1")
    dead_letters.send(garbage_event(), "CorruptEventError", "not a provline event")
    [(topic, key, value, headers)] = producer.sent
    assert (topic, key, value) == ("p.dlq.v1", b"k", b"junk")
    assert dict(headers) == {
        "provline-dlq-reason": b"CorruptEventError", "provline-dlq-error": b"not a provline event",
        "provline-source-topic": b"p.inference.v1", "provline-source-partition": b"2",
        "provline-source-offset": b"17",
    }
    assert (dead_letters.count, dead_letters.failed) == (1, 0)


def test_dead_letters_never_raise() -> None:
    dead_letters = DeadLetters(FakeProducer(fail=True), "p.dlq.v1")
    dead_letters.send(garbage_event(), "Reason", "why")
    assert (dead_letters.count, dead_letters.failed) == (1, 1)


def test_a_worker_is_ready_only_when_neither_rebalancing_nor_recovering() -> None:
    from provline.stream_processors.app import readiness

    assert readiness(rebalancing=False, recovering=False) is None
    assert "rebalancing" in str(readiness(rebalancing=True, recovering=False))
    assert "recovering" in str(readiness(rebalancing=False, recovering=True))



def test_a_rebalance_is_stuck_once_it_outlasts_the_limit_outside_recovery() -> None:
    from provline.stream_processors.app import RebalanceWatch

    watch = RebalanceWatch(limit_s=10)
    assert watch.stuck(rebalancing=True, recovering=False, number=1, now=100.0) is None
    assert watch.stuck(rebalancing=True, recovering=False, number=1, now=110.0) is None  # at the limit: not yet
    assert watch.stuck(rebalancing=True, recovering=False, number=1, now=111.5) == 11.5


def test_table_recovery_and_a_new_rebalance_start_the_clock_again() -> None:
    from provline.stream_processors.app import RebalanceWatch

    watch = RebalanceWatch(limit_s=10)
    watch.stuck(rebalancing=True, recovering=False, number=1, now=0.0)
    assert watch.stuck(rebalancing=True, recovering=True, number=1, now=50.0) is None  # recovering may take long
    assert watch.stuck(rebalancing=True, recovering=False, number=1, now=55.0) is None
    assert watch.stuck(rebalancing=True, recovering=False, number=2, now=64.0) is None  # another rebalance began
    assert watch.stuck(rebalancing=True, recovering=False, number=2, now=74.5) == 10.5
    assert watch.stuck(rebalancing=False, recovering=False, number=2, now=80.0) is None
    assert watch.stuck(rebalancing=True, recovering=False, number=2, now=85.0) is None  # ended, so counted afresh


def test_the_rebalance_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ProcessorSettings().processors.rebalance_limit_s == 300
    monkeypatch.setenv("PROVLINE_PROCESSORS__REBALANCE_LIMIT_S", "45")
    assert load_settings(ProcessorSettings).processors.rebalance_limit_s == 45
    with pytest.raises(ValidationError, match="rebalance_limit_s"):
        ProcessorSettings(processors={"rebalance_limit_s": 0})
