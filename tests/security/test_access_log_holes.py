"""Issue 13, finding 9: every request leaves an access-log row, and the row says what was read.

A request that failed with an unhandled error left no row (the row was written after the handler
returned); SQL rows recorded neither the statement nor the tables it read; a ``?token=`` in the
query string was stored as sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from provline.sink import queries
from tests.security.sql_store import AuditApi, audit_api, bearer


@pytest.fixture
def api(chdb_path: str) -> Iterator[AuditApi]:
    with audit_api(chdb_path) as api:
        yield api


def last_row(api: AuditApi, path: str) -> dict[str, Any]:
    result = api.store.query(
        "SELECT * FROM access_log WHERE path = {path:String} ORDER BY time DESC LIMIT 1", parameters={"path": path},
    )
    assert result.result_rows, f"no access log row for {path}"
    return dict(zip(result.column_names, result.result_rows[0], strict=True))


def test_a_request_that_fails_unhandled_is_logged_as_500(api: AuditApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(queries, "trace", broken)
    reply = api.http.get("/v1/traces/p1", headers=bearer("vic"))
    assert reply.status_code == 500
    row = last_row(api, "/v1/traces/p1")
    assert (row["reader"], row["status"], row["allowed"]) == ("vic", 500, True)
    assert api.http.get("/v1/runs", headers=bearer("vic")).status_code == 200  # and the API goes on


@pytest.mark.parametrize(
    ("reader", "statement", "status", "tables"),
    [
        ("ann", "SELECT count() FROM prediction_traces WHERE prediction_id IN (SELECT prediction_id FROM "
                "prediction_index)", 200, ["prediction_index", "prediction_traces"]),
        ("root", "WITH w AS (SELECT reader FROM access_log) SELECT count() FROM w", 200, ["access_log"]),
        ("ann", "SELECT count() FROM access_log", 400, []),  # refused: no table was read
        ("ann", "SELECT $$'$$; DELETE FROM access_log; SELECT 1 --'", 400, []),
        ("vic", "SELECT 1", 403, []),
    ],
)
def test_sql_rows_carry_the_statement_its_digest_and_the_tables_read(
    api: AuditApi, reader: str, statement: str, status: int, tables: list[str],
) -> None:
    assert api.sql(reader, statement).status_code == status
    row = last_row(api, "/v1/sql")
    assert row["status"] == status and row["reader"] == reader
    assert row["statement"] == statement
    assert row["statement_sha256"] == hashlib.sha256(statement.encode("utf-8")).hexdigest()
    assert sorted(row["tables"]) == tables


def test_secrets_in_the_query_string_are_not_stored(api: AuditApi) -> None:
    reply = api.http.get("/v1/traces/p1?raw=false&token=hunter2hunter2&api_key=k3y&Password=pw&x-secret=s",
                         headers=bearer("vic"))
    assert reply.status_code == 200
    stored = last_row(api, "/v1/traces/p1")["query"]
    for secret in ("hunter2hunter2", "k3y", "=pw", "=s"):
        assert secret not in stored, stored
    assert stored.startswith("raw=false&token=") and "api_key=" in stored and "Password=" in stored
