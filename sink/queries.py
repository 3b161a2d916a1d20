"""Audit queries: traces, lineage walks, runs, models, drift and stored events (user SQL: ``sink/sandbox.py``).

The SQL text lives in ``sink/sql/*.sql``; the shaping of results is pure functions. Calls block on
the store; a client is not thread-safe, so callers serialise use of a shared one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from clickhouse_connect.driver.client import Client

from provline.schemas import Catalog
from provline.sink.anchor import AnchorHead
from provline.sink.chain import Checked, LedgerEntry, Record, anchored, build_chain, check_row, finish_record
from provline.sink.dead_letters import Link, gaps
from provline.sink.ingest import CONTENT_OF_PAYLOAD
from provline.sink.lineage import model_node, parse_node
from provline.sink.rows import TABLES, to_jsonable
from provline.sink.verify import Trust


@cache
def sql_file(name: str) -> str:
    return (resources.files("provline.sink") / "sql" / name).read_text(encoding="utf-8")


# Optional fields of PredictionTrace revisions after v1 (ground truth joined onto the trace):
# passed through, null when unset, when the stored payload carries them; absent from the answer
# for traces stored by writers of an older revision.
OPTIONAL_TRACE_FIELDS = ("label", "outcome", "feedback_source", "feedback_time", "feedback_event_id")
# What the trace event says of the exchange itself, shown as recorded (older traces lack some).
EXCHANGE_FIELDS = (
    "request_time", "response_time", "request_id", "deployment_event_id", "request_event_id", "response_event_id",
    "features", "outputs", "feature_rows", "output_rows", "row_count", "served_version",
)
MAX_PREDICTIONS_PER_REQUEST_ID = 100
MAX_PREDICTIONS_OF_MODEL = 1000
# A trace is a few one-granule point lookups: one thread per UNION ALL branch, no more.
TRACE_SETTINGS = {"max_threads": 2}


def newest(rows: list[dict[str, Any]], source: str) -> dict[str, Any] | None:
    """The newest of ``rows`` from ``source`` by (event_time, event_id); None when there is none."""
    candidates = [row for row in rows if row["source"] == source]
    return max(candidates, key=lambda row: (row["event_time"], row["event_id"])) if candidates else None


def joined_trace_row(
    prediction_rows: list[dict[str, Any]], registry_rows: list[dict[str, Any]], run_id: str | None
) -> dict[str, Any] | None:
    """The flat row :func:`shape_trace` reads, from the rows of ``trace.sql`` and ``trace_registry.sql``.

    ``run_id`` is the training run whose code reference counts (the trace's, else the model version's).
    """
    trace = newest(prediction_rows, "trace")
    if trace is None:
        return None
    request = newest(prediction_rows, "request") or {}
    feedback = newest(prediction_rows, "feedback") or {}
    model = newest(registry_rows, "model_version") or {}
    run = newest([row for row in registry_rows if row["run_id"] == run_id], "run") if run_id is not None else None
    run = run or {}
    return {
        "trace_event_id": trace["event_id"],
        "trace_payload": trace["payload_or_sha256"],
        "request_event_id": request.get("event_id"),
        "request_body_sha256": request.get("payload_or_sha256"),
        "feedback_payload": feedback.get("payload_or_sha256"),
        "model_version_event_id": model.get("event_id"),
        "model_artifact_uri": model.get("uri_or_repo"),
        "model_artifact_sha256": model.get("sha256_or_commit"),
        "model_run_id": model.get("run_id"),
        "model_datasets": model.get("datasets"),
        "run_event_id": run.get("event_id"),
        "run_code_repo": run.get("uri_or_repo"),
        "run_code_commit": run.get("sha256_or_commit"),
    }


def shape_trace(prediction_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """The audit view of one :func:`joined_trace_row`: registry records win over the trace's copies."""
    trace = json.loads(row["trace_payload"])
    model_found = row.get("model_version_event_id") is not None
    datasets = trace.get("dataset_digests") or (row.get("model_datasets") if model_found else None) or []
    shaped = {
        "prediction_id": prediction_id,
        "trace_event_id": row["trace_event_id"],
        "event_time": trace["event_time"],  # when the join built this revision of the trace
        "endpoint": trace["endpoint"],
        "complete": trace["complete"],
        "missing": trace.get("missing"),
        "status": trace.get("status"),
        "latency_us": trace.get("latency_us"),
        "request_sha256": trace.get("request_sha256"),
        "request_body_sha256": row.get("request_body_sha256"),
        "response_sha256": trace.get("response_sha256"),
        "model_name": trace.get("model_name"),
        "model_version": trace.get("model_version"),
        "artifact_uri": row.get("model_artifact_uri") or trace.get("artifact_uri"),
        "artifact_sha256": row.get("model_artifact_sha256") or trace.get("artifact_sha256"),
        "training_run_id": trace.get("training_run_id") or row.get("model_run_id"),
        "code_repo": row.get("run_code_repo") or trace.get("code_repo"),
        "code_commit": row.get("run_code_commit") or trace.get("code_commit"),
        "dataset_digests": list(datasets),
        "feature_sets": trace.get("feature_sets") or [],
        "sources": {
            "trace": row["trace_event_id"],
            "request": row.get("request_event_id") or None,
            "model_version": row.get("model_version_event_id") or None,
            "run": row.get("run_event_id") or None,
        },
    }
    shaped.update({name: trace.get(name) for name in EXCHANGE_FIELDS})
    shaped.update({name: trace[name] for name in OPTIONAL_TRACE_FIELDS if name in trace})
    if shaped.get("feedback_event_id") is None and row.get("feedback_payload"):
        # ground truth that came after the trace went out without a labelled copy (a trace joined
        # from an exchange frame keeps no join state to label): the newest Feedback stored
        feedback = json.loads(row["feedback_payload"])
        shaped.update({"label": feedback.get("label"), "outcome": feedback.get("outcome"),
                       "feedback_source": feedback.get("source"), "feedback_time": feedback.get("observed_time"),
                       "feedback_event_id": feedback.get("event_id")})
        shaped["sources"]["feedback"] = feedback.get("event_id")
    return shaped


