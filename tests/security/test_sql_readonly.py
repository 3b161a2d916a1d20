"""Issue 13, finding 1: the read-only SQL endpoint must be read-only because the engine refuses, not a lexer.

Each statement below once got past the hand-written guard (``$$...$$`` strings hid a ``;`` from it,
and only the last statement ran with ``readonly=1``) or was never looked at by it (the scalar
``file()`` function, reading ``access_log`` as an auditor). The witnesses: every table's rows, a
directory nothing may be written to or read from, and a TCP listener nothing may connect to.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.sql_store import AuditApi, Listener, audit_api, bearer, listener, table_names, table_rows

SECRET = f"secret-{uuid.uuid4().hex}"


@pytest.fixture
def api(chdb_path: str) -> Iterator[AuditApi]:
    with audit_api(chdb_path) as api:
        yield api


@pytest.fixture
def tcp() -> Iterator[Listener]:
    with listener() as watching:
        yield watching


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text(SECRET + "\n", encoding="utf-8")
    return tmp_path


def smuggled(statement: str) -> str:
    """``statement`` hidden from a lexer that does not know ``$$`` strings, between two harmless SELECTs."""
    return f"SELECT $$'$$; {statement}; SELECT 1 --'"


def attacks(folder: Path, port: int) -> dict[str, str]:
    return {
        "delete access log rows": smuggled("DELETE FROM access_log WHERE reader = $$ann$$"),
        "forge an access log row": smuggled(
            "INSERT INTO access_log (reader, role, path, status, allowed) "
            "VALUES ($$mallory$$, $$admin$$, $$/v1/forged$$, 200, true)"
        ),
        "copy a file into a table": smuggled(
            f"CREATE TABLE stolen ENGINE = MergeTree ORDER BY tuple() AS SELECT * FROM file('{folder}/secret.txt', "
            "'LineAsString')"
        ),
        "fetch a URL from the server": smuggled(f"SELECT * FROM url('http://127.0.0.1:{port}/x', 'LineAsString')"),
        "write a file": smuggled(f"SELECT 1 INTO OUTFILE '{folder}/out.txt'"),
        "read a file with the scalar file()": f"SELECT file('{folder}/secret.txt') AS leaked",
    }


def test_smuggled_statements_change_nothing_read_nothing_and_reach_nothing(
    api: AuditApi, secret_dir: Path, tcp: Listener,
) -> None:
    assert api.http.get("/v1/traces/p1", headers=bearer("ann")).status_code == 200  # an access_log row of ann's
    tables_before, rows_before = table_names(api.store), table_rows(api.store)
    access_before = rows_before.pop("access_log")
    replies = {name: api.sql("ann", statement) for name, statement in attacks(secret_dir, tcp.port).items()}

    problems = []
    if sorted(path.name for path in secret_dir.iterdir()) != ["secret.txt"]:
        problems.append(f"files were written: {sorted(path.name for path in secret_dir.iterdir())}")
    if tcp.connections:
        problems.append(f"the server opened {len(tcp.connections)} connection(s) to the listener")
    if table_names(api.store) != tables_before:
        problems.append(f"tables created or dropped: {table_names(api.store) ^ tables_before}")
    rows_after = table_rows(api.store)
    access_after = rows_after.pop("access_log")
    if rows_after != rows_before:
        problems.append("stored events changed")
    if api.store.query("SELECT count() FROM access_log WHERE reader = 'mallory'").result_rows[0][0]:
        problems.append("an access log row was forged")
    if access_after[0] != access_before[0] + len(replies):
        problems.append(f"access log has {access_after[0]} rows, not {access_before[0]} + {len(replies)} requests")
    for name, reply in replies.items():
        if SECRET in reply.text:
            problems.append(f"{name}: the reply carries the file's content")
        if reply.status_code != 400 or not reply.json()["detail"].startswith("refused"):
            problems.append(f"{name}: not refused: {reply.status_code} {reply.text[:200]}")
    assert not problems, "\n".join(problems)

@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM access_log",
        "SELECT count() FROM default.access_log",
        "SELECT reader FROM prediction_traces, access_log LIMIT 5",
        "SELECT * FROM prediction_traces WHERE prediction_id IN (SELECT reader FROM access_log)",
        "WITH seen AS (SELECT * FROM access_log) SELECT * FROM seen",
        "SELECT * FROM merge(currentDatabase(), '^access')",
        "SELECT * FROM view(SELECT * FROM access_log)",
    ],
)
def test_auditors_cannot_read_the_access_log(api: AuditApi, statement: str) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    assert api.http.get(f"/v1/traces/p1?{marker}=1", headers=bearer("vic")).status_code == 200
    reply = api.sql("ann", statement.replace("default.", f"{api.database}."))
    assert marker not in reply.text
    assert reply.status_code == 400 and reply.json()["detail"].startswith("refused"), reply.text
    admin = api.sql("root", "SELECT query FROM access_log WHERE reader = 'vic'")
    assert admin.status_code == 200 and marker in admin.text  # admins may read it


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT count() AS n FROM prediction_traces",
        "SELECT count() AS n FROM model_versions FINAL",  # as `provline promote` asks
        "SELECT count() AS n FROM event_ledger",
        "WITH p AS (SELECT prediction_id FROM prediction_index) SELECT count() FROM prediction_traces "
        "WHERE prediction_id IN (SELECT prediction_id FROM p)",
        "SELECT 1",
        "SHOW TABLES",
        "DESCRIBE TABLE run_events",
        "EXPLAIN SELECT count() FROM run_events",
        "SELECT name FROM run_events ORDER BY name;",
    ],
)
def test_read_statements_still_answer(api: AuditApi, statement: str) -> None:
    reply = api.sql("ann", statement)
    assert reply.status_code == 200, reply.text
    assert set(reply.json()) == {"columns", "rows"}
