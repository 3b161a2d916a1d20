"""The real audit API over a seeded chDB store, and the witnesses the SQL security tests watch.

A witness is anything an escaped statement would change or touch: every table's rows (by count and
checksum), a directory that must stay as it is, a TCP listener that must never be contacted.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from provline.sink.api import create_api
from provline.sink.store import migrate, open_store
from tests.integration.test_sink_audit import TOKENS, api_settings, bearer, seed, store_sessions

__all__ = ["TOKENS", "AuditApi", "Listener", "audit_api", "bearer", "listener", "table_names", "table_rows"]


@dataclass
class AuditApi:
    http: TestClient
    store: Client  # a session of the test's own, like the sink writer's, to look at the store directly
    database: str

    def sql(self, reader: str, statement: str) -> Any:
        return self.http.post("/v1/sql", headers=bearer(reader), json={"sql": statement})


@contextmanager
def audit_api(chdb_path: str, **sections: Any) -> Iterator[AuditApi]:
    """A migrated, seeded store and ``create_api`` over it, as ``provline serve`` builds it."""
    store = open_store(chdb_path)
    api_client = open_store(chdb_path)
    try:
        migrate(store)
        store_sessions(store, *seed())
        app = create_api(api_settings(chdb_path, **sections), api_client)
        with TestClient(app, raise_server_exceptions=False) as http:
            yield AuditApi(http=http, store=store, database=store.query("SELECT currentDatabase()").result_rows[0][0])
    finally:
        api_client.close()
        store.close()


def table_names(store: Client) -> set[tuple[str, str]]:
    """Every table of every database but the engine's own."""
    rows = store.query(
        "SELECT database, name FROM system.tables "
        "WHERE database NOT IN ('system', 'INFORMATION_SCHEMA', 'information_schema')"
    ).result_rows
    return {(str(database), str(name)) for database, name in rows}


def table_rows(store: Client) -> dict[str, tuple[int, int]]:
    """``table -> (rows, checksum of all rows)`` for every data table of the store's database."""
    names = [row[0] for row in store.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
    ).result_rows]
    found = {}
    for name in names:
        count, checksum = store.query(f"SELECT count(), ifNull(sum(cityHash64(*)), 0) FROM `{name}`").result_rows[0]
        found[name] = (int(count), int(checksum))
    return found


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections made to it (it should see none)."""

    sock: socket.socket
    connections: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections.append(f"{peer[0]}:{peer[1]}")
            conn.close()


@contextmanager
def listener() -> Iterator[Listener]:
    sock = socket.create_server(("127.0.0.1", 0))
    watching = Listener(sock)
    thread = threading.Thread(target=watching.serve, daemon=True)
    thread.start()
    try:
        yield watching
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)
