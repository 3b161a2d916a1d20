"""User SQL of the audit API, run where the engine itself refuses anything but reading the role's tables.

The engine is the first line. Each role that may run SQL (auditor, admin) has a store session of
its own, set up once: the limits of :class:`SqlSettings` (time, memory, rows read, result rows and
bytes, threads), for chDB a filter that makes every table the role may not read look empty
(``additional_table_filters``) and chDB's ``python()`` table function off, and then ``readonly=1``,
which freezes all of it. The session is never reset and serves nothing else, so no statement can
lift a limit, write, run DDL, or reach files, the network or processes through table functions.
On a ClickHouse server the same holds through a dedicated user per role with a read-only settings
profile and SELECT grants on the role's tables only (:func:`server_grants`); at start the sandbox
checks that the user is read-only and cannot read what its role may not.

ClickHouse's own parser is the second line, run on that same session before a statement runs:
``formatQuery`` (exactly one statement; its normalised text is what is inspected and run),
``EXPLAIN AST`` (the statement's kind: SELECT/WITH, SHOW, DESCRIBE or EXPLAIN SELECT; no INTO
OUTFILE, which the embedded engine would execute; no SETTINGS clause, since ``readonly`` leaves
a few settings such as ``limit`` changeable; no table function; no function that reads files,
dictionaries or Join tables, which ``readonly`` does not stop either) and, for SELECT, ``EXPLAIN
QUERY TREE`` (every table read, through subqueries, CTEs and IN, is one the role may read). The
reading of those dumps is pure (:func:`inspect_ast`, :func:`tables_read`) and errs one way only:
text a statement smuggles into a dump (an alias with a newline) can add a refusal, never hide a
node, because every node's own line starts with its kind and name.

A role's session runs one statement at a time; a second is refused at once (:class:`SqlBusyError`,
429 from the API) rather than queued, and no statement ever runs on the API's own session, which
serves health, lookups and the access log.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from provline.sink.dead_letters import TABLE as DEAD_LETTERS_TABLE
from provline.sink.errors import (
    ReadOnlySqlError,
    SqlBusyError,
    SqlError,
    SqlLimitError,
    SqlQueryError,
    StoreConfigError,
)
from provline.sink.ingest import DERIVED, LEDGER_TABLE
from provline.sink.rows import TABLES, to_jsonable
from provline.sink.settings import ServeSettings, SqlSettings
from provline.sink.store import CHDB_SCHEME, open_store

log = logging.getLogger(__name__)

MAX_SQL_CHARS = 100_000
SQL_ROLES = ("auditor", "admin")
# What each role may not read: the access log is the admins' alone.
HIDDEN_TABLES: Mapping[str, frozenset[str]] = {"auditor": frozenset({"access_log"}), "admin": frozenset()}
DUMMY_TABLE = "system.one"  # what a SELECT without FROM reads
SELECT = "SelectWithUnionQuery"
EXPLAIN = "Explain"
# Root nodes of EXPLAIN AST that may run, and what a reader calls them.
STATEMENT_KINDS: Mapping[str, str] = {
    SELECT: "SELECT", "ShowTables": "SHOW", "ShowColumns": "SHOW", "ShowCreateTableQuery": "SHOW",
    "DescribeQuery": "DESCRIBE", EXPLAIN: "EXPLAIN",
}
ACCEPTED = "one SELECT (or WITH ... SELECT), SHOW TABLES, SHOW COLUMNS, SHOW CREATE, DESCRIBE or EXPLAIN SELECT"
# Functions that read what no audit table holds (files, dictionaries, Join tables, the server's certificate);
# readonly=1 does not stop them. Compared in lower case.
DENIED_FUNCTIONS = frozenset({"file", "showcertificate"})
DENIED_FUNCTION_PREFIXES = ("dict", "joinget")
PROFILE = "provline_sql"

# ClickHouse error codes the sandbox answers for.
SYNTAX_ERROR, READONLY, ACCESS_DENIED = 62, 164, 497
TIMEOUT_EXCEEDED, TOO_MANY_ROWS, MEMORY_LIMIT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES = 159, 158, 241, 396

_CHILDREN = re.compile(r" \(children \d+\)$")


def default_user(role: str) -> str:
    return f"provline_sql_{role}"


def audit_tables() -> list[str]:
    """Every table the migrations create that holds audit data, sorted. Pure."""
    return sorted({spec.table for spec in TABLES.values()} | set(DERIVED)
                  | {LEDGER_TABLE, DEAD_LETTERS_TABLE, "access_log"})


def readable_tables(role: str, tables: Iterable[str]) -> frozenset[str]:
    """The tables of ``tables`` that ``role`` may read. Pure."""
    return frozenset(tables) - HIDDEN_TABLES[role]


def _setting_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def session_settings(
    limits: SqlSettings, *, hidden: Iterable[str] = (), embedded: bool = True,
) -> list[tuple[str, str]]:
    """``(setting, SQL literal)`` pairs that make a session a sandbox, ``readonly`` last. Pure.

    ``hidden`` (qualified table names) read as empty; it and ``python()`` are chDB's part
    (``embedded``), a server's grants do that job.
    """
    pairs = [
        ("max_execution_time", _setting_number(limits.max_execution_s)), ("timeout_overflow_mode", "'throw'"),
        ("max_memory_usage", str(limits.max_memory_bytes)),
        ("max_rows_to_read", str(limits.max_rows_read)), ("read_overflow_mode", "'throw'"),
        ("max_result_rows", str(limits.max_result_rows)), ("max_result_bytes", str(limits.max_result_bytes)),
        ("result_overflow_mode", "'throw'"),
        # The engine counts result rows as they leave FROM; rows made after it (arrayJoin, a SELECT without
        # FROM) escape that count. ``limit`` stops every answer one row past the limit, which it then refuses.
        ("limit", str(limits.max_result_rows + 1)),
        ("max_threads", str(limits.max_threads)),
        ("allow_introspection_functions", "0"),
    ]
    if embedded:
        pairs.append(("allow_python_table_function", "0"))  # chDB's python() reads this process's variables
        filters = ", ".join(f"'{table}': '0'" for table in sorted(hidden))
        pairs.append(("additional_table_filters", "{" + filters + "}"))
    pairs.append(("readonly", "1"))  # last: from here on nothing above can change, and nothing can be written
    return pairs


def sql_users(settings: SqlSettings) -> dict[str, str]:
    """The server user each role's SQL runs as: the one in its URL, or the default name. Pure."""
    users = {}
    for role in SQL_ROLES:
        url: Any = getattr(settings, f"{role}_url")
        users[role] = (urlsplit(url.get_secret_value()).username if url else None) or default_user(role)
    return users