def predictions_with_request_id(client: Client, request_id: str) -> list[str]:
    """The prediction ids whose trace carries ``request_id`` (the client's or server's own id), newest first."""
    result = client.query(
        "SELECT prediction_id FROM prediction_traces WHERE request_id = {request_id:String} "
        "GROUP BY prediction_id ORDER BY max(event_time) DESC LIMIT {limit:UInt32}",
        parameters={"request_id": request_id, "limit": MAX_PREDICTIONS_PER_REQUEST_ID}, settings=TRACE_SETTINGS,
    )
    return [str(row[0]) for row in result.result_rows]


@dataclass(frozen=True)
class ModelPredictions:
    """The newest predictions served by a model (version), and whether more matched than were asked for."""

    prediction_ids: list[str]
    truncated: bool


def predictions_of_model(client: Client, model_name: str, model_version: str | None = None, *,
                         since: datetime | None = None, until: datetime | None = None,
                         limit: int = MAX_PREDICTIONS_PER_REQUEST_ID) -> ModelPredictions:
    """The prediction ids traced to ``model_name`` (and ``model_version``), their traces made between
    ``since`` and ``until`` (inclusive), newest first, at most ``limit``. Reads prediction_index, sorted by
    model, version and day, so a version and a window prune it to the days asked for."""
    conditions = ["model_name = {name:String}"]
    parameters: dict[str, Any] = {"name": model_name, "limit": limit + 1}
    if model_version is not None:
        conditions.append("model_version = {version:String}")
        parameters["version"] = model_version
    for bound, operator, value in (("since", ">=", since), ("until", "<=", until)):
        if value is not None:
            conditions.append(f"event_time {operator} {{{bound}:DateTime64(6, 'UTC')}}")
            parameters[bound] = value.astimezone(UTC).replace(tzinfo=None)
    result = client.query(
        f"SELECT prediction_id FROM prediction_index WHERE {' AND '.join(conditions)} "
        "GROUP BY prediction_id ORDER BY max(event_time) DESC, prediction_id LIMIT {limit:UInt32}",
        parameters=parameters, settings=TRACE_SETTINGS,
    )
    found = [str(row[0]) for row in result.result_rows]
    return ModelPredictions(found[:limit], truncated=len(found) > limit)


