"""Issue 13, finding 2: one statement must not lock the API.

clickhouse-connect's chDB backend runs a statement it takes for an INSERT (``WITH ... INSERT``
included) between ``SET readonly=1`` and a restore that readonly itself forbids; when that happened
on the API's own session, every later request failed its access-log write and got 503 until restart.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.sql_store import AuditApi, audit_api, bearer


@pytest.fixture
def api(chdb_path: str) -> Iterator[AuditApi]:
    with audit_api(chdb_path) as api:
        yield api


@pytest.mark.parametrize("reader", ["ann", "root"])
@pytest.mark.parametrize(
    "statement",
    [
        "WITH x AS (SELECT 1) INSERT INTO access_log (reader, path, status) VALUES ('mallory', '/forged', 200)",
        "WITH x AS (SELECT 1) INSERT INTO run_events SELECT * FROM run_events",
        "INSERT INTO access_log (reader, path, status) VALUES ('mallory', '/forged', 200)",
    ],
)
def test_a_refused_insert_leaves_every_session_working(api: AuditApi, reader: str, statement: str) -> None:
    runs = api.store.query("SELECT count() FROM run_events").result_rows
    reply = api.sql(reader, statement)
    assert reply.status_code == 400 and reply.json()["detail"].startswith("refused"), reply.text

    assert api.http.get("/v1/traces/p1", headers=bearer("vic")).status_code == 200  # the API session still writes
    again = api.sql(reader, "SELECT count() AS n FROM prediction_traces")  # and SQL still runs
    assert again.status_code == 200 and again.json()["rows"] == [[3]], again.text
    assert api.store.query("SELECT count() FROM access_log WHERE reader = 'mallory'").result_rows == [(0,)]
    assert api.store.query("SELECT count() FROM run_events").result_rows == runs
