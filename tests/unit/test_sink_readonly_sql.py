from __future__ import annotations

import pytest
from pydantic import ValidationError

from provline.sink.errors import ReadOnlySqlError, StoreConfigError
from provline.sink.queries import check_readonly_sql
from provline.sink.settings import ServeSettings
from provline.sink.store import parse_chdb_url, split_statements


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("SELECT 1", "SELECT"),
        ("  select * from prediction_traces FINAL where prediction_id = 'a;b'  ;  ", "SELECT"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ("-- who\nSHOW TABLES", "SHOW"),
        ("/* a; b */ DESCRIBE TABLE run_events;", "DESCRIBE"),
        ("EXPLAIN SELECT 1", "EXPLAIN"),
        ("(SELECT 1)", "SELECT"),
        ("SELECT `we;ird` FROM t", "SELECT"),
    ],
)
def test_read_statements_pass(sql: str, keyword: str) -> None:
    checked = check_readonly_sql(sql)
    assert checked.keyword == keyword
    assert not checked.sql.rstrip().endswith(";")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE run_events", "'DROP' statements are not allowed"),
        ("INSERT INTO run_events SELECT * FROM run_events", "'INSERT' statements are not allowed"),
        ("SELECT 1; DROP TABLE run_events", "several statements"),
        ("SELECT 1 -- ok\n; ALTER TABLE x DELETE WHERE 1", "several statements"),
        ("   ", "empty statement"),
        ("-- only a comment", "empty statement"),
        ("SELECT 'unterminated", "unterminated ' quote"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ("SET readonly = 0", "'SET' statements are not allowed"),
        ("OPTIMIZE TABLE run_events FINAL", "'OPTIMIZE'"),
    ],
)
def test_everything_else_is_refused_with_a_reason(sql: str, reason: str) -> None:
    with pytest.raises(ReadOnlySqlError, match=reason):
        check_readonly_sql(sql)


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


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM t WHERE id = 'abc'", "SELECT * FROM t WHERE id = 'abc'  ;\n", "SELECT `c`"],
)
def test_a_statement_ending_in_a_literal_is_kept_whole(sql: str) -> None:
    assert check_readonly_sql(sql).sql == sql.rstrip().rstrip(";").rstrip()