@dataclass(frozen=True)
class OtelMatches:
    """The predictions whose request carried an OpenTelemetry trace id, and, when none did, whether
    stored requests have their traceparent redacted (``"hash"`` or ``"mask"``), which hides the id."""

    prediction_ids: list[str]
    redacted: str | None = None


def predictions_with_otel_trace_id(client: Client, trace_id: str) -> OtelMatches:
    """The prediction ids whose request's traceparent carries ``trace_id``, newest first.

    ``trace_id`` must already be checked (provline.schemas.tracecontext.check_trace_id). Reads the
    materialized ``otel_trace_id`` column through its bloom filter (migration 0010), not the payloads.
    """
    result = client.query(
        "SELECT prediction_id FROM inference_requests WHERE otel_trace_id = {trace_id:String} "
        "GROUP BY prediction_id ORDER BY max(event_time) DESC LIMIT {limit:UInt32}",
        parameters={"trace_id": trace_id, "limit": MAX_PREDICTIONS_PER_REQUEST_ID}, settings=TRACE_SETTINGS,
    )
    found = [str(row[0]) for row in result.result_rows]
    if found:
        return OtelMatches(found)
    redacted = client.query(
        "SELECT traceparent_form FROM inference_requests WHERE traceparent_form IN ('hash', 'mask') "
        "LIMIT 1", settings=TRACE_SETTINGS,
    ).result_rows
    return OtelMatches([], str(redacted[0][0]) if redacted else None)


