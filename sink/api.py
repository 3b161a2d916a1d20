"""The audit HTTP API: traces, lineage walks, runs, models, drift, evidence, verify and read-only SQL.

Every ``/v1`` request carries ``Authorization: Bearer <token>``; the token maps to a reader and a
role (``viewer`` < ``auditor`` < ``admin``) from :attr:`ServeSettings.api`. Viewers see the
audit answers; raw payloads (stored events, SQL over the raw columns, evidence bundles, store
verification) need ``auditor``; the access log needs ``admin``. The one write, ``POST /v1/feedback``
(ground truth, :mod:`provline.sink.feedback`), needs role ``feedback_writer``, which reads nothing:
writers' tokens are refused (403) everywhere else, and readers' tokens there. Every request but the health,
readiness and metrics probes, allowed, denied or failed (an unhandled error is logged as 500), is
written to ``access_log`` (who, what, when, status, size; for SQL the statement, its SHA-256 and
the tables read); if that write fails the answer is withheld (503): no unlogged reads.

The web console (:mod:`provline.sink.console`, under ``/console/``) signs readers in with these same
tokens, kept in a session cookie that stands in for the bearer token on the console's pages and on the
console's same-origin ``GET`` requests of ``/v1`` only (:func:`provline.sink.console.auth.cookie_accepted`).

The API owns one client for its answers and the access log: handlers run in a thread pool, so
calls on it are serialised with a lock (clickhouse-connect clients are not for concurrent queries).
User SQL never runs on it: each SQL role has a read-only sandbox session of its own
(:mod:`provline.sink.sandbox`), opened here and closed when the app shuts down. ``/healthz`` says
the process is alive and touches nothing; ``/readyz`` asks the store.
"""

from __future__ import annotations

import hmac
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.responses import Response

from provline.producers.feedback import InvalidFeedbackError, feedback_item
from provline.schemas import Catalog, default_catalog
from provline.schemas.integrity import load_private_key, load_public_key
from provline.schemas.tracecontext import check_trace_id
from provline.sink import evidence, lineagegraph, modelpage, monitor, queries
from provline.sink.accesslog import ACCESS_LOG_COLUMNS, access_row, sql_statement
from provline.sink.anchor import AnchorBook
from provline.sink.console import SESSION_COOKIE, console_router, cookie_accepted
from provline.sink.errors import ReadOnlySqlError, SqlBusyError, SqlLimitError, SqlQueryError
from provline.sink.feedback import FeedbackEmitter, known_predictions, publish_durably, resolve_request_ids
from provline.sink.metrics import VERIFY_RUNS
from provline.sink.monitoring import MonitoringPolicy
from provline.sink.queries import Filters
from provline.sink.sandbox import MAX_SQL_CHARS, open_sandboxes
from provline.sink.settings import ServeSettings
from provline.sink.store import open_store, store_tables
from provline.sink.verifier import Report, anchor_heads, verify_store
from provline.sink.verify import AnchoredSession, Trust

log = logging.getLogger(__name__)

ROLE_RANK = {"viewer": 0, "auditor": 1, "admin": 2}
PAYLOAD_ROLE = "auditor"  # and above: raw payloads (stored events, bodies in the trace's chain, SQL, bundles)
FEEDBACK_WRITER = "feedback_writer"  # outside the readers' ranks: it may send feedback and nothing else
FEEDBACK_PATH = "/v1/feedback"
UNLOGGED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SQL_PATH = "/v1/sql"
CLIENT_CLOSED = 499  # the status logged for a request whose client went away before the answer


