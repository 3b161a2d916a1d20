"""The pure half of the SQL sandbox: reading ClickHouse's dumps, the session's settings, the server grants.

The dumps below are what chDB 26.9's ``EXPLAIN AST`` / ``EXPLAIN QUERY TREE`` printed for the
statements named; tests/security runs the same code against the engine itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from pydantic import SecretStr

from provline.sink.errors import StoreConfigError
from provline.sink.sandbox import (
    ACCESS_DENIED,
    PROFILE,
    AstFacts,
    ast_refusals,
    audit_tables,
    check_sandbox,
    inspect_ast,
    named_refusals,
    open_sandboxes,
    readable_tables,
    server_grants,
    session_settings,
    shown,
    sql_users,
    tables_read,
)
from provline.sink.settings import ServeSettings, SqlSettings

TABLE_ONLY = frozenset({"numbers", "merge", "url", "remote", "view", "s3"})

# SELECT 'a\nFunction file' AS `b\n Function file (children 1)`, `file`('/x') FROM `access log`, d.run_events AS t
# WHERE x IN merge('d','a') SETTINGS max_threads=3
SPOOFED = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 4)
   ExpressionList (children 2)
    Literal 'a\\nFunction file' (alias b
 Function file (children 1))
    Function file (children 1)
     ExpressionList (children 1)
      Literal '/x'
   TablesInSelectQuery (children 2)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier access log
    TablesInSelectQueryElement (children 2)
     TableExpression (children 1)
      TableIdentifier d.run_events (alias t)
     TableJoin
   Function in (children 1)
    ExpressionList (children 2)
     Identifier x
     Function merge (children 1)
      ExpressionList (children 2)
       Literal 'd'
       Literal 'a'
   Set""".splitlines()

# SELECT * FROM numbers(3) AS n, (SELECT 1) u INTO OUTFILE '/tmp/q' FORMAT CSV
OUTFILE = """SelectWithUnionQuery (children 3)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 2)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function numbers (alias n) (children 1)
       ExpressionList (children 1)
        Literal UInt64_3
    TablesInSelectQueryElement (children 2)
     TableExpression (children 1)
      Subquery (alias u) (children 1)
       SelectWithUnionQuery (children 1)
        ExpressionList (children 1)
         SelectQuery (children 1)
          ExpressionList (children 1)
           Literal UInt64_1
     TableJoin
 Literal '/tmp/q'
 Identifier CSV""".splitlines()

# EXPLAIN SELECT * FROM system.processes
EXPLAINED = """Explain EXPLAIN (children 1)
 SelectWithUnionQuery (children 1)
  ExpressionList (children 1)
   SelectQuery (children 2)
    ExpressionList (children 1)
     Asterisk
    TablesInSelectQuery (children 1)
     TablesInSelectQueryElement (children 1)
      TableExpression (children 1)
       TableIdentifier system.processes""".splitlines()