def _trace_rows(client: Client, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    return list(client.query(sql_file(sql), parameters=parameters, settings=TRACE_SETTINGS).named_results())


# Row counts of the registry tables: answered from part metadata, without reading data.
REGISTRY_VERSION = "SELECT (SELECT count() FROM model_versions), (SELECT count() FROM run_events)"


class RegistryCache:
    """The registry rows of recent traces (``trace_registry.sql``), valid while the registry is unchanged.

    Registry events are only ever added, and every insert adds rows, so the cache is dropped
    whenever the registry tables' row counts change (a merge that collapses a redelivered copy
    changes them too; the cache is then dropped for nothing). Checking the counts reads no data,
    so a trace whose model is cached costs one point-lookup query instead of two. Not
    thread-safe: use it under the same lock as its client.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max_entries = max_entries
        self._version: tuple[Any, ...] | None = None
        self._rows: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def rows(self, client: Client, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        version = tuple(client.query(REGISTRY_VERSION).result_rows[0])
        if version != self._version:
            self._rows.clear()
            self._version = version
        key = tuple(sorted(parameters.items()))
        if key not in self._rows:
            if len(self._rows) >= self._max_entries:
                self._rows.clear()
            self._rows[key] = _trace_rows(client, "trace_registry.sql", parameters)
        return self._rows[key]


def _registry_rows(client: Client, parameters: dict[str, Any], cache: RegistryCache | None) -> list[dict[str, Any]]:
    if cache is None:
        return _trace_rows(client, "trace_registry.sql", parameters)
    return list(cache.rows(client, parameters))


def trace(
    client: Client, prediction_id: str, registry: RegistryCache | None = None, *,
    prediction_rows: list[dict[str, Any]] | None = None, registry_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The latest stored PredictionTrace of ``prediction_id`` joined with its request, model and run.

    None when no trace is stored. Every read is a point lookup on a table's ORDER BY prefix: one
    query by prediction id (traces, requests), one by model key and run id (registry; from
    ``registry`` when it holds them), and a third only when the trace names no training run and
    its model version does. ``prediction_rows``: the rows of ``trace.sql`` (or of a query with its columns
    first, as :func:`complete_trace` reads them), read already; ``registry_rows``: the registry's rows in
    ``trace_registry.sql``'s shape, known already (:func:`registry_rows_of`): no registry lookup is made.
    Blocks on the store; not thread-safe on a shared client.
    """
    if prediction_rows is None:
        prediction_rows = _trace_rows(client, "trace.sql", {"prediction_id": prediction_id})
    latest = newest(prediction_rows, "trace")
    if latest is None:
        return None
    payload = json.loads(latest["payload_or_sha256"])
    model_key = (payload.get("model_name"), payload.get("model_version"))
    if None in model_key:
        model_key = (None, None)
    run_id = payload.get("training_run_id")
    if registry_rows is not None:
        run_id = run_id or (newest(registry_rows, "model_version") or {}).get("run_id")
        row = joined_trace_row(prediction_rows, registry_rows, run_id)
        return None if row is None else shape_trace(prediction_id, row)
    registry_rows = []
    if model_key[0] is not None or run_id is not None:
        registry_rows = _registry_rows(client, {
            "model_name": model_key[0], "model_version": model_key[1], "run_id": run_id,
        }, registry)
    if run_id is None:
        run_id = (newest(registry_rows, "model_version") or {}).get("run_id")
        if run_id is not None:
            registry_rows += _registry_rows(client, {
                "model_name": None, "model_version": None, "run_id": run_id,
            }, registry)
    row = joined_trace_row(prediction_rows, registry_rows, run_id)
    return None if row is None else shape_trace(prediction_id, row)



# ---------------------------------------------------------------- the complete trace (issue 18)


@cache
def chain_sql(name: str) -> str:
    """A ``chain_*.sql`` with the ledger's payload digest (the one expression both must share) filled in and
    its comment lines left out (the client tokenises what it sends: a long comment costs on every call)."""
    text = sql_file(name).replace("{content}", CONTENT_OF_PAYLOAD)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


# The registry tables chain_registry.sql reads, and session_seals (the event before a registry record in
# its job's chain may be a seal). Their active parts change on every insert, merge and mutation (an ALTER
# UPDATE or DELETE, which is how a stored row is tampered with): the version of ChainCache, read from part
# metadata (chain_ledger.sql's 'parts' rows) without reading data.
REGISTRY_TABLES = ("model_versions", "evaluations", "decisions", "deployments", "run_events", "dataset_versions",
                   "feature_set_versions", "session_seals")


class ChainCache:
    """The verified registry records of recent complete traces (``chain_registry.sql`` and their ledger
    checks), valid while the registry tables' parts are unchanged.

    Every prediction of a model version rests on the same registry records; reading their bytes, decoding
    them, checking hashes and signatures and looking their ids and links up in the ledger is most of a
    complete trace's work. Kept per query keys, dropped whenever a registry table's (or session_seals')
    set of active parts changes: an insert, a merge, or a mutation (a row altered or deleted in place
    makes new parts), so a record tampered with after it was cached, or the event before it deleted, is
    checked again. The caller reads the parts' version in its own ledger query (:func:`chain_ledger`).
    Not thread-safe: use it under the same lock as its client.
    """

    def __init__(self, max_entries: int = 1_000) -> None:
        self._max_entries = max_entries
        self._version: tuple[Any, ...] | None = None
        self._records: dict[tuple[Any, ...], list[Record]] = {}

    def records(self, client: Client, parameters: dict[str, Any], catalog: Catalog, trust: Trust,
                version: tuple[Any, ...]) -> list[Record]:
        """The registry's verified records for ``parameters``, read when the registry's parts (``version``)
        changed since they were, or they were never read."""
        if version != self._version:
            self._records.clear()
            self._version = version
        key = self._key(parameters)
        if key not in self._records:
            if len(self._records) >= self._max_entries:
                self._records.clear()
            self._records[key] = verified_registry_records(client, parameters, catalog, trust)
        return self._records[key]

    def sessions(self, parameters: dict[str, Any]) -> set[str]:
        """The producer sessions of the records cached for ``parameters`` when they were last read (maybe
        stale: for looking up their anchors' heads ahead, in the query that reads the version)."""
        return {r.session for r in self._records.get(self._key(parameters), [])}

    @staticmethod
    def _key(parameters: dict[str, Any]) -> tuple[Any, ...]:
        return tuple((name, tuple(value) if isinstance(value, list) else value)
                     for name, value in sorted(parameters.items()))


def _unique_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per event id (a redelivered copy not merged away yet is the same event)."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        found.setdefault(str(row["event_id"]), row)
    return list(found.values())


def prediction_records(client: Client, prediction_id: str) -> list[dict[str, Any]]:
    """Step 1: the prediction's own rows with their bytes (``chain_prediction.sql``); also what :func:`trace` reads."""
    result = client.query(chain_sql("chain_prediction.sql"), parameters={"prediction_id": prediction_id},
                          settings=TRACE_SETTINGS, column_formats={"raw": "bytes"})
    return list(result.named_results())


def registry_records(client: Client, parameters: dict[str, Any], catalog: Catalog, trust: Trust) -> list[Checked]:
    """Step 2: the registry records behind a trace (``chain_registry.sql``), each checked against its bytes."""
    result = client.query(chain_sql("chain_registry.sql"), parameters=parameters, settings=TRACE_SETTINGS,
                          column_formats={"raw": "bytes"})
    return [check_row(catalog, trust, row) for row in _unique_rows(result.named_results())]


def verified_registry_records(client: Client, parameters: dict[str, Any], catalog: Catalog,
                              trust: Trust) -> list[Record]:
    """Steps 2 and 3 for the registry records: read and checked against their bytes, then the ledger."""
    checked = registry_records(client, parameters, catalog, trust)
    return finished(client, checked, trust, chain_ledger(client, checked)) if checked else []


def registry_parameters(trace_value: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keys of step 2 from the newest trace; None without a model. The model version's own run,
    datasets and feature sets are looked up by ``chain_registry.sql`` itself."""
    name, version = trace_value.get("model_name"), trace_value.get("model_version")
    if not name or not version:
        return None
    return {
        "model_name": name, "model_version": version, "subject": model_node(name, version),
        "run_ids": [trace_value["training_run_id"]] if trace_value.get("training_run_id") else [],
        "digests": sorted(set(trace_value.get("dataset_digests") or [])),
        "feature_sets": sorted(set(trace_value.get("feature_sets") or [])),
    }


def registry_rows_of(records: Iterable[Record], model_name: str, model_version: str) -> list[dict[str, Any]]:
    """The rows ``trace_registry.sql`` would return, from the registry records of a complete trace (decoded
    from their bytes): the model version's, and the runs' that carry a code reference."""
    rows: list[dict[str, Any]] = []
    for r in records:
        value = r.fields
        if (r.kind == "ModelVersion" and value.get("model_name") == model_name
                and value.get("version") == model_version):
            rows.append({"source": "model_version", "event_id": r.event_id, "event_time": r.event_time,
                         "uri_or_repo": value.get("artifact_uri"), "sha256_or_commit": value.get("artifact_sha256"),
                         "run_id": value.get("run_id"), "datasets": value.get("datasets") or []})
        elif r.kind == "RunEvent" and (value.get("code") or {}).get("commit") is not None:
            rows.append({"source": "run", "event_id": r.event_id, "event_time": r.event_time,
                         "uri_or_repo": value["code"].get("repo"), "sha256_or_commit": value["code"]["commit"],
                         "run_id": value.get("run_id"), "datasets": []})
    return rows


@dataclass(frozen=True)
class LedgerAnswer:
    """What :func:`chain_ledger` found: per event id its ledger rows, the (session, hash) pairs recorded,
    and the registry tables' parts (a version: see :class:`ChainCache`), when asked for."""

    entries: dict[str, list[LedgerEntry]]
    recorded: set[tuple[str, str]]
    parts: tuple[tuple[str, ...], ...] = ()


def chain_ledger(client: Client, records: Sequence[Checked], *, parts: bool = False,
                 heads: Iterable[tuple[str, str]] = ()) -> LedgerAnswer:
    """Step 3: what the ledger holds of ``records``: their ids' ledger rows, and which (session, prev_hash)
    links it has recorded, and which (session, hash) ``heads``; with ``parts``, the registry tables' parts
    too. One query (``chain_ledger.sql``), point lookups by id and by (session, hash), and part metadata."""
    links = sorted({(r.session, r.prev_hash) for r in records if r.prev_hash} | set(heads))
    result = client.query(chain_sql("chain_ledger.sql"), parameters={
        "event_ids": sorted({r.event_id for r in records}), "links": links,
        "tables": list(REGISTRY_TABLES) if parts else [],
    }, settings=TRACE_SETTINGS)
    entries: dict[str, list[LedgerEntry]] = {}
    recorded: set[tuple[str, str]] = set()
    found_parts = []
    for what, event_id, hash_, session, content_digest, content_sha256, inserted in result.result_rows:
        if what == "self":
            entries.setdefault(str(event_id), []).append(LedgerEntry(str(hash_), str(content_digest),
                                                                     str(content_sha256), inserted))
        elif what == "link":
            recorded.add((str(session), str(hash_)))
        else:
            found_parts.append(tuple(str(x) for x in (event_id, hash_, session, content_digest, content_sha256)))
    return LedgerAnswer(entries, recorded, tuple(sorted(found_parts)))


def dead_lettered(client: Client, links: Iterable[Link]) -> dict[Link, str]:
    """Of the (session, hash) ``links``, those whose event was dead-lettered and never stored, with how its dead
    letter names itself (:func:`provline.sink.dead_letters.gaps`). One query (``dead_lettered.sql``)."""
    links = sorted(set(links))
    if not links:
        return {}
    result = client.query(chain_sql("dead_lettered.sql"), parameters={
        "hashes": sorted({event_hash for _, event_hash in links}), "links": links}, settings=TRACE_SETTINGS)
    return gaps(links, result.result_rows)


def finished(client: Client, checked: Sequence[Checked], trust: Trust, ledger: LedgerAnswer) -> list[Record]:
    """Step 3 done: each record with what the ledger says of it; a link the ledger lacks is looked up in the
    dead letters (a query only then)."""
    unrecorded = {(r.session, r.prev_hash) for r in checked if r.prev_hash and (r.session, r.prev_hash)
                  not in ledger.recorded}
    letters = dead_lettered(client, unrecorded)
    return [finish_record(r, trust, ledger.entries.get(r.event_id, []),
                          (r.session, r.prev_hash or "") in ledger.recorded,
                          letters.get((r.session, r.prev_hash or ""))) for r in checked]


def with_anchors(client: Client, records: list[Record], heads: Mapping[str, AnchorHead],
                 looked_up: Iterable[tuple[str, str]], recorded: set[tuple[str, str]]) -> list[Record]:
    """``records`` with their anchor status (:func:`provline.sink.chain.anchored`) against ``heads``;
    ``looked_up``: heads :func:`chain_ledger` already looked for (``recorded``: found), the others are
    looked for now (one query)."""
    wanted = {(r.session, heads[r.session].head) for r in records if r.session in heads}
    missing = wanted - set(looked_up)
    if missing:
        recorded = recorded | chain_ledger(client, [], heads=missing).recorded
    return [anchored(r, heads.get(r.session), r.session in heads and (r.session, heads[r.session].head) in recorded)
            for r in records]


def complete_trace(
    client: Client, prediction_id: str, registry: RegistryCache | None = None, *, catalog: Catalog,
    trust: Trust, payloads: bool = False, chains: ChainCache | None = None,
    anchor_heads: Mapping[str, AnchorHead] | None = None,
) -> dict[str, Any] | None:
    """:func:`trace` with the whole chain of custody under ``"chain"`` (:func:`provline.sink.chain.build_chain`),
    each record checked against its bytes, the ledger and ``trust``, and with ``anchor_heads`` (from an
    :class:`~provline.sink.anchor.AnchorBook`) against the newest anchor of its session; ``payloads``:
    include the raw request and response bodies (roles that may see payloads). None when no trace is stored.

    Point lookups only: the prediction's rows with their bytes (one query, which :func:`trace` reads
    too, in place of ``trace.sql``); their ledger entries, with the registry's part metadata for
    ``chains`` (one query); the registry records and their ledger entries (two queries, or from
    ``chains`` while the registry's parts are unchanged), which :func:`trace` reads too, in place of
    ``trace_registry.sql``: two queries in all while they are cached. Blocks on the store; not
    thread-safe on a shared client.
    """
    rows = prediction_records(client, prediction_id)
    newest_trace = newest(rows, "trace")
    if newest_trace is None:
        return None
    own = [check_row(catalog, trust, row) for row in _unique_rows(rows)]
    latest = next(r for r in own if r.event_id == newest_trace["event_id"])
    # the trace's bytes, else (they do not decode: shown as altered) the stored payload, as trace() reads it
    parameters = registry_parameters(latest.value or json.loads(newest_trace["payload_or_sha256"]))
    heads = anchor_heads or {}
    # the anchored heads of the prediction's sessions and of its cached registry records' (known ahead)
    sessions = {r.session for r in own}
    if chains is not None and parameters is not None and heads:
        sessions |= chains.sessions(parameters)
    looked_up = {(session, heads[session].head) for session in sessions if session in heads}
    ledger = chain_ledger(client, own, parts=chains is not None and parameters is not None, heads=looked_up)
    behind: list[Record] = []
    if parameters is None:
        found = trace(client, prediction_id, registry, prediction_rows=rows)
    else:
        behind = (chains.records(client, parameters, catalog, trust, ledger.parts) if chains is not None
                  else verified_registry_records(client, parameters, catalog, trust))
        found = trace(client, prediction_id, prediction_rows=rows, registry_rows=registry_rows_of(
            behind, parameters["model_name"], parameters["model_version"]))
    if found is None:
        return None
    records = finished(client, own, trust, ledger) + behind
    if anchor_heads is not None:
        records = with_anchors(client, records, heads, looked_up, ledger.recorded)
    found["chain"] = build_chain(prediction_id, records, payloads=payloads)
    return found


# ---------------------------------------------------------------- lineage, runs, models, drift

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
DEFAULT_MAX_DEPTH = 12
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)
DIRECTIONS = ("upstream", "downstream")


@dataclass(frozen=True)
class Filters:
    """Time window and owner/project filters shared by runs, models and drift ('' = any)."""

    since: datetime = EPOCH
    until: datetime = FAR_FUTURE
    project: str = ""
    owner: str = ""
    limit: int = DEFAULT_LIMIT

    def parameters(self) -> dict[str, Any]:
        return {
            "since": self.since, "until": self.until, "project": self.project, "owner": self.owner,
            "limit": max(1, min(self.limit, MAX_LIMIT)),
        }


def _rows(client: Client, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [to_jsonable(dict(row)) for row in result.named_results()]


def lineage(
    client: Client, direction: str, node: str, *, kinds: list[str] | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH, limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """Nodes up- or downstream of ``node`` (``kind:id``) with depth, edge and the node it came via.

    Raises ValueError for an unknown direction or a malformed node. Blocks on one query.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is neither 'upstream' nor 'downstream'")
    parse_node(node)
    return _rows(client, sql_file(f"lineage_{direction}.sql"), {
        "node": node, "kinds": list(kinds or []), "max_depth": max(1, max_depth),
        "limit": max(1, min(limit, MAX_LIMIT)),
    })


def runs(client: Client, filters: Filters) -> list[dict[str, Any]]:
    return _rows(client, sql_file("runs.sql"), filters.parameters())


def models(client: Client, filters: Filters, *, model: str = "") -> list[dict[str, Any]]:
    return _rows(client, sql_file("models.sql"), {**filters.parameters(), "model": model})


def drift(
    client: Client, model: str, filters: Filters, *, version: str = "", breached_only: bool = False
) -> list[dict[str, Any]]:
    return _rows(client, sql_file("drift.sql"), {
        **{k: v for k, v in filters.parameters().items() if k != "owner"},
        "model": model, "version": version, "breached_only": breached_only,
    })


# ---------------------------------------------------------------- stored events, for verify and export

STORED_EVENT_COLUMNS = "event_id, producer_session, producer_name, hash, prev_hash, raw"


def stored_events_sql(where: str, columns: str = STORED_EVENT_COLUMNS) -> str:
    """Every event table's ``(kind, table, <columns>)`` under one WHERE (deduplicated: FINAL)."""
    parts = [
        f"SELECT '{kind}' AS kind, '{spec.table}' AS table, {columns} FROM {spec.table} FINAL WHERE {where}"
        for kind, spec in sorted(TABLES.items())
    ]
    return "\nUNION ALL\n".join(parts)


def events_by_id(client: Client, event_ids: list[str]) -> list[dict[str, Any]]:
    if not event_ids:
        return []
    result = client.query(
        f"SELECT * FROM ({stored_events_sql('event_id IN {ids:Array(String)}')}) ORDER BY event_id",
        parameters={"ids": sorted(set(event_ids))}, column_formats={"raw": "bytes"},
    )
    return list(result.named_results())
