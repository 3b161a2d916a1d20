"""Joining an inference request with its response and lineage into a prediction trace.

Pure logic, no I/O. :func:`build_trace` gives the PredictionTrace fields (all but the envelope);
the ``Pending*`` functions are the per-prediction state machine the Faust join agent keeps in its
table. A pending entry is a JSON-able dict (it is the table's value):

``request`` / ``response``  the half's raw event bytes, base64, or None until it arrives
``partition``               the inference partition it came from (who owns it after a rebalance)
``held_since``              wall-clock seconds when both halves were present but lineage was not
``done``                    the trace was emitted; later duplicates of either half are ignored
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from enum import Enum
from typing import Any

from stream_processors.lineage import LineageIndex

REQUEST = "InferenceRequest"
RESPONSE = "InferenceResponse"
HALF_FIELD = {REQUEST: "request", RESPONSE: "response"}

PendingEntry = dict[str, Any]


def build_trace(
    request: Mapping[str, Any] | None, response: Mapping[str, Any] | None, lineage: LineageIndex
) -> dict[str, Any]:
    """The PredictionTrace field values (everything but the envelope) for one prediction.

    ``request`` and ``response`` are decoded InferenceRequest / InferenceResponse values; at least
    one must be given. The model is the version the response named, else the one deployed to the
    endpoint at request time (response time when there is no request). ``complete`` is true when
    both halves and the lineage (model version, its artifact, and its training run's code) are
    known; otherwise ``missing`` names the first thing absent: request, response, then lineage.
    """
    if request is None and response is None:
        raise ValueError("build_trace needs a request or a response; got neither")
    first = request if request is not None else response
    assert first is not None
    endpoint = str(first["endpoint"])
    at = request["event_time"] if request is not None else first["event_time"]

    deployed = lineage.deployment_at(endpoint, at)
    model_name = _first_not_none(
        response and response.get("model_name"), deployed and deployed.model_name,
        request and request.get("model_name"),
    )
    model_version = _first_not_none(
        response and response.get("model_version"), deployed and deployed.model_version,
        request and request.get("model_version"),
    )
    deployment = deployed
    if deployed is not None and (deployed.model_name, deployed.model_version) != (model_name, model_version):
        # the response named another version than the one deployed at request time (a canary, or
        # a rollout racing the request): credit the deployment that put that version there
        deployment = (
            lineage.last_deployment_of(endpoint, model_name, model_version, at)
            if model_name is not None and model_version is not None else None
        )

    model = lineage.model(model_name, model_version) if model_name and model_version else None
    code = lineage.code(model.run_id) if model is not None and model.run_id else None
    lineage_known = model is not None and (model.run_id is None or code is not None)

    missing: str | None = None
    if request is None:
        missing = "request"
    elif response is None:
        missing = "response"
    elif not lineage_known:
        missing = "lineage"

    return {
        "prediction_id": str(first["prediction_id"]),
        "endpoint": endpoint,
        "complete": missing is None,
        "missing": missing,
        "request_time": request["event_time"] if request is not None else None,
        "response_time": response["event_time"] if response is not None else None,
        "request_sha256": request["body_sha256"] if request is not None else None,
        "response_sha256": response["body_sha256"] if response is not None else None,
        "status": response["status"] if response is not None else None,
        "latency_us": response["latency_us"] if response is not None else None,
        "model_name": model_name,
        "model_version": model_version,
        "artifact_uri": model.artifact_uri if model is not None else None,
        "artifact_sha256": model.artifact_sha256 if model is not None else None,
        "training_run_id": model.run_id if model is not None else None,
        "code_repo": code.repo if code is not None else None,
        "code_commit": code.commit if code is not None else None,
        "dataset_digests": list(model.datasets) if model is not None else [],
        "feature_sets": list(model.feature_sets) if model is not None else [],
        "deployment_event_id": deployment.event_id if deployment is not None else None,
        "request_event_id": request["event_id"] if request is not None else None,
        "response_event_id": response["event_id"] if response is not None else None,
        "features": dict(request.get("features") or {}) if request is not None else {},
        "outputs": dict(response.get("outputs") or {}) if response is not None else {},
    }


def _first_not_none(*values: Any) -> Any:
    for value in values:
        if value:
            return value
    return None


class Step(Enum):
    """What the join agent does after a pending entry changed."""

    WAIT = "wait"  # a half is still missing, or the lineage may still arrive
    EMIT = "emit"  # emit the trace (complete, or incomplete because the wait is over) and mark done


def absorb(
    entry: PendingEntry | None, kind: str, raw: bytes, *, partition: int
) -> PendingEntry | None:
    """The entry with one more half, or None when nothing changes (a duplicate, or already done).

    A half seen twice keeps its first bytes: the first arrival is the one a trace is built from.
    """
    try:
        field = HALF_FIELD[kind]
    except KeyError:
        raise ValueError(f"{kind} is not a half of a prediction; expected {REQUEST} or {RESPONSE}") from None
    if entry is None:
        entry = {"request": None, "response": None, "partition": partition, "held_since": None, "done": False}
    if entry["done"] or entry[field] is not None:
        return None
    return {**entry, field: base64.b64encode(raw).decode("ascii")}


def halves(entry: PendingEntry) -> tuple[bytes | None, bytes | None]:
    """The raw request and response bytes of an entry."""
    return (
        base64.b64decode(entry["request"]) if entry["request"] is not None else None,
        base64.b64decode(entry["response"]) if entry["response"] is not None else None,
    )


def has_both_halves(entry: PendingEntry) -> bool:
    return entry["request"] is not None and entry["response"] is not None


def next_step(entry: PendingEntry, trace: Mapping[str, Any], *, now: float, wait_seconds: float) -> Step:
    """Emit once both halves are here and the lineage is known or has been waited for long enough."""
    if entry["done"] or not has_both_halves(entry):
        return Step.WAIT
    if trace["complete"]:
        return Step.EMIT
    held_since = entry["held_since"]
    if held_since is not None and now - held_since >= wait_seconds:
        return Step.EMIT
    return Step.WAIT


def hold(entry: PendingEntry, *, now: float) -> PendingEntry:
    """The entry marked as waiting for lineage (from the first time only)."""
    if entry["held_since"] is not None:
        return entry
    return {**entry, "held_since": now}


def is_held(entry: PendingEntry) -> bool:
    return not entry["done"] and entry["held_since"] is not None


def mark_done(entry: PendingEntry) -> PendingEntry:
    """The entry after its trace was emitted; the halves are dropped, the id is remembered."""
    return {**entry, "request": None, "response": None, "held_since": None, "done": True}
