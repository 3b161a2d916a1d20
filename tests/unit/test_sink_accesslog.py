from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from provline.sink.accesslog import ACCESS_LOG_COLUMNS, REDACTED, access_row, redact_query, sql_statement


@pytest.mark.parametrize(
    ("query", "stored"),
    [
        ("raw=true", "raw=true"),
        ("", ""),
        ("token=abc&raw=1", f"token={REDACTED}&raw=1"),
        ("api_key=k&X-Api-Key=k&secret=s&Password=p&pwd=p&access_token=t&sig=1&signature=x",
         f"api_key={REDACTED}&X-Api-Key={REDACTED}&secret={REDACTED}&Password={REDACTED}&pwd={REDACTED}"
         f"&access_token={REDACTED}&sig=1&signature={REDACTED}"),
        ("to%6Ben=abc", f"to%6Ben={REDACTED}"),  # the name is read decoded
        ("session=prod-1&node=dataset:sha256:x&kinds=prediction",) * 2,
        ("token", "token"),  # no value to hide
    ],
)
def test_secret_looking_parameters_lose_their_values_and_nothing_else_changes(query: str, stored: str) -> None:
    assert redact_query(query) == stored


def test_the_statement_of_a_sql_body_is_its_sql_field_or_the_body() -> None:
    assert sql_statement(b'{"sql": "SELECT 1"}') == "SELECT 1"
    assert sql_statement(b'{"sql": 3}') == '{"sql": 3}'
    assert sql_statement(b"SELECT \xff") == "SELECT \ufffd"


def test_rows_carry_the_statement_digest_and_tables_in_column_order() -> None:
    row = access_row(time=datetime(2025, 1, 1, tzinfo=UTC), request_id="r", reader="ann", role="auditor",
                     method="POST", path="/v1/sql", query="token=x", status=403, size=10, client="1.2.3.4",
                     statement="SELECT 1", tables=["run_events"])
    named = dict(zip(ACCESS_LOG_COLUMNS, row, strict=True))
    assert named["query"] == f"token={REDACTED}" and named["allowed"] is False
    assert named["statement_sha256"] == hashlib.sha256(b"SELECT 1").hexdigest() and named["tables"] == ["run_events"]
    plain = dict(zip(ACCESS_LOG_COLUMNS, access_row(
        time=datetime(2025, 1, 1, tzinfo=UTC), request_id="r", reader="", role="", method="GET", path="/v1/runs",
        query="", status=200, size=1, client=""), strict=True))
    assert (plain["statement"], plain["statement_sha256"], plain["tables"], plain["allowed"]) == ("", "", [], True)