@dataclass(frozen=True)
class Reader:
    """Who is reading; every audit read is made on behalf of one."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        if FEEDBACK_WRITER in (role, self.role):
            return role == self.role
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


FEEDBACK_ITEM_MAX_BYTES = 16 * 1024  # a label at its longest, escaped, with ids and the other fields


def _feedback_too_large(request: Request, max_batch: int) -> JSONResponse | None:
    """A 413 for a feedback body longer than ``max_batch`` items can be, before it is read; else None."""
    if (request.method, request.url.path) != ("POST", FEEDBACK_PATH):
        return None
    limit = max_batch * FEEDBACK_ITEM_MAX_BYTES
    try:
        size = int(request.headers.get("content-length", "0"))
    except ValueError:
        return JSONResponse(status_code=400, content={"detail": "Content-Length is not a number"})
    if size > limit:
        return JSONResponse(status_code=413, content={"detail": f"a feedback body of {size} bytes exceeds {limit} "
                                                      "bytes; send smaller batches"})
    return None


def check_items(items: Sequence[Any]) -> list[dict[str, Any] | str]:
    """Per item, its Feedback fields (:func:`feedback_item`), or why it is invalid. Pure."""
    checked: list[dict[str, Any] | str] = []
    now = datetime.now(UTC)
    for item in items:
        try:
            checked.append(feedback_item(item, now=now))
        except InvalidFeedbackError as exc:
            checked.append(str(exc))
    return checked


def authenticate(settings: ServeSettings, token: str | None) -> Reader | None:
    """The reader a bearer token belongs to, or None. Compares in constant time. Pure."""
    if not token:
        return None
    found = None
    for name, grant in settings.api.tokens.items():
        if hmac.compare_digest(grant.token.get_secret_value().encode(), token.encode()):
            found = Reader(name=name, role=grant.role)
    return found


_bearer = HTTPBearer(auto_error=False, description="an API token from PROVLINE_API__TOKENS")


def _caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Reader:
    reader: Reader | None = getattr(request.state, "reader", None)
    if reader is None:
        detail = (
            "no bearer token; send 'Authorization: Bearer <token>' (provline commands read PROVLINE_CLIENT__API_TOKEN)"
            if credentials is None else "unknown token; ask an admin for a token in PROVLINE_API__TOKENS"
        )
        raise HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})
    return reader


def require(role: str) -> Callable[[Reader], Reader]:
    def check(reader: Annotated[Reader, Depends(_caller)]) -> Reader:
        if not reader.may(role):
            needed = f"role {role}" if FEEDBACK_WRITER in (role, reader.role) else f"{role} or higher"
            raise HTTPException(status_code=403, detail=f"{reader.name} has role {reader.role}; this needs {needed}")
        return reader

    return check


# Module level: FastAPI resolves the handlers' string annotations in this module's namespace.
Viewer = Annotated[Reader, Depends(require("viewer"))]
Auditor = Annotated[Reader, Depends(require("auditor"))]
Admin = Annotated[Reader, Depends(require("admin"))]
FeedbackWriter = Annotated[Reader, Depends(require(FEEDBACK_WRITER))]


class AnchoredClaim(BaseModel):
    session: str
    count: int = Field(ge=0)
    head: str


class AnchorClaim(BaseModel):
    """An anchor whose signature the caller checked: its name (where it was read) and its sessions."""

    name: str
    sessions: list[AnchoredClaim]


class VerifyRequest(BaseModel):
    session: str = ""
    anchors: list[AnchorClaim] = Field(default_factory=list)


class Verification:
    """Verification on a store connection of its own, one run at a time, so it holds up no other request."""

    def __init__(self, store_url: str, retention_days: dict[str, int]) -> None:
        self._url = store_url
        self._retention_days = retention_days
        self._client: Client | None = None
        self._lock = threading.Lock()

    def _locked_client(self) -> Client:
        if not self._lock.acquire(blocking=False):
            raise HTTPException(status_code=429, detail="a verification is already running; try again when it ends",
                                headers={"Retry-After": "30"})
        if self._client is None:
            self._client = open_store(self._url)
        return self._client

    def run(self, catalog: Catalog, trust: Trust, *, sessions: list[str] | None,
            anchors: Sequence[tuple[str, list[AnchoredSession]]] = (), reader: str = "") -> Report:
        client = self._locked_client()
        try:
            report = verify_store(client, catalog, trust, sessions=sessions, anchors=anchors,
                                  retention_days=self._retention_days)
            outcome = "findings" if report.findings else "clean"
            VERIFY_RUNS.labels(outcome).inc()  # alerts.yml: ProvlineVerifyFindings
            try:  # stored too, for the monitor's verify-failure alert (sink/alerts.py)
                monitor.record_verify_run(client, run_id=str(uuid.uuid4()), outcome=outcome,
                                          problems=len(report.findings), reader=reader)
            except ClickHouseError:
                log.exception("could not store the outcome of a verify run (%s); its alert will not fire", outcome)
        finally:
            self._lock.release()
        return report

    def heads(self) -> list[dict[str, Any]]:
        client = self._locked_client()
        try:
            return anchor_heads(client)
        finally:
            self._lock.release()


class SqlRequest(BaseModel):
    sql: str = Field(max_length=MAX_SQL_CHARS)


class LockedClient:
    """One client, one caller at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()