def server_grants(limits: SqlSettings, *, database: str, tables: Iterable[str], users: Mapping[str, str]) -> list[str]:
    """The statements that give a ClickHouse server one read-only user per SQL role. Pure.

    A settings profile with the limits and ``readonly = 1``, each CONST (readonly alone leaves a few
    settings, such as ``limit``, changeable), each user created with a placeholder password and
    that profile, everything it had revoked, then SELECT granted on the tables its role may read.
    """
    profile = ", ".join(f"{name} = {value} CONST" for name, value in session_settings(limits, embedded=False))
    statements = [f"CREATE SETTINGS PROFILE OR REPLACE {PROFILE} SETTINGS {profile}"]
    for role in SQL_ROLES:
        user = users[role]
        statements += [
            f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_password BY '<password of {user}>'",
            f"ALTER USER {user} SETTINGS PROFILE '{PROFILE}'",
            f"REVOKE ALL ON *.* FROM {user}",
        ]
        readable = sorted(readable_tables(role, tables))
        statements += [f"GRANT SELECT ON {database}.{table} TO {user}" for table in readable]
    return statements


@dataclass(frozen=True)
class AstFacts:
    """What ``EXPLAIN AST`` says about a statement."""

    kind: str  # the root node, e.g. SelectWithUnionQuery, InsertQuery
    explained: str  # for EXPLAIN, the root of the statement explained; otherwise ""
    into_outfile: bool
    settings: bool  # a SETTINGS clause anywhere
    functions: frozenset[str]  # every function called, lower case
    table_functions: frozenset[str]  # functions in the place of a table (FROM f(...)), lower case
    tables: frozenset[str]  # table names as written (for SELECT these include CTE names)
    identifiers: frozenset[str]  # other names as written: columns, aliases, tables after IN


