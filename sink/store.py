"""Opening the ClickHouse store and applying the DDL in ``sink/sql``.

``chdb://<path>[?database=<db>]`` opens the embedded chDB engine in this process (the real
ClickHouse engine, data on disk at ``<path>``); ``http(s)://user:password@host:port/<db>`` talks to
a ClickHouse server. chDB hosts ONE engine per process: every client opened here for a chDB URL
must name the same path until all of them are closed. Several clients on the one path are fine and
each has its own session, so the writer and the API each get their own.

A clickhouse-connect client must not run queries from several threads at once; give each thread
its own client or serialise calls on a shared one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from provline.schemas import Catalog, default_catalog
from provline.sink.errors import MigrationError, StoreConfigError
from provline.sink.ingest import (
    DERIVED,
    LEDGER_TABLE,
    VIEW_PREFIX,
    derived_select,
    event_view_select,
    ingest_format,
    ingest_table_ddl,
    ledger_select,
    view_ddl,
)
from provline.sink.rows import TABLES

log = logging.getLogger(__name__)

CHDB_SCHEME = "chdb://"
MIGRATIONS_TABLE = "schema_migrations"
_MIGRATION_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")


@dataclass(frozen=True)
class ChdbLocation:
    path: str
    database: str | None


def parse_chdb_url(url: str) -> ChdbLocation:
    """``chdb://<path>[?database=<db>]``: everything between the scheme and ``?`` is the path.

    ``chdb://.provline/clickhouse`` is relative to the working directory, ``chdb:///var/lib/x``
    absolute. (clickhouse-connect's own DSN parser would read ``.provline`` as a host.)
    """
    rest = url[len(CHDB_SCHEME):]
    path, _, query = rest.partition("?")
    if not path:
        raise StoreConfigError(f"{url!r} names no directory; use chdb://<path>, e.g. chdb://.provline/clickhouse")
    unknown = set(parse_qs(query)) - {"database"}
    if unknown:
        raise StoreConfigError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; only ?database= is read")
    database = parse_qs(query).get("database", [None])[0]
    if database is not None and not _DATABASE_NAME.match(database):
        raise StoreConfigError(f"{url!r}: database {database!r} must be letters, digits and underscores")
    return ChdbLocation(path=str(Path(path).expanduser().resolve()), database=database)


def open_store(url: str) -> Client:
    """Open a client for ``url`` (see the module docstring). Blocks while connecting.

    For chDB the directory and the database are created when missing. The returned client is not
    thread-safe; call :func:`migrate` on one of them before writing.
    """
    if url.startswith(CHDB_SCHEME):
        return _open_chdb(parse_chdb_url(url))
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise StoreConfigError(
            f"PROVLINE_STORE__URL scheme {scheme or '(none)'!r} is not supported; "
            "use chdb://<path> for the embedded store or http(s)://user:password@host:port/database"
        )
    try:
        return clickhouse_connect.get_client(dsn=url)
    except ClickHouseError as exc:
        raise StoreConfigError(
            f"cannot connect to ClickHouse at {urlsplit(url).hostname}:{urlsplit(url).port}: {exc}; "
            "check PROVLINE_STORE__URL and that the database exists"
        ) from exc


def _open_chdb(location: ChdbLocation) -> Client:
    Path(location.path).mkdir(parents=True, exist_ok=True)
    try:
        client = clickhouse_connect.get_client(interface="chdb", path=location.path)
        if location.database:
            client.command(f"CREATE DATABASE IF NOT EXISTS `{location.database}`")
            client.database = location.database
    except ClickHouseError as exc:
        raise StoreConfigError(
            f"cannot open the chDB store at {location.path}: {exc}; one process hosts one chDB store "
            "(stop the other provline serve, or point PROVLINE_STORE__URL at the same path)"
        ) from exc
    return client


def migration_files() -> list[tuple[str, str]]:
    """``(name, text)`` of every ``sink/sql/NNNN_*.sql``, in name order."""
    folder = resources.files("provline.sink") / "sql"
    names = sorted(item.name for item in folder.iterdir() if _MIGRATION_NAME.match(item.name))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


def split_statements(sql: str) -> list[str]:
    """Statements of a DDL file: split at ``;`` that ends a line; comment-only chunks dropped."""
    statements = []
    for chunk in _STATEMENT_END.split(sql):
        code = [line for line in chunk.splitlines() if line.strip() and not line.strip().startswith("--")]
        if code:
            statements.append(chunk.strip())
    return statements


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def applied_migrations(client: Client) -> dict[str, str]:
    result = client.query(f"SELECT name, argMax(sha256, applied_at) FROM {MIGRATIONS_TABLE} GROUP BY name")
    return {str(name): str(digest) for name, digest in result.result_rows}


_CREATE = re.compile(r"^(\s*CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS\s+\w+)", re.MULTILINE)
_DROP = re.compile(r"^(\s*DROP VIEW IF EXISTS\s+\w+)", re.MULTILINE)
_ALTER = re.compile(r"^(\s*ALTER TABLE\s+\w+)", re.MULTILINE)
_ENGINE = re.compile(r"ENGINE\s*=\s*(ReplacingMergeTree|MergeTree)(?:\(([^)]*)\))?")
REPLICA_PATH = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
TTL_COLUMNS = {"access_log": "time"}  # every other table keeps rows by event_time


def render_ddl(statement: str, cluster: str | None) -> str:
    """``statement`` for a cluster: ``ON CLUSTER`` and Replicated engines; unchanged without one. Pure."""
    if cluster is None:
        return statement
    statement = _CREATE.sub(lambda m: f"{m.group(1)} ON CLUSTER '{cluster}'", statement, count=1)
    statement = _ALTER.sub(lambda m: f"{m.group(1)} ON CLUSTER '{cluster}'", statement, count=1)
    statement = _DROP.sub(lambda m: f"{m.group(1)} ON CLUSTER '{cluster}'", statement, count=1)

    def replicated(match: re.Match[str]) -> str:
        args = ", ".join(part for part in (REPLICA_PATH, match.group(2)) if part)
        return f"ENGINE = Replicated{match.group(1)}({args})"

    return _ENGINE.sub(replicated, statement, count=1)


def ttl_statements(retention_days: dict[str, int], tables: set[str], cluster: str | None) -> list[str]:
    """``ALTER TABLE ... MODIFY TTL`` per configured table, and the ledger's rows of each event table
    expiring with it; unknown tables are an error. Pure."""
    unknown = sorted(set(retention_days) - tables)
    if unknown:
        raise MigrationError(
            f"retention_days names unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(tables))}"
        )
    if LEDGER_TABLE in retention_days:
        raise MigrationError(f"retention_days names {LEDGER_TABLE}: its rows expire with their event tables' "
                             "retention; set retention_days on those instead")
    statements = [
        f"ALTER TABLE {table} MODIFY TTL toDateTime({TTL_COLUMNS.get(table, 'event_time')}) + INTERVAL {int(days)} DAY"
        for table, days in sorted(retention_days.items())
    ]
    event_tables = {spec.table for spec in TABLES.values()}
    ledger_rules = [f"toDateTime(event_time) + INTERVAL {int(days)} DAY DELETE WHERE event_table = '{table}'"
                    for table, days in sorted(retention_days.items()) if table in event_tables]
    if ledger_rules:
        statements.append(f"ALTER TABLE {LEDGER_TABLE} MODIFY TTL {', '.join(ledger_rules)}")
    return [render_ddl(statement, cluster) for statement in statements]


def store_tables(client: Client) -> set[str]:
    """The tables that hold data (not the ingest tables and views of sink/ingest.py)."""
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine NOT IN ('Null', 'MaterializedView')"
    ).result_rows
    return {row[0] for row in rows} - {MIGRATIONS_TABLE}


def migrate(
    client: Client, *, cluster: str | None = None, retention_days: dict[str, int] | None = None
) -> list[str]:
    """Apply every migration not applied yet, the ingest views, then the configured TTLs.

    Returns the migrations applied.

    Idempotent; blocks. Statements use ``IF NOT EXISTS`` (or are ``ALTER ... MODIFY``), so a run
    interrupted half-way is safely re-run. A file that changed after it was applied is an error:
    released DDL is never edited, a new file is added. With ``cluster`` every statement runs
    ``ON CLUSTER`` with Replicated engines (:func:`render_ddl`).
    """
    files = migration_files()
    for statement in split_statements(files[0][1]):  # the migrations table itself
        client.command(render_ddl(statement, cluster))
    done = applied_migrations(client)
    applied = []
    for name, text in files:
        digest = _sha256(text)
        if name in done:
            if done[name] != digest:
                raise MigrationError(
                    f"sink/sql/{name} changed after it was applied to this store (sha256 {done[name][:12]}… "
                    f"-> {digest[:12]}…); restore the released file and put the change in a new migration"
                )
            continue
        for statement in split_statements(text):
            try:
                client.command(render_ddl(statement, cluster))
            except ClickHouseError as exc:
                raise MigrationError(f"sink/sql/{name} failed: {exc}") from exc
        client.insert(MIGRATIONS_TABLE, [[name, digest]], column_names=["name", "sha256"])
        log.info("applied migration %s", name)
        applied.append(name)
    ensure_views(client, default_catalog(), cluster=cluster)
    if retention_days:
        for statement in ttl_statements(retention_days, store_tables(client), cluster):
            client.command(statement)
    return applied


def ensure_views(client: Client, catalog: Catalog, *, cluster: str | None = None) -> list[str]:
    """Create the ingest tables and views this provline needs, drop views it no longer has; blocks.

    Returns the views created. Idempotent.
    """
    wanted: dict[str, str] = {}
    for kind in TABLES:
        fmt = ingest_format(catalog, kind)
        described = client.query(  # base64: query parameters travel as text to a ClickHouse server
            "DESCRIBE format(Avro, base64Decode({header:String}))",
            parameters={"header": base64.b64encode(fmt.header).decode("ascii")},
        )
        client.command(render_ddl(ingest_table_ddl(fmt, [(row[0], row[1]) for row in described.result_rows]), cluster))
        name, ddl = view_ddl(fmt.spec.table, event_view_select(fmt))
        wanted[name] = ddl
        name, ddl = view_ddl(LEDGER_TABLE, ledger_select(fmt))
        wanted[name] = ddl
    for table in DERIVED:
        name, ddl = view_ddl(table, derived_select(table, "prediction_traces"))
        wanted[name] = ddl
    existing = {
        row[0] for row in client.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'MaterializedView' "
            "AND startsWith(name, {prefix:String})", parameters={"prefix": VIEW_PREFIX},
        ).result_rows
    }
    for stale in sorted(existing - set(wanted)):
        client.command(render_ddl(f"DROP VIEW IF EXISTS {stale}", cluster))
    created = sorted(set(wanted) - existing)
    for name in created:
        client.command(render_ddl(wanted[name], cluster))
    return created