class ScanStore:
    """A store connection of its own, opened on first use, for the console's reads that scan (the model
    page's traffic, a lineage graph walking to every prediction below a dataset), so that they hold up
    no trace lookup or access-log write on the API's connection. One read at a time; others wait."""

    def __init__(self, store_url: str) -> None:
        self._url = store_url
        self._client: Client | None = None
        self._lock = threading.Lock()

    @contextmanager
    def client(self) -> Iterator[Client]:
        with self._lock:
            if self._client is None:
                self._client = open_store(self._url)
            yield self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def create_api(settings: ServeSettings, client: Client, *, emitter: FeedbackEmitter | None = None) -> FastAPI:
    """Build the app around ``client`` (which the app does not close); blocks while it opens the SQL sandboxes.

    The store must be migrated: the sandboxes are set up for the tables it has. Handlers block on the store.
    ``emitter`` publishes the Feedback of ``POST /v1/feedback`` (which answers 503 without one); the caller
    closes it.
    """
    sandboxes = open_sandboxes(settings, store_tables(client))
    scans = ScanStore(settings.store.url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for sandbox in sandboxes.values():
                sandbox.close()
            scans.close()

    app = FastAPI(
        title="provline audit API", version="1", lifespan=lifespan,
        description="Audit queries over the provline store. Bearer tokens map to roles viewer, auditor, admin.",
    )
    store = LockedClient(client)
    registry = queries.RegistryCache()
    chains = queries.ChainCache()
    catalog = default_catalog()
    evidence_keys = settings.evidence
    signer = load_private_key(evidence_keys.signing_key.get_secret_value()) if evidence_keys.signing_key else None
    trust = Trust.from_config(evidence_keys.trusted_keys)
    anchors = (AnchorBook(settings.anchor.destination, [load_public_key(k) for k in settings.anchor.public_keys])
               if settings.anchor.destination and settings.anchor.public_keys else None)
    verification = Verification(settings.store.url, settings.store.retention_days)
    policy = MonitoringPolicy.load(settings.monitoring.policy)

    def write_access_log(row: list[Any]) -> None:
        with store.lock:
            store.client.insert("access_log", [row], column_names=list(ACCESS_LOG_COLUMNS))

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in UNLOGGED_PATHS:
            return await call_next(request)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        reader = authenticate(settings, token.strip()) if scheme.lower() == "bearer" else None
        if not header and cookie_accepted(request.method, request.url.path, request.headers):
            reader = authenticate(settings, request.cookies.get(SESSION_COOKIE))  # the console's session
        request.state.reader = reader
        request.state.sql_tables = []
        request_id = str(uuid.uuid4())
        # The statement is read here, not in the handler, so that refusals (401, 403, 422) keep it too.
        is_sql = (request.method, request.url.path) == ("POST", SQL_PATH)
        statement = sql_statement(await request.body()) if is_sql else None

        def row(status: int, size: int) -> list[Any]:
            reader = request.state.reader  # the console's sign-in names its reader once it has checked the form
            return access_row(
                time=datetime.now(UTC), request_id=request_id, reader=reader.name if reader else "",
                role=reader.role if reader else "", method=request.method, path=request.url.path,
                query=request.url.query, status=status, size=size, client=request.client.host if request.client else "",
                statement=statement, tables=request.state.sql_tables,
            )

        try:
            too_large = _feedback_too_large(request, settings.feedback.max_batch)
            response = too_large if too_large is not None else await call_next(request)
        except Exception:
            log.exception("unhandled error answering %s %s (request %s)", request.method, request.url.path, request_id)
            response = JSONResponse(
                status_code=500, content={"detail": f"internal error; the server log has it as request {request_id}"},
            )
        except BaseException:
            # Cancelled (the client went away, or shutdown): a cancelled task can no longer await, so the
            # row is written right here, blocking the loop for one insert on this rare path.
            try:
                write_access_log(row(CLIENT_CLOSED, 0))
            except Exception:
                log.exception("could not write the access log of cancelled request %s", request_id)
            raise
        size = int(response.headers.get("content-length", 0))
        try:
            await run_in_threadpool(write_access_log, row(response.status_code, size))
        except Exception:
            log.exception("could not write the access log; withholding the answer")
            return JSONResponse(status_code=503, content={"detail": "access log unavailable; try again later"})
        return response

    @app.get("/healthz", summary="The process is alive (touches neither the store nor any lock)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The store answers a short query on the API's session")
    def readyz() -> dict[str, str]:
        with store.lock:
            store.client.query("SELECT 1")
        return {"status": "ready"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/traces/{prediction_id}", summary="The whole chain behind one prediction")
    def get_trace(
        prediction_id: str, reader: Viewer,
        raw: Annotated[bool, Query(description="include the stored raw events (auditor)")] = False,
    ) -> dict[str, Any]:
        """The stored trace, and under ``chain`` every record of its chain of custody as nodes and edges,
        each with its event id and verification status (:mod:`provline.sink.chain`). The request and
        response bodies are in the prediction node for auditors and admins only."""
        if raw and not reader.may("auditor"):
            raise HTTPException(status_code=403, detail=f"raw payloads need role auditor; {reader.name} is a viewer")
        heads = anchors.heads() if anchors is not None else None  # read outside the store's lock: it may do I/O
        with store.lock:
            found = queries.complete_trace(store.client, prediction_id, registry, catalog=catalog, trust=trust,
                                           payloads=reader.may(PAYLOAD_ROLE), chains=chains, anchor_heads=heads)
            if found is not None and raw:
                ids = [value for value in found["sources"].values() if value]
                found["raw_events"] = [
                    {"kind": e["kind"], "event_id": e["event_id"], "raw": queries.to_jsonable(bytes(e["raw"]))}
                    for e in queries.events_by_id(store.client, ids)
                ]
        if found is None:
            raise HTTPException(
                status_code=404,
                detail=f"no trace stored for prediction {prediction_id!r}; it may not be joined yet, "
                "or the id is wrong",
            )
        return found

    @app.get("/v1/predictions",
             summary="The predictions whose request carried a client or server request id or an OpenTelemetry "
             "trace id, or that a model (version) served in a time window, newest first")
    def get_predictions(
        reader: Viewer,
        request_id: Annotated[str | None, Query(min_length=1, max_length=1000,
                                                description="a V2 request id, x-request-id or ce-requestid")] = None,
        otel_trace_id: Annotated[str | None, Query(
            max_length=100, description="an OpenTelemetry trace id: 32 lower-case hex, from the request's "
            "traceparent")] = None,
        model: Annotated[str | None, Query(min_length=1, max_length=1000,
                                           description="a model name, or name@version")] = None,
        since: Annotated[datetime | None, Query(description="with model: traces made at or after (ISO 8601; "
                                                "without a zone, UTC)")] = None,
        until: Annotated[datetime | None, Query(description="with model: traces made at or before")] = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_PREDICTIONS_OF_MODEL,
                                    description="with model: at most this many, the newest")] = 100,
    ) -> dict[str, Any]:
        if sum(key is not None for key in (request_id, otel_trace_id, model)) != 1:
            raise HTTPException(status_code=400, detail="give exactly one of request_id, otel_trace_id and model")
        if model is not None:
            name, _, version = model.rpartition("@") if "@" in model else (model, "", "")
            if not name:
                raise HTTPException(status_code=400, detail=f"{model!r} names no model; write name or name@version")
            window = [t if t is None or t.tzinfo else t.replace(tzinfo=UTC) for t in (since, until)]
            with store.lock:
                served = queries.predictions_of_model(store.client, name, version or None, since=window[0],
                                                      until=window[1], limit=limit)
            return {"model": model, "prediction_ids": served.prediction_ids, "truncated": served.truncated}
        if otel_trace_id is not None:
            try:
                check_trace_id(otel_trace_id)
            except ValueError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from exc
            with store.lock:
                matches = queries.predictions_with_otel_trace_id(store.client, otel_trace_id)
            return {"otel_trace_id": otel_trace_id, "prediction_ids": matches.prediction_ids,
                    "traceparent_redacted": matches.redacted}
        assert request_id is not None
        with store.lock:
            found = queries.predictions_with_request_id(store.client, request_id)
        return {"request_id": request_id, "prediction_ids": found}

    @app.get("/v1/lineage/graph", summary="Up- or downstream of a node as a graph, with the predictions below it")
    def get_lineage_graph(
        reader: Viewer, node: Annotated[str, Query(description="kind:id, e.g. dataset:sha256:…, model:churn@3")] = "",
        direction: Annotated[str, Query(description="upstream or downstream")] = "",  # missing: 400, as malformed
        max_depth: int = queries.DEFAULT_MAX_DEPTH, limit: int = lineagegraph.DEFAULT_NODES,
    ) -> dict[str, Any]:
        try:
            with scans.client() as scan:  # registered before /v1/lineage/{direction}, which takes any word
                found = lineagegraph.graph(scan, node, direction, max_depth=max_depth, limit=limit)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if found is None:
            raise HTTPException(status_code=404, detail=f"no lineage node {node!r} is stored; check the id "
                                "(provline lineage upstream|downstream NODE walks from stored nodes)")
        return found

    @app.get("/v1/lineage/{direction}", summary="Walk lineage_edges upstream or downstream of a node")
    def get_lineage(
        direction: str, reader: Viewer,
        node: Annotated[str, Query(description="kind:id, e.g. dataset:sha256:…, model:churn@3")],
        kinds: Annotated[list[str] | None, Query(description="only these node kinds")] = None,
        max_depth: int = queries.DEFAULT_MAX_DEPTH, limit: int = queries.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        try:
            with store.lock:
                rows = queries.lineage(store.client, direction, node, kinds=kinds, max_depth=max_depth, limit=limit)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return {"direction": direction, "node": node, "nodes": rows}

    def filters(since: datetime | None, until: datetime | None, project: str, owner: str, limit: int) -> Filters:
        return Filters(since=since or queries.EPOCH, until=until or queries.FAR_FUTURE, project=project,
                       owner=owner, limit=limit)

    @app.get("/v1/runs", summary="Pipeline runs, filtered by start time, project and owner")
    def get_runs(
        reader: Viewer, since: datetime | None = None, until: datetime | None = None, project: str = "",
        owner: str = "", limit: int = queries.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        with store.lock:
            return {"runs": queries.runs(store.client, filters(since, until, project, owner, limit))}

    @app.get("/v1/models", summary="Registered model versions, filtered by time, project, owner, name")
    def get_models(
        reader: Viewer, since: datetime | None = None, until: datetime | None = None, project: str = "",
        owner: str = "", model: str = "", limit: int = queries.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        with store.lock:
            return {"models": queries.models(store.client, filters(since, until, project, owner, limit), model=model)}

    @app.get("/v1/models/{model_name}/overview",
             summary="One model's page: versions, evaluations, approvals, deployments, traffic and drift")
    def get_model_overview(
        model_name: str, reader: Viewer, since: datetime | None = None, until: datetime | None = None,
        window_s: int = modelpage.DEFAULT_WINDOW_S, limit: int = modelpage.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        try:
            request = modelpage.OverviewRequest.checked(model_name, since=since, until=until, window_s=window_s,
                                                        limit=limit)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        with scans.client() as scan:
            found = modelpage.overview(scan, request)
        if found is None:
            raise HTTPException(status_code=404, detail=f"nothing is stored for model {model_name!r}; check the "
                                "name (provline models lists the registered ones)")
        return found

    @app.get("/v1/drift/{model}", summary="Drift statistics of one model")
    def get_drift(
        model: str, reader: Viewer, version: str = "", since: datetime | None = None, until: datetime | None = None,
        project: str = "", breached_only: bool = False, limit: int = queries.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        with store.lock:
            rows = queries.drift(store.client, model, filters(since, until, project, "", limit), version=version,
                                 breached_only=breached_only)
        return {"model": model, "drift": rows}

    @app.get("/v1/performance/{model}", summary="Model performance per version and window, against its evaluation")
    def get_performance(model: str, reader: Viewer, version: str = "", refresh: bool = False) -> dict[str, Any]:
        with store.lock:
            if refresh:  # on demand: compute this model's windows now, as the monitor loop does each round
                monitor.compute_and_store(store.client, settings.monitoring, policy, model=model)
            rows = monitor.stored_performance(store.client, model, version=version)
        return {"model": model, "window_s": settings.monitoring.window_s,
                "performance": [queries.to_jsonable(row) for row in rows]}

    @app.post(SQL_PATH, summary="One read-only SQL statement (auditor: raw payloads too; admin: also access_log)")
    def post_sql(request: Request, body: SqlRequest, reader: Auditor) -> dict[str, Any]:
        sandbox = sandboxes[reader.role]
        try:
            with sandbox.turn():
                checked = sandbox.inspect(body.sql)
                request.state.sql_tables = list(checked.tables)
                return sandbox.execute(checked)
        except SqlBusyError as exc:
            retry = {"Retry-After": str(exc.retry_after_s)}
            raise HTTPException(status_code=429, detail=str(exc), headers=retry) from exc
        except (ReadOnlySqlError, SqlLimitError) as exc:
            raise HTTPException(status_code=400, detail=f"refused: {exc}") from exc
        except SqlQueryError as exc:
            raise HTTPException(status_code=400, detail=f"query failed: {exc}") from exc

    @app.get("/v1/evidence/{subject}", summary="An evidence bundle for a prediction id or MODEL@VERSION")
    def get_evidence(subject: str, reader: Auditor, format: str = "json") -> dict[str, Any]:
        try:
            with store.lock:
                gathered = evidence.gather(store.client, subject)
            files = evidence.build_bundle(gathered, format, catalog, signer=signer)
        except evidence.BundleError as exc:
            raise HTTPException(status_code=404 if "stored" in str(exc) else 400, detail=str(exc)) from exc
        return {"subject": subject, "format": format, "files": {n: queries.to_jsonable(d) for n, d in files.items()}}

    @app.get("/v1/verify", summary="Verify the stored events: bytes, chains, signatures, columns, derived rows")
    def get_verify(reader: Auditor, session: str = "") -> dict[str, Any]:
        return verification.run(catalog, trust, sessions=[session] if session else None,
                                reader=reader.name).as_dict()

    @app.post("/v1/verify", summary="Verify the store, also against anchors the caller has checked")
    def post_verify(body: VerifyRequest, reader: Auditor) -> dict[str, Any]:
        anchors = [(anchor.name, [AnchoredSession(s.session, s.count, s.head) for s in anchor.sessions])
                   for anchor in body.anchors]
        return verification.run(catalog, trust, sessions=[body.session] if body.session else None,
                                anchors=anchors, reader=reader.name).as_dict()

    @app.get("/v1/anchor", summary="Every session's event count and chain head, to anchor outside the store")
    def get_anchor(reader: Auditor) -> dict[str, Any]:
        return {"sessions": verification.heads()}

    @app.get("/v1/access-log", summary="The most recent audit API requests (admin)")
    def get_access_log(reader: Admin, limit: int = 100) -> dict[str, Any]:
        with store.lock:
            result = store.client.query(
                "SELECT * FROM access_log ORDER BY time DESC LIMIT {limit:UInt32}",
                parameters={"limit": max(1, min(limit, queries.MAX_LIMIT))},
            )
        rows = [queries.to_jsonable(list(row)) for row in result.result_rows]
        return {"columns": list(result.column_names), "rows": rows}

    @app.post(FEEDBACK_PATH, summary="Ground truth for predictions: one item, or a list of them (feedback_writer)")
    def post_feedback(
        request: Request, writer: FeedbackWriter,
        body: Annotated[Any, Body(description="an item {prediction_id | client_request_id, label, outcome, source, "
                                              "observed_time}, or a list of them")],
    ) -> JSONResponse:
        if emitter is None:
            raise HTTPException(status_code=503, detail="this serve publishes no feedback: it has no emitter")
        single = not isinstance(body, list)
        items = [body] if single else body
        if not single and len(items) > settings.feedback.max_batch:
            raise HTTPException(status_code=413, detail=f"a batch of {len(items)} items exceeds the "
                                f"{settings.feedback.max_batch} allowed; send smaller batches "
                                "(or raise PROVLINE_FEEDBACK__MAX_BATCH)")
        if not items:
            raise HTTPException(status_code=422, detail="an empty batch; send one item or a list of items")
        checked = check_items(items)
        valid = [fields for fields in checked if isinstance(fields, dict)]
        with store.lock:
            resolved = resolve_request_ids(store.client, [f["client_request_id"] for f in valid
                                                          if f["client_request_id"] is not None])
            known = known_predictions(store.client, [f["prediction_id"] for f in valid
                                                     if f["prediction_id"] is not None])
        results: list[dict[str, Any]] = []
        accepted: list[tuple[int, list[dict[str, Any]]]] = []  # (position in results, its events)
        for index, fields in enumerate(checked):
            if isinstance(fields, str):
                results.append({"index": index, "status": "invalid", "reason": fields})
                continue
            if fields["prediction_id"] is not None:
                targets = [fields["prediction_id"]] if fields["prediction_id"] in known else []
            else:
                targets = resolved.get(fields["client_request_id"], [])
            if not targets:
                which = "prediction_id" if fields["prediction_id"] is not None else "client_request_id"
                results.append({"index": index, "status": "not_found", "reason": f"no stored prediction has this "
                                f"{which}; check the id, or send it again once the prediction is stored"})
                continue
            accepted.append((len(results), [{**fields, "prediction_id": target} for target in targets]))
            results.append({"index": index, "status": "accepted", "prediction_ids": targets})
        sent = publish_durably(emitter, [event for _, events in accepted for event in events])
        if sent is None:
            raise HTTPException(status_code=503, detail="feedback could not be made durable in serve's spool (its "
                                "queue is full, or the disk is slow); nothing was answered accepted: send it again "
                                "later", headers={"Retry-After": "5"})
        ids = iter(event["event_id"] for event in sent)
        for position, events in accepted:
            results[position]["event_ids"] = [next(ids) for _ in events]
        counts = {status: sum(r["status"] == status for r in results)
                  for status in ("accepted", "not_found", "invalid")}
        if single:
            status = {"accepted": 202, "not_found": 404, "invalid": 422}[results[0]["status"]]
            return JSONResponse(status_code=status, content={**counts, "results": results})
        return JSONResponse(status_code=200, content={**counts, "results": results})

    app.include_router(console_router(lambda token: authenticate(settings, token)))

    @app.exception_handler(ClickHouseError)
    def store_error(request: Request, exc: ClickHouseError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"store unavailable: {exc}"})

    return app