def _node_name(rest: str) -> str:
    name = _CHILDREN.sub("", rest)
    return name.split(" (alias ", 1)[0]


def inspect_ast(lines: Sequence[str]) -> AstFacts:
    """Read the lines of ``EXPLAIN AST``: one node per line, indented by depth. Pure.

    A node's line is ``<kind> [<name>] [(alias <alias>)] [(children <n>)]``. A query's own children
    (depth 1) are its body, then an ``INTO OUTFILE`` file name as a ``Literal``, then format and
    settings; a table function is a ``Function`` right under a ``TableExpression``.
    """
    if not lines:
        raise ReadOnlySqlError("ClickHouse's parser returned no syntax tree for the statement; send one statement")
    kind = lines[0].strip().partition(" ")[0]
    explained, into_outfile, settings = "", False, False
    functions: set[str] = set()
    table_functions: set[str] = set()
    tables: set[str] = set()
    identifiers: set[str] = set()
    above = ("", -1)
    for number, line in enumerate(lines):
        depth = len(line) - len(line.lstrip(" "))
        node, _, rest = line.strip().partition(" ")
        name = _node_name(rest)
        if number == 1 and kind == EXPLAIN:
            explained = node
        if depth == 1 and node == "Literal":
            into_outfile = True
        if node == "Set":
            settings = True
        if node == "Function":
            functions.add(name.lower())
            if above == ("TableExpression", depth - 1):
                table_functions.add(name.lower())
        elif node == "TableIdentifier":
            tables.add(name)
        elif node == "Identifier":
            identifiers.add(name)
        above = (node, depth)
    return AstFacts(kind=kind, explained=explained, into_outfile=into_outfile, settings=settings,
                    functions=frozenset(functions),
                    table_functions=frozenset(table_functions), tables=frozenset(tables),
                    identifiers=frozenset(identifiers))


def ast_refusals(facts: AstFacts, table_only_functions: frozenset[str]) -> list[str]:
    """Why the statement may not run, one sentence per reason; empty when it may. Pure.

    ``table_only_functions``: lower-case names that are table functions and nothing else.
    """
    if facts.kind not in STATEMENT_KINDS:
        return [f"{facts.kind} is not a read statement; this endpoint is read-only and accepts {ACCEPTED}"]
    refusals = []
    if facts.kind == EXPLAIN and facts.explained != SELECT:
        refusals.append(f"EXPLAIN is accepted for SELECT statements only, not {facts.explained or 'this'}")
    if facts.into_outfile:
        refusals.append("INTO OUTFILE writes files on the server; remove it, results come back in the reply")
    if facts.settings:
        # readonly=1 still lets a query change a few settings (limit, offset, ...); none is needed to read.
        refusals.append("SETTINGS clauses are not allowed: the session's settings are fixed (PROVLINE_SQL__*)")
    used = sorted(facts.table_functions | (facts.functions & table_only_functions))
    denied = sorted(f for f in facts.functions - set(used)
                    if f in DENIED_FUNCTIONS or f.startswith(DENIED_FUNCTION_PREFIXES))
    if denied:
        refusals.append(f"{', '.join(denied)}() read files, dictionaries or Join tables, not audit tables; "
                        "they are not allowed here")
    if used:
        refusals.append(f"table function {', '.join(used)}() is not allowed: SQL here reads the audit tables only "
                        "(no files, URLs, other servers, generated rows, merge() or view()); name a table instead")
    return refusals