def facts(**changes: object) -> AstFacts:
    base = AstFacts(kind="SelectWithUnionQuery", explained="", into_outfile=False, settings=False,
                    functions=frozenset(), table_functions=frozenset(), tables=frozenset(), identifiers=frozenset())
    return AstFacts(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_the_ast_dump_gives_kind_functions_tables_and_clauses() -> None:
    spoofed = inspect_ast(SPOOFED)
    assert spoofed.kind == "SelectWithUnionQuery" and spoofed.settings and not spoofed.into_outfile
    assert spoofed.functions == {"file", "file (children 1))", "in", "merge"}  # the alias's line: one name more
    assert spoofed.tables == {"access log", "d.run_events"} and "x" in spoofed.identifiers
    assert spoofed.table_functions == frozenset()  # merge() after IN is no table expression: caught by name
    outfile = inspect_ast(OUTFILE)
    assert outfile.into_outfile and outfile.table_functions == {"numbers"} and not outfile.settings
    explained = inspect_ast(EXPLAINED)
    assert (explained.kind, explained.explained, explained.tables) == ("Explain", "SelectWithUnionQuery",
                                                                     {"system.processes"})


def test_an_alias_smuggled_into_the_dump_only_adds_refusals() -> None:
    # The alias's newline made a line of its own that reads like a call of file(): one more refusal, no fewer.
    refusals = ast_refusals(inspect_ast(SPOOFED), TABLE_ONLY)
    assert any("file()" in r for r in refusals) and any("merge()" in r for r in refusals)
    assert any("SETTINGS" in r for r in refusals)


def test_only_read_statements_of_the_known_kinds_pass() -> None:
    assert ast_refusals(facts(), TABLE_ONLY) == []
    for kind in ("ShowTables", "ShowColumns", "ShowCreateTableQuery", "DescribeQuery"):
        assert ast_refusals(facts(kind=kind), TABLE_ONLY) == []
    assert ast_refusals(facts(kind="Explain", explained="SelectWithUnionQuery"), TABLE_ONLY) == []
    for kind in ("InsertQuery", "AlterQuery", "DeleteQuery", "CreateQuery", "SetQuery", "SYSTEM", "KillQueryQuery",
                 "ShowProcesslistQuery", "BackupQuery"):
        (refusal,) = ast_refusals(facts(kind=kind), TABLE_ONLY)
        assert refusal.startswith(f"{kind} is not a read statement")
    (explain,) = ast_refusals(facts(kind="Explain", explained="InsertQuery"), TABLE_ONLY)
    assert "EXPLAIN is accepted for SELECT statements only" in explain


def test_outfile_settings_io_functions_and_table_functions_are_refused_each_with_its_reason() -> None:
    refusals = ast_refusals(facts(into_outfile=True, settings=True, functions=frozenset({"dictget", "joinget", "sum",
                                                                                          "file", "numbers"}),
                                  table_functions=frozenset({"file"})), TABLE_ONLY)
    assert len(refusals) == 4
    assert "INTO OUTFILE writes files" in refusals[0] and "SETTINGS clauses are not allowed" in refusals[1]
    assert refusals[2].startswith("dictget, joinget() read files, dictionaries or Join tables")
    assert refusals[3].startswith("table function file, numbers() is not allowed")
    assert ast_refusals(facts(functions=frozenset({"format", "count"})), TABLE_ONLY) == []


def test_names_outside_the_store_or_hidden_are_refused_before_analysis() -> None:
    readable = frozenset({"db.run_events"})
    databases = frozenset({"db", "system", "other"})
    assert named_refusals(facts(tables=frozenset({"run_events", "db.run_events", "w"}), identifiers=frozenset({"t.x"})),
                          database="db", readable=readable, databases=databases) == []
    (elsewhere, hidden) = named_refusals(
        facts(tables=frozenset({"db.access_log"}), identifiers=frozenset({"system.processes", "other.t"})),
        database="db", readable=readable, databases=databases)
    assert elsewhere.startswith("outside the audit store: other.t, system.processes")
    assert hidden.startswith("access_log may not be read")


def test_the_query_tree_names_every_table_and_table_function() -> None:
    tree = """QUERY id: 0
  JOIN TREE
    TABLE id: 3, alias: __table1, table_name: d.run_events
  WHERE
    FUNCTION id: 4, function_name: in, function_type: ordinary, result_type: UInt8
      ARGUMENTS
        LIST id: 5, nodes: 2
          QUERY id: 6, is_subquery: 1
            JOIN TREE
              TABLE id: 9, alias: __table1, table_name: d.access_log
    TABLE_FUNCTION id: 11, alias: __table2, table_function_name: merge
    TABLE id: 12, alias: __table3, table_name: d.model_versions, final: 1
TABLE id: 9, alias: q, table_name: d.zzz UInt8""".splitlines()  # the last line smuggled in by a column alias
    tables, functions = tables_read(tree)
    assert tables == {"d.run_events", "d.access_log", "d.model_versions", "d.zzz UInt8"} and functions == {"merge"}


def test_the_session_settings_freeze_limits_and_filters_with_readonly_last() -> None:
    limits = SqlSettings(max_execution_s=2.5, max_result_rows=5000)
    pairs = dict(session_settings(limits, hidden=["db.access_log", "db.schema_migrations"]))
    assert session_settings(limits)[-1] == ("readonly", "1")
    assert pairs["max_execution_time"] == "2.5" and pairs["max_memory_usage"] == str(1024 ** 3)
    assert (pairs["max_result_rows"], pairs["limit"], pairs["max_threads"]) == ("5000", "5001", "1")
    assert pairs["additional_table_filters"] == "{'db.access_log': '0', 'db.schema_migrations': '0'}"
    assert pairs["allow_python_table_function"] == "0"
    server = dict(session_settings(limits, embedded=False))
    assert "additional_table_filters" not in server and "allow_python_table_function" not in server


def test_server_grants_give_each_role_a_read_only_user_and_its_tables_only() -> None:
    tables = audit_tables()
    assert "access_log" in tables and "prediction_traces" in tables and "lineage_edges" in tables
    users = {"auditor": "provline_sql_auditor", "admin": "provline_sql_admin"}
    statements = server_grants(SqlSettings(), database="audit", tables=tables, users=users)
    assert statements[0] == (
        f"CREATE SETTINGS PROFILE OR REPLACE {PROFILE} SETTINGS max_execution_time = 10 CONST, "
        "timeout_overflow_mode = 'throw' CONST, max_memory_usage = 1073741824 CONST, "
        "max_rows_to_read = 1000000000 CONST, read_overflow_mode = 'throw' CONST, max_result_rows = 100000 CONST, "
        "max_result_bytes = 67108864 CONST, result_overflow_mode = 'throw' CONST, limit = 100001 CONST, "
        "max_threads = 1 CONST, allow_introspection_functions = 0 CONST, readonly = 1 CONST"
    )
    assert statements[1:4] == [
        "CREATE USER IF NOT EXISTS provline_sql_auditor IDENTIFIED WITH sha256_password "
        "BY '<password of provline_sql_auditor>'",
        f"ALTER USER provline_sql_auditor SETTINGS PROFILE '{PROFILE}'",
        "REVOKE ALL ON *.* FROM provline_sql_auditor",
    ]
    auditor = [s for s in statements if s.startswith("GRANT") and s.endswith("TO provline_sql_auditor")]
    admin = [s for s in statements if s.startswith("GRANT") and s.endswith("TO provline_sql_admin")]
    assert auditor == [f"GRANT SELECT ON audit.{t} TO provline_sql_auditor" for t in tables if t != "access_log"]
    assert admin == [f"GRANT SELECT ON audit.{t} TO provline_sql_admin" for t in tables]
    assert readable_tables("auditor", tables) == set(tables) - {"access_log"}


def test_server_users_come_from_the_role_urls() -> None:
    assert sql_users(SqlSettings()) == {"auditor": "provline_sql_auditor", "admin": "provline_sql_admin"}
    named = SqlSettings(auditor_url=SecretStr("https://ro_audit:pw@ch:8443/audit"))
    assert sql_users(named)["auditor"] == "ro_audit"


def test_tables_are_recorded_by_bare_name_in_the_store() -> None:
    assert shown(["db.run_events", "system.one", "other.x", "db.access_log"], "db") == (
        "access_log", "other.x", "run_events")


def test_the_readme_shows_the_grants_as_rendered() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    users = {"auditor": "provline_sql_auditor", "admin": "provline_sql_admin"}
    rendered = [f"{s};" for s in server_grants(SqlSettings(), database="provline", tables=audit_tables(), users=users)]
    assert block.splitlines() == rendered[:len(block.splitlines())], "the README's grants are stale"


def test_a_server_store_needs_a_read_only_user_per_role_before_anything_connects() -> None:
    settings = ServeSettings(store={"url": "http://provline:pw@127.0.0.1:1/audit"})
    with pytest.raises(StoreConfigError, match="set PROVLINE_SQL__AUDITOR_URL"):
        open_sandboxes(settings, audit_tables())


class Answers:
    """A stand-in for a server session: the answer (or error) per query."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def query(self, sql: str) -> Any:
        answer = self.answers[sql]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(result_rows=[(answer,)])


READABLE_LOG = "SELECT count() FROM (SELECT * FROM audit.access_log)"


@pytest.mark.parametrize(
    ("readonly", "access_log", "problem"),
    [
        ("1", DatabaseError("Not enough privileges", code=ACCESS_DENIED), None),
        ("0", DatabaseError("Not enough privileges", code=ACCESS_DENIED), "has readonly=0, not 1"),
        ("2", DatabaseError("Not enough privileges", code=ACCESS_DENIED), "has readonly=2, not 1"),
        ("1", 0, "can read audit.access_log, which auditors may not; REVOKE SELECT ON audit.access_log FROM ro"),
    ],
)
def test_a_server_user_must_be_read_only_and_blind_to_what_its_role_may_not_read(
    readonly: str, access_log: Any, problem: str | None,
) -> None:
    session = Answers({"SELECT currentUser()": "ro", "SELECT getSetting('readonly')": readonly,
                       READABLE_LOG: access_log})
    if problem is None:
        check_sandbox(session, "auditor", "audit", embedded=False)  # type: ignore[arg-type]
    else:
        with pytest.raises(StoreConfigError, match=re.escape(problem)):
            check_sandbox(session, "auditor", "audit", embedded=False)  # type: ignore[arg-type]
