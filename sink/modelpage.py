"""The model page's data: one model's versions, evaluations, approvals, deployment timeline,
traffic per version and drift per feature, in one answer (``GET /v1/models/{name}/overview``).

Three queries, each on its tables' ORDER BY prefix: the registry records (``model_registry.sql``),
the traffic per window (``model_traffic.sql``, over ``prediction_index``) and the drift rows
(``drift.sql``, as ``/v1/drift`` reads them). Shaping the rows is pure (:func:`shape_overview`).

Answers are bounded: each section holds at most ``limit`` rows (:data:`DEFAULT_LIMIT`, at most
:data:`MAX_LIMIT`): versions, evaluations, approvals and deployments the newest ``limit`` events
(an evaluation shows a row per metric), traffic and drift the oldest ``limit`` rows at or after
``since``. ``truncated`` names the sections that were cut; narrow them with ``since`` and ``until``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from provline.sink import queries
from provline.sink.rows import utc

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
DEFAULT_WINDOW_S = 3600  # traffic windows: hourly
MIN_WINDOW_S = 60
MAX_WINDOW_S = 31 * 24 * 3600
MAX_MODEL_NAME_CHARS = 1000
REGISTRY_SECTIONS = {"version": "versions", "evaluation": "evaluations", "approval": "approvals",
                     "deployment": "deployments"}
SECTIONS = (*REGISTRY_SECTIONS.values(), "traffic", "drift")
# Deployment actions that put their version on the endpoint; RETIRE takes it off.
RETIRE = "RETIRE"


def iso(value: datetime) -> str:
    return utc(value).isoformat()


@dataclass(frozen=True)
class OverviewRequest:
    """What a model page asks for; :meth:`checked` refuses what cannot be answered (ValueError)."""

    model_name: str
    since: datetime = queries.EPOCH
    until: datetime = queries.FAR_FUTURE
    window_s: int = DEFAULT_WINDOW_S
    limit: int = DEFAULT_LIMIT

    @classmethod
    def checked(cls, model_name: str, *, since: datetime | None = None, until: datetime | None = None,
                window_s: int = DEFAULT_WINDOW_S, limit: int = DEFAULT_LIMIT) -> OverviewRequest:
        """The request, or ValueError saying which argument is wrong and what would do. Pure."""
        if not model_name.strip():
            raise ValueError("the model name is empty; give the name models are registered under, e.g. churn")
        if len(model_name) > MAX_MODEL_NAME_CHARS:
            raise ValueError(f"a model name of {len(model_name)} characters exceeds {MAX_MODEL_NAME_CHARS}; "
                             "no model is registered under such a name")
        if not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
            raise ValueError(f"window_s={window_s} is outside {MIN_WINDOW_S}..{MAX_WINDOW_S} seconds; "
                             f"e.g. 3600 for hourly traffic")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit={limit} is outside 1..{MAX_LIMIT} rows per section")
        start, end = utc(since or queries.EPOCH), utc(until or queries.FAR_FUTURE)
        if start >= end:
            raise ValueError(f"since ({start.isoformat()}) is not before until ({end.isoformat()})")
        return cls(model_name=model_name, since=start, until=end, window_s=window_s, limit=limit)


def overview(client: Client, request: OverviewRequest) -> dict[str, Any] | None:
    """The model page of ``request.model_name``; None when nothing at all is stored for it.

    Blocks on three queries; not thread-safe on a shared client (hold its lock).
    """
    wanted = request.limit + 1  # one more than shown: a section that fills it was cut
    registry = list(client.query(queries.sql_file("model_registry.sql"), parameters={
        "model": request.model_name, "subject_prefix": f"model:{request.model_name}@", "limit": wanted,
    }).named_results())
    traffic = list(client.query(queries.sql_file("model_traffic.sql"), parameters={
        "model": request.model_name, "since": request.since, "until": request.until,
        "window_s": request.window_s, "limit": wanted,
    }).named_results())
    drift = queries.drift(client, request.model_name, queries.Filters(
        since=request.since, until=request.until, limit=wanted))
    return shape_overview(request.model_name, registry, traffic, drift, limit=request.limit)


def shape_overview(model_name: str, registry: list[dict[str, Any]], traffic: list[dict[str, Any]],
                   drift: list[dict[str, Any]], *, limit: int) -> dict[str, Any] | None:
    """The overview answer from the rows of the three queries; None when all are empty. Pure.

    ``registry`` rows are ``model_registry.sql``'s (newest first per source, at most ``limit`` + 1
    each), ``traffic`` ``model_traffic.sql``'s, ``drift`` :func:`queries.drift`'s (both oldest first).
    """
    if not (registry or traffic or drift):
        return None
    by_source: dict[str, list[dict[str, Any]]] = {source: [] for source in REGISTRY_SECTIONS}
    for row in registry:
        by_source[row["source"]].append(row)
    truncated = [REGISTRY_SECTIONS[source] for source, rows in by_source.items() if len(rows) > limit]
    kept = {source: _oldest_first(rows[:limit]) for source, rows in by_source.items()}
    truncated += [name for name, rows in (("traffic", traffic), ("drift", drift)) if len(rows) > limit]
    return {
        "model_name": model_name,
        "versions": versions(kept["version"]),
        "evaluations": evaluations(kept["evaluation"]),
        "approvals": approvals(kept["approval"]),
        "deployments": with_previous_versions(deployments(kept["deployment"])),
        "traffic": [{"window_start": iso(row["window_start"]), "version": row["version"],
                     "predictions": int(row["predictions"])} for row in traffic[:limit]],
        "drift": [{"feature": row["feature"], "window_start": _iso_text(row["window_start"]),
                   "version": row["model_version"], "statistic": row["metric"], "value": row["value"],
                   "threshold": row["threshold"], "breached": bool(row["breached"])} for row in drift[:limit]],
        "truncated": [name for name in SECTIONS if name in truncated],
    }


def _oldest_first(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (utc(row["event_time"]), row["event_id"]))


def _iso_text(value: Any) -> str:
    """A time that :func:`queries.drift` already made JSON-able (naive ISO text, UTC), with its offset."""
    return iso(datetime.fromisoformat(value)) if isinstance(value, str) else iso(value)


def versions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per version, oldest registration first: the newest ModelVersion event of it (a version
    registered again keeps its first registration time, as ``/v1/models`` does). Pure."""
    newest: dict[str, dict[str, Any]] = {}
    first: dict[str, datetime] = {}
    for row in rows:  # oldest first: a later event of the version replaces the earlier
        newest[row["version"]] = row
        first.setdefault(row["version"], utc(row["event_time"]))
    return [{"version": version, "artifact_sha256": row["artifact_sha256"], "run_id": row["run_id"] or None,
             "registered_at": iso(first[version]), "event_id": row["event_id"]}
            for version, row in sorted(newest.items(), key=lambda item: (first[item[0]], item[0]))]