def named_refusals(facts: AstFacts, *, database: str, readable: frozenset[str], databases: frozenset[str]) -> list[str]:
    """Why the names a statement spells out may not be read, before the engine analyses it. Pure.

    Analysis runs scalar subqueries and folds constants, and an error it raises can carry what they
    read; so a name qualified with another database (``system.processes``), or a qualified table of
    this one the role may not read, is refused from the syntax tree alone. Unqualified names can only
    be this database's tables (or CTEs), whose hidden ones the engine shows empty.
    """
    named = {name for name in facts.tables | facts.identifiers if "." in name}
    elsewhere = sorted(name for name in named if name.split(".", 1)[0] in databases - {database})
    hidden = sorted(name for name in facts.tables if name.startswith(f"{database}.") and name not in readable)
    refusals = []
    if elsewhere:
        refusals.append(f"outside the audit store: {', '.join(elsewhere)}; SQL here reads the store's tables only")
    if hidden:
        refusals.append(f"{', '.join(shown(hidden, database))} may not be read by this role")
    return refusals


def tables_read(lines: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
    """``(tables, table functions)`` named by the lines of ``EXPLAIN QUERY TREE``. Pure.

    Every table the query reads is a ``TABLE`` node whose line names it last but for flags, as in
    ``table_name: <db>.<table>`` or ``table_name: <db>.<table>, final: 1`` (the analyzer renames
    table aliases, so the line is the engine's own); every table function a ``TABLE_FUNCTION`` node.
    """
    tables, functions = set(), set()
    for line in lines:
        text = line.strip()
        if text.startswith("TABLE id:"):
            tables.add(text.rpartition("table_name: ")[2].split(", ", 1)[0])
        elif text.startswith("TABLE_FUNCTION id:"):
            functions.add(text.rpartition("table_function_name: ")[2])
    return frozenset(tables), frozenset(functions)


def qualified(table: str, database: str) -> str:
    return table if "." in table else f"{database}.{table}"


def shown(tables: Iterable[str], database: str) -> tuple[str, ...]:
    """Tables as the access log records them: the store's by bare name, others qualified. Pure."""
    prefix = f"{database}."
    return tuple(sorted({t.removeprefix(prefix) for t in tables if t != DUMMY_TABLE}))


# Engine error code -> the setting that stopped the statement, and what to do about it.
_READ_LESS = "read fewer rows (filter on the tables' sort keys)"
_LIMITS = {
    TIMEOUT_EXCEEDED: ("PROVLINE_SQL__MAX_EXECUTION_S", "max_execution_s", "s", _READ_LESS),
    MEMORY_LIMIT_EXCEEDED: ("PROVLINE_SQL__MAX_MEMORY_BYTES", "max_memory_bytes", "bytes",
                            "aggregate into fewer groups or collect fewer values"),
    TOO_MANY_ROWS: ("PROVLINE_SQL__MAX_ROWS_READ", "max_rows_read", "rows", _READ_LESS),
}


def engine_refusal(exc: ClickHouseError, limits: SqlSettings, role: str) -> SqlError | None:
    """Our error for an error the engine answered with; None when the engine did not answer (store down). Pure."""
    code = getattr(exc, "code", None)
    if code is None:
        return None
    said = f"the engine said: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
    if code in _LIMITS:
        variable, field, unit, fix = _LIMITS[code]
        value = getattr(limits, field)
        shown_value = f"{value:g}" if isinstance(value, float) else str(value)
        return SqlLimitError(f"stopped at {variable} ({shown_value} {unit}); {fix}, or raise it; {said}")
    if code == TOO_MANY_ROWS_OR_BYTES:
        return SqlLimitError(
            f"the answer is over PROVLINE_SQL__MAX_RESULT_ROWS ({limits.max_result_rows} rows) or "
            f"PROVLINE_SQL__MAX_RESULT_BYTES ({limits.max_result_bytes} bytes); add LIMIT, select fewer columns "
            f"or aggregate; {said}"
        )
    if code in (READONLY, ACCESS_DENIED):
        return ReadOnlySqlError(f"the {role}s' SQL session is read-only and reads only the tables {role}s may; {said}")
    if code == SYNTAX_ERROR:
        return ReadOnlySqlError(f"not one statement ClickHouse can parse; send exactly one statement, without "
                                f"FORMAT (answers come back as JSON); {said}")
    return SqlQueryError(said)


@dataclass(frozen=True)
class CheckedSql:
    """A statement that passed inspection: its normalised text, what it is and the tables it reads."""

    sql: str
    kind: str  # SELECT, SHOW, DESCRIBE or EXPLAIN
    tables: tuple[str, ...]  # as the access log records them (:func:`shown`)


class Sandbox:
    """One role's read-only session.

    :meth:`turn` admits one statement at a time and never waits (thread-safe); :meth:`inspect` and
    :meth:`execute` block on the store, bounded by the engine's limits, and are called inside a turn.
    """

    def __init__(self, client: Client, *, role: str, database: str, databases: frozenset[str],
                 readable: frozenset[str], table_only_functions: frozenset[str], limits: SqlSettings) -> None:
        self.client = client
        self.role = role
        self.database = database
        self.databases = databases  # every database of the engine, this one included
        self.readable = readable  # qualified names
        self.table_only_functions = table_only_functions
        self.limits = limits
        self._lock = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the session for one statement; :class:`SqlBusyError` at once when it is running one."""
        if not self._lock.acquire(blocking=False):
            retry = max(1, math.ceil(self.limits.max_execution_s))
            raise SqlBusyError(
                f"the {self.role}s' SQL session runs one statement at a time and is running one (for at most "
                f"{self.limits.max_execution_s:g} s); retry after {retry} s", retry_after_s=retry,
            )
        try:
            yield
        finally:
            self._lock.release()

    def _query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        try:
            return self.client.query(sql, parameters=parameters)
        except ClickHouseError as exc:
            refusal = engine_refusal(exc, self.limits, self.role)
            if refusal is None:
                raise
            raise refusal from exc

    def _lines(self, sql: str) -> list[str]:
        lines = [str(row[0]) for row in self._query(sql).result_rows]
        if len(lines) > self.limits.max_result_rows:  # the engine refuses first; never inspect a cut-off dump
            raise SqlLimitError(f"the statement's syntax tree has over {self.limits.max_result_rows} lines "
                                "(PROVLINE_SQL__MAX_RESULT_ROWS); send a smaller statement")
        return lines

    def inspect(self, sql: str) -> CheckedSql:
        """Check ``sql`` with ClickHouse's parser; :class:`ReadOnlySqlError` naming every reason it may not run."""
        if len(sql) > MAX_SQL_CHARS:
            raise ReadOnlySqlError(f"statement of {len(sql)} characters exceeds the limit of {MAX_SQL_CHARS}")
        if not sql.strip():
            raise ReadOnlySqlError(f"empty statement; send {ACCEPTED} statement")
        formatted = str(self._query("SELECT formatQuery({sql:String})", {"sql": sql}).result_rows[0][0])
        facts = inspect_ast(self._lines(f"EXPLAIN AST {formatted}"))
        refusals = ast_refusals(facts, self.table_only_functions) + named_refusals(
            facts, database=self.database, readable=self.readable, databases=self.databases)
        if refusals:
            raise ReadOnlySqlError("; ".join(refusals))
        if facts.kind == SELECT:
            tables, functions = tables_read(self._lines(f"EXPLAIN QUERY TREE {formatted}"))
            if functions:
                raise ReadOnlySqlError(f"table function {', '.join(sorted(functions))}() is not allowed; name a table")
        else:  # SHOW, DESCRIBE and EXPLAIN read no rows; what they name must still be readable
            tables = frozenset(qualified(table, self.database) for table in facts.tables)
        denied = sorted(tables - self.readable - {DUMMY_TABLE})
        if denied:
            hint = "" if facts.kind == SELECT else " (to EXPLAIN and DESCRIBE a WITH name is a table: leave WITH out)"
            raise ReadOnlySqlError(
                f"{self.role}s may not read {', '.join(shown(denied, self.database))}{hint}; they may read "
                f"{', '.join(shown(self.readable, self.database))}"
            )
        return CheckedSql(sql=formatted, kind=STATEMENT_KINDS[facts.kind], tables=shown(tables, self.database))

    def execute(self, checked: CheckedSql) -> dict[str, Any]:
        """Run an inspected statement: ``{"columns": [...], "rows": [[...], ...]}``, JSON-able."""
        result = self._query(checked.sql)
        rows = [to_jsonable(list(row)) for row in result.result_rows]
        if len(rows) > self.limits.max_result_rows:
            raise SqlLimitError(f"the answer has over {self.limits.max_result_rows} rows "
                                "(PROVLINE_SQL__MAX_RESULT_ROWS); add LIMIT or aggregate")
        size = len(json.dumps(rows, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))
        if size > self.limits.max_result_bytes:
            raise SqlLimitError(f"the answer is {size} bytes as JSON, over PROVLINE_SQL__MAX_RESULT_BYTES "
                                f"({self.limits.max_result_bytes} bytes); add LIMIT, select fewer columns or aggregate")
        return {"columns": list(result.column_names), "rows": rows}

    def close(self) -> None:
        self.client.close()


def open_sandboxes(settings: ServeSettings, tables: Iterable[str]) -> dict[str, Sandbox]:
    """A sandbox per SQL role over the store's data ``tables``; blocks while connecting.

    Raises :class:`StoreConfigError` when a server URL lacks a role's user, or a session is not the
    read-only sandbox it must be. The caller closes them.
    """
    opened: dict[str, Sandbox] = {}
    try:
        for role in SQL_ROLES:
            opened[role] = _open_sandbox(settings, role, frozenset(tables))
    except BaseException:
        for sandbox in opened.values():
            sandbox.close()
        raise
    return opened


def _open_sandbox(settings: ServeSettings, role: str, tables: frozenset[str]) -> Sandbox:
    embedded = settings.store.url.startswith(CHDB_SCHEME)
    if embedded:
        client = open_store(settings.store.url)
    else:
        url: Any = getattr(settings.sql, f"{role}_url")
        if url is None:
            raise StoreConfigError(
                f"PROVLINE_STORE__URL is a ClickHouse server, so {role}s' SQL runs as a read-only user of its own; "
                f"set PROVLINE_SQL__{role.upper()}_URL to it (`provline sql-grants` prints the statements creating it)"
            )
        client = open_store(url.get_secret_value())
    try:
        database = str(client.query("SELECT currentDatabase()").result_rows[0][0])
        readable = frozenset(qualified(table, database) for table in readable_tables(role, tables))
        if embedded:
            present = {f"{database}.{row[0]}" for row in client.query(
                "SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}
            for name, value in session_settings(settings.sql, hidden=present - readable):
                client.command(f"SET {name} = {value}")
        check_sandbox(client, role, database, embedded=embedded)
        table_only_functions = frozenset(str(row[0]).lower() for row in client.query(
            "SELECT name FROM system.table_functions WHERE name NOT IN (SELECT name FROM system.functions)"
        ).result_rows)
        databases = frozenset(str(row[0]) for row in client.query("SELECT name FROM system.databases").result_rows)
    except BaseException:
        client.close()
        raise
    return Sandbox(client, role=role, database=database, databases=databases, readable=readable,
                   table_only_functions=table_only_functions, limits=settings.sql)


def check_sandbox(client: Client, role: str, database: str, *, embedded: bool) -> None:
    """Refuse to serve SQL from a session that is not read-only or can read what ``role`` may not; blocks.

    Raises :class:`StoreConfigError` naming the user and the fix. For chDB the hidden tables must read
    as empty (the filters); on a server reading them must be denied (the grants).
    """
    user = str(client.query("SELECT currentUser()").result_rows[0][0])
    readonly = str(client.query("SELECT getSetting('readonly')").result_rows[0][0])
    if readonly != "1":
        raise StoreConfigError(
            f"the session for {role}s' SQL (user {user}) has readonly={readonly}, not 1; give the user the settings "
            f"profile {PROFILE} (`provline sql-grants`)"
        )
    for table in sorted(HIDDEN_TABLES[role]):
        try:
            seen = client.query(f"SELECT count() FROM (SELECT * FROM {database}.{table})").result_rows[0][0]
        except ClickHouseError as exc:
            if getattr(exc, "code", None) == ACCESS_DENIED:
                continue
            raise
        if embedded and seen == 0:
            continue
        raise StoreConfigError(
            f"the session for {role}s' SQL (user {user}) can read {database}.{table}, which {role}s may not; "
            f"REVOKE SELECT ON {database}.{table} FROM {user}"
        )
