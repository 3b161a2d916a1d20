"""Issue 13, finding 3: one heavy statement must not stall health checks, point lookups or other roles,
and every statement runs under limits: time, memory, rows read, result rows and bytes.

A statement counts as still running while the engine lists it in ``system.processes`` (seen from
the test's own session), so "answered while it ran" needs no clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from tests.security.sql_store import AuditApi, audit_api, bearer

DEADLINE_S = 30.0
SLOW = "SELECT sleep(3) AS slept"  # the engine's own sleep: 3 s, the most one block may sleep


def running(store: Client, marker: str) -> bool:
    rows = store.query(
        "SELECT count() FROM system.processes "
        "WHERE query LIKE {pattern:String} AND query NOT LIKE '%system.processes%'",
        parameters={"pattern": f"%{marker}%"},
    ).result_rows
    return bool(rows[0][0])


def wait_until_running(store: Client, marker: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not running(store, marker):
        assert thread.is_alive(), "the slow statement finished before it was seen running"
        assert time.monotonic() < deadline, "the slow statement never started"
        time.sleep(0.02)


@pytest.fixture
def api(chdb_path: str) -> Iterator[AuditApi]:
    with audit_api(chdb_path) as api:
        yield api


def test_health_lookups_and_other_roles_answer_while_a_statement_runs(api: AuditApi) -> None:
    replies: dict[str, Any] = {}
    slow = threading.Thread(target=lambda: replies.setdefault("slow", api.sql("ann", SLOW)))
    slow.start()
    try:
        wait_until_running(api.store, "sleep(3)", slow)
        health = api.http.get("/healthz")
        trace = api.http.get("/v1/traces/p1", headers=bearer("vic"))
        admin = api.sql("root", "SELECT count() AS n FROM run_events")
        still_running = running(api.store, "sleep(3)")
        ready = api.http.get("/readyz")
        busy = api.sql("ann", "SELECT 1")
    finally:
        slow.join(DEADLINE_S)
    assert health.status_code == 200 and trace.status_code == 200, (health.text, trace.text)
    assert admin.status_code == 200 and admin.json()["rows"] == [[3]], admin.text
    assert still_running, "health, a trace lookup and an admin's SQL waited for the auditor's statement"
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text
    assert busy.status_code == 429 and "one statement at a time" in busy.json()["detail"], busy.text
    assert int(busy.headers["retry-after"]) >= 1
    assert replies["slow"].status_code == 200 and replies["slow"].json()["rows"] == [[0]]


LIMITS = {
    "max_execution_s": 1, "max_memory_bytes": 64 * 1024 * 1024, "max_rows_read": 2, "max_result_rows": 1000,
    "max_result_bytes": 100_000,
}


@pytest.mark.parametrize(
    ("statement", "setting"),
    [
        (SLOW, "PROVLINE_SQL__MAX_EXECUTION_S"),
        ("SELECT length(range(materialize(20000000))) AS n", "PROVLINE_SQL__MAX_MEMORY_BYTES"),
        ("SELECT sum(length(raw)) FROM run_events", "PROVLINE_SQL__MAX_ROWS_READ"),
        ("SELECT arrayJoin(range(2000)) AS n", "PROVLINE_SQL__MAX_RESULT_ROWS"),
        ("SELECT arrayJoin(range(2000)) AS n SETTINGS limit = 0", "PROVLINE_SQL__"),  # readonly lets limit change
        ("SELECT repeat('x', 200000) AS s", "PROVLINE_SQL__MAX_RESULT_BYTES"),
    ],
)
@pytest.mark.parametrize("reader", ["ann", "root"])
def test_statements_over_a_limit_are_refused_naming_the_setting(
    chdb_path: str, reader: str, statement: str, setting: str,
) -> None:
    with audit_api(chdb_path, sql=LIMITS) as api:
        reply = api.sql(reader, statement)
        assert reply.status_code == 400 and setting in reply.json()["detail"], reply.text
        fine = api.sql(reader, "SELECT 1 AS one")
        assert fine.status_code == 200 and fine.json()["rows"] == [[1]], fine.text
