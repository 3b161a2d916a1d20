"""Issue 13, acceptance: generated SQL thrown at ``/v1/sql`` by every role escapes nowhere.

Statements are built from fragments that broke or probe SQL guards: ``$$`` and other quotes,
comments, semicolons, writes and DDL, ``SET``/``SYSTEM``/``KILL``, ``INTO OUTFILE``, and table
functions aimed at a temporary directory and at a TCP listener this test runs. Whatever the
statement, no table changes (only the access log grows, by one row per request), no file
appears, the listener is never contacted, no reply carries the secret file or, for viewers and
auditors, the access log, and no answer is larger than the limits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.sql_store import AuditApi, Listener, audit_api, bearer, listener, table_names, table_rows

SECRET = f"secret-{uuid.uuid4().hex}"
MAX_RESULT_ROWS = 1000
LIMITS = {"max_execution_s": 2, "max_memory_bytes": 256 * 1024 * 1024, "max_result_rows": MAX_RESULT_ROWS}


def reads(folder: Path, port: int) -> list[str]:
    secret, here = f"{folder}/secret.txt", f"127.0.0.1:{port}"
    return [
        "SELECT 1", "SELECT count() FROM prediction_traces", "SELECT * FROM run_events", "(SELECT 2)",
        "SELECT * FROM access_log", "SELECT reader FROM access_log",
        "WITH x AS (SELECT * FROM access_log) SELECT * FROM x",
        "SELECT * FROM prediction_traces WHERE prediction_id IN (SELECT reader FROM access_log)",
        "SHOW TABLES", "DESCRIBE TABLE access_log", "EXPLAIN SELECT * FROM access_log", "SHOW PROCESSLIST",
        "SELECT * FROM system.processes", "SELECT * FROM system.tables",
        f"SELECT file('{secret}')", f"SELECT * FROM file('{secret}', 'LineAsString')",
        f"SELECT * FROM url('http://{here}/x', 'LineAsString')", f"SELECT * FROM s3('http://{here}/b/k.csv', 'CSV')",
        f"SELECT * FROM remote('{here}', system.one)", f"SELECT * FROM mysql('{here}', 'db', 't', 'u', 'p')",
        f"SELECT * FROM executable('cat {secret}', 'LineAsString', 'x String')",
        "SELECT * FROM merge(currentDatabase(), '^access')", "SELECT * FROM view(SELECT * FROM access_log)",
        "SELECT count() FROM numbers_mt(1000000000000)", "SELECT * FROM numbers(10)", "SELECT * FROM loop(numbers(3))",
        "SELECT joinGet('access_log', 'reader', 1)", "SELECT dictGet('d', 'x', 1)",
        f"SELECT 1 INTO OUTFILE '{folder}/out.txt'",
        f"SELECT * FROM prediction_traces INTO OUTFILE '{folder}/o.csv' FORMAT CSV",
        "SELECT sleep(3)", "SELECT arrayJoin(range(1000000))",
        "SELECT length(arrayFlatten(arrayMap(x -> range(100000), range(100000))))",
    ]


def writes(folder: Path) -> list[str]:
    return [
        "DELETE FROM access_log WHERE 1", "INSERT INTO access_log (reader) VALUES ('forged')",
        "WITH x AS (SELECT 1) INSERT INTO access_log (reader) VALUES ('forged')",
        "ALTER TABLE run_events DELETE WHERE 1", "ALTER TABLE access_log UPDATE reader = 'x' WHERE 1",
        "CREATE TABLE stolen ENGINE = Memory AS SELECT 1", "DROP TABLE run_events", "TRUNCATE TABLE access_log",
        "RENAME TABLE run_events TO gone", "DETACH TABLE run_events", "OPTIMIZE TABLE run_events FINAL",
        f"INSERT INTO FUNCTION file('{folder}/w.csv', 'CSV') SELECT 1",
        f"BACKUP TABLE run_events TO File('{folder}/b')",
        "SET readonly = 0", "SET additional_table_filters = {}", "SYSTEM DROP MARK CACHE", "SYSTEM STOP MERGES",
        "KILL QUERY WHERE 1",
    ]


JOINERS = ["; ", ";\n", " -- ", "\n", " /* ", " */ ", "'", '"', "`", "$$", "$x$", "\\", " ", " UNION ALL ",
           " SETTINGS readonly = 0", " SETTINGS max_execution_time = 0", " FORMAT CSV", "$$'$$"]
SUFFIXES = ["", ";", " -- ;", " /* ; DROP TABLE run_events */", " SETTINGS readonly = 0", " SETTINGS limit = 0",
            " SETTINGS additional_table_filters = {}", " FORMAT CSV", " LIMIT 5"]
# Ways to put a read where the engine reads more than the outer statement shows.
WRAPPERS = ["{}", "SELECT * FROM ({})", "SELECT count() FROM ({})", "WITH w AS ({}) SELECT * FROM w", "SELECT ({})",
            "EXPLAIN {}", "EXPLAIN SYNTAX {}", "DESCRIBE ({})", "SELECT 1 WHERE 1 IN ({})",
            "SELECT * FROM prediction_traces WHERE prediction_id IN ({})", "{} UNION ALL SELECT * FROM access_log"]


def statements(folder: Path, port: int) -> st.SearchStrategy[str]:
    read = st.sampled_from(reads(folder, port))
    fragment = st.sampled_from(reads(folder, port) + writes(folder))
    wrapped = st.builds(lambda wrapper, inner, suffix: wrapper.format(inner) + suffix,
                        st.sampled_from(WRAPPERS), read, st.sampled_from(SUFFIXES))
    glued = st.lists(st.one_of(fragment, st.sampled_from(JOINERS)), min_size=1, max_size=7).map("".join)
    smuggled = st.builds(lambda hidden, tail: f"SELECT $$'$$; {hidden}; {tail} --'", fragment, fragment)
    return st.one_of(wrapped, fragment, glued, smuggled)


@pytest.fixture
def api(chdb_path: str) -> Iterator[AuditApi]:
    with audit_api(chdb_path, sql=LIMITS) as api:
        yield api


@pytest.fixture
def tcp() -> Iterator[Listener]:
    with listener() as watching:
        yield watching


def test_generated_statements_escape_nowhere(api: AuditApi, tmp_path: Path, tcp: Listener) -> None:
    (tmp_path / "secret.txt").write_text(SECRET + "\n", encoding="utf-8")
    marker = f"marker-{uuid.uuid4().hex}"
    assert api.http.get(f"/v1/traces/p1?{marker}=1", headers=bearer("vic")).status_code == 200
    tables_before, rows_before = table_names(api.store), table_rows(api.store)
    rows_before.pop("access_log")
    logged_before = set(api.store.query("SELECT request_id, cityHash64(*) FROM access_log").result_rows)
    requests = [0]

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(reader=st.sampled_from(["vic", "ann", "ann", "root"]), statement=statements(tmp_path, tcp.port))
    def probe(reader: str, statement: str) -> None:
        reply = api.sql(reader, statement)
        requests[0] += 1
        assert reply.status_code in (200, 400, 403), (statement, reply.status_code, reply.text)
        assert SECRET not in reply.text, statement
        if reader != "root":
            assert marker not in reply.text, (reader, statement)
        if reply.status_code == 200:
            assert len(reply.json()["rows"]) <= MAX_RESULT_ROWS, statement
        assert sorted(path.name for path in tmp_path.iterdir()) == ["secret.txt"], statement
        assert tcp.connections == [], statement

    probe()
    assert api.http.get("/v1/traces/p1", headers=bearer("vic")).status_code == 200
    requests[0] += 1
    assert table_names(api.store) == tables_before
    rows_after = table_rows(api.store)
    rows_after.pop("access_log")
    assert rows_after == rows_before
    logged_after = set(api.store.query("SELECT request_id, cityHash64(*) FROM access_log").result_rows)
    assert logged_before <= logged_after, "access log rows were changed or deleted"
    assert len(logged_after) == len(logged_before) + requests[0], "access log rows were forged or went missing"