def evaluations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per metric of each Evaluation, in time order, with its threshold. ``passed`` is the metric's
    result as recorded; a metric with a threshold but no result of its own takes the evaluation's; one
    without a threshold was not judged (None). An evaluation that recorded no metric is one row with
    ``metric`` None and the evaluation's result. Pure."""
    shaped: list[dict[str, Any]] = []
    for row in rows:
        payload = json.loads(row["payload"])
        overall = bool(payload.get("passed"))
        common = {"version": row["version"], "event_time": iso(row["event_time"]), "event_id": row["event_id"]}
        metrics = payload.get("metrics") or [{"name": None, "value": None, "threshold": None, "passed": overall}]
        for metric in metrics:
            passed = metric.get("passed")
            if passed is None and metric.get("threshold") is not None:
                passed = overall
            shaped.append({**common, "metric": metric.get("name"), "value": metric.get("value"),
                           "threshold": metric.get("threshold"), "passed": None if passed is None else bool(passed)})
    return shaped


def approvals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Decisions on the model's versions (approvals and rejections), in time order. Pure."""
    shaped = []
    for row in rows:
        payload = json.loads(row["payload"])
        shaped.append({"version": row["version"], "actor": payload.get("actor"), "role": payload.get("role"),
                       "decision": payload.get("outcome"), "transition": payload.get("transition"),
                       "rationale": payload.get("rationale"), "event_time": iso(row["event_time"]),
                       "event_id": row["event_id"]})
    return shaped


def deployments(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployment events, in time order, with the previous version they state (None if unstated). Pure."""
    shaped = []
    for row in rows:
        payload = json.loads(row["payload"])
        shaped.append({"event_time": iso(row["event_time"]), "version": row["version"],
                       "action": payload.get("action"), "environment": payload.get("environment"),
                       "endpoint": payload.get("endpoint"), "previous_version": payload.get("previous_version"),
                       "event_id": row["event_id"]})
    return shaped


def with_previous_versions(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The timeline with ``previous_version`` filled in where the event did not state it. Pure.

    ``previous_version`` is the version in force on the same environment and endpoint just before the
    event: as the event states it (``provline promote`` records it), else as the earlier events of the
    timeline give it. Every action but RETIRE leaves its version in force; RETIRE leaves none (a
    RETIRE's previous version is the one it took off). ``timeline`` must be in time order.
    """
    in_force: dict[tuple[Any, Any], str | None] = {}
    filled = []
    for entry in timeline:
        place = (entry["environment"], entry["endpoint"])
        previous = entry["previous_version"] if entry["previous_version"] is not None else in_force.get(place)
        filled.append({**entry, "previous_version": previous})
        if entry["action"] == RETIRE:
            if in_force.get(place) == entry["version"]:
                in_force[place] = None
        else:
            in_force[place] = entry["version"]
    return filled
