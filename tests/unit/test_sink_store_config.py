from __future__ import annotations

import pytest
from pydantic import ValidationError

from provline.sink.errors import StoreConfigError
from provline.sink.settings import ServeSettings
from provline.sink.store import parse_chdb_url, split_statements


def test_chdb_url_path_is_everything_after_the_scheme() -> None:
    assert parse_chdb_url("chdb:///var/lib/p?database=audit").path == "/var/lib/p"
    assert parse_chdb_url("chdb:///var/lib/p?database=audit").database == "audit"
    relative = parse_chdb_url("chdb://.provline/clickhouse")
    assert relative.path.endswith("/.provline/clickhouse") and relative.database is None
    with pytest.raises(StoreConfigError, match="names no directory"):
        parse_chdb_url("chdb://")
    with pytest.raises(StoreConfigError, match="unknown option"):
        parse_chdb_url("chdb:///x?user=a")


def test_split_statements_drops_comment_only_chunks() -> None:
    assert split_statements("-- head\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n-- tail\n") == [
        "-- head\nCREATE TABLE a (x UInt8) ENGINE = Memory"
    ]


def test_settings_read_prefixed_env_and_refuse_unknown_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_KAFKA__BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("PROVLINE_SINK__BATCH_MAX_EVENTS", "10")
    settings = ServeSettings()
    assert (settings.kafka.bootstrap, settings.sink.batch_max_events) == ("broker:9092", 10)
    with pytest.raises(ValidationError, match="batch_max_event"):
        ServeSettings(sink={"batch_max_event": 3})
