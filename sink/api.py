"""The audit HTTP API: traces by prediction id, read-only SQL, health and metrics.

Every ``/v1`` route depends on :func:`audit_reader`, the one place where authentication and
role checks attach. The API owns its client: the handlers run in a thread pool, so calls on the
client are serialised with a lock (clickhouse-connect clients are not for concurrent queries).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Annotated, Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.responses import Response

from sink import queries
from sink.errors import ReadOnlySqlError
from sink.queries import MAX_SQL_CHARS
from sink.settings import SinkSettings


@dataclass(frozen=True)
class Reader:
    """Who is reading; every audit read is made on behalf of one."""

    name: str
    roles: frozenset[str]


ANONYMOUS = Reader(name="anonymous", roles=frozenset({"auditor"}))


def audit_reader(request: Request) -> Reader:
    """The caller of a ``/v1`` route. Authentication replaces this function's body; routes stay as they are."""
    return ANONYMOUS


# Module level: FastAPI resolves the handlers' string annotations in this module's namespace.
ReaderDep = Annotated[Reader, Depends(audit_reader)]


class SqlRequest(BaseModel):
    sql: str = Field(max_length=MAX_SQL_CHARS)


class LockedClient:
    """One client, one caller at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()


def create_api(settings: SinkSettings, client: Client) -> FastAPI:
    """Build the app around ``client`` (which the app does not close). Handlers block on the store."""
    app = FastAPI(title="provline audit API", version="1")
    store = LockedClient(client)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        with store.lock:
            store.client.query("SELECT 1")
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/traces/{prediction_id}")
    def get_trace(prediction_id: str, reader: ReaderDep) -> dict[str, Any]:
        with store.lock:
            found = queries.trace(store.client, prediction_id)
        if found is None:
            raise HTTPException(
                status_code=404,
                detail=f"no trace stored for prediction {prediction_id!r}; it may not be joined yet, "
                "or the id is wrong",
            )
        return found

    @app.post("/v1/sql")
    def post_sql(body: SqlRequest, reader: ReaderDep) -> dict[str, Any]:
        try:
            with store.lock:
                return queries.run_readonly_sql(store.client, body.sql)
        except ReadOnlySqlError as exc:
            raise HTTPException(status_code=400, detail=f"refused: {exc}") from exc
        except ClickHouseError as exc:
            raise HTTPException(status_code=400, detail=f"query failed: {exc}") from exc

    @app.exception_handler(ClickHouseError)
    def store_error(request: Request, exc: ClickHouseError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"store unavailable: {exc}"})

    return app
