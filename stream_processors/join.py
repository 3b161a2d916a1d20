"""Joining an inference request with its response and lineage into a prediction trace.

Pure logic, no I/O. :func:`build_trace` gives the PredictionTrace fields (all but the envelope);
the rest is the per-prediction state machine the join agent keeps in its table. A pending entry
is a small JSON-able dict (the table's value):

``p``      the inference partition it came from (who owns it after a rebalance)
``q``/``r`` the request / response half, trimmed by :func:`summarize`, or absent
``s``      wall-clock seconds when the first half arrived (the time-to-live runs from here)
``h``      wall-clock seconds since when both halves wait for lineage, or absent
``d``      wall-clock seconds when the trace was emitted: the entry is then a done marker that
           makes later duplicates of either half no-ops until it is forgotten; it keeps no halves,
           unless its trace went out still missing a link (lineage, deployment): then it keeps
           both, and the first lineage change that completes the trace sends a completed revision
           (:func:`complete_late`, :func:`completed_event_id`)
``m``/``v`` model name and version of the emitted trace
``t``      on a done marker: the emitted trace's fields, so late feedback can be joined to them
``b``      Feedback summaries (:func:`summarize_feedback`) not yet applied to a trace
``f``      event ids of the Feedback seen for this prediction (a redelivered one is a no-op)

An entry may hold only feedback (no halves yet, or its done marker was already forgotten): it
waits up to the retention for a half, then is dropped. Feedback seen before the trace is emitted
rides on that trace (the newest by observed time); feedback for a done prediction yields a
labelled copy of the trace whose event id is derived from the Feedback's
(:func:`labelled_event_id`), so a redelivered Feedback collapses in the sink as well.

A trace's event id is derived from the prediction id (:func:`trace_event_id`), so a trace
re-emitted after a crash (its done marker was lost with the worker) carries the same id as the
first one, and the sink's dedup by event id collapses the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Required, TypedDict

from provline.schemas.events import stable_event_id
from provline.stream_processors.lineage import LineageIndex, to_micros
from provline.stream_processors.signature import named_row

REQUEST = "InferenceRequest"
RESPONSE = "InferenceResponse"
FEEDBACK = "Feedback"
HALF_KINDS = frozenset({REQUEST, RESPONSE})

Half = dict[str, Any]  # a request or response as :func:`summarize` keeps it


class FeedbackSummary(TypedDict):
    """A Feedback event as a pending entry keeps it (:func:`summarize_feedback`)."""

    event_id: str
    prediction_id: str
    label: str | None
    outcome: float | None
    source: str
    observed_time: int  # UTC microseconds
    event_time: int


class PendingEntry(TypedDict, total=False):
    """One prediction's state in the join table, stored as this compact JSON (see the module docstring)."""

    p: Required[int]  # the inference partition it came from
    s: float  # wall-clock seconds when the first half (or, without halves, the first feedback) arrived
    q: Half  # the request half
    r: Half  # the response half
    h: float  # since when both halves wait for lineage
    d: float  # when the trace was emitted: a done marker
    m: str | None  # the emitted trace's model name
    v: str | None  # and version
    t: dict[str, Any]  # on a done marker: the emitted trace's fields
    b: list[FeedbackSummary]  # feedback not yet applied to a trace
    f: list[str]  # event ids of the feedback seen

_REQUEST_FIELDS = (
    "event_id", "prediction_id", "endpoint", "model_name", "model_version", "body_sha256", "features",
    "feature_rows", "row_count", "request_id", "mlflow_model_uuid",
)
_RESPONSE_FIELDS = (
    "event_id", "prediction_id", "endpoint", "model_name", "model_version", "body_sha256", "status",
    "latency_us", "outputs", "output_rows", "request_id", "mlflow_model_uuid",
)


def summarize(kind: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a decoded half a trace needs, JSON-able (``event_time`` in UTC microseconds).

    Dropping the body keeps the table small: a trace carries only the body's SHA-256.
    """
    names: tuple[str, ...]
    if kind == REQUEST:
        names = _REQUEST_FIELDS
    elif kind == RESPONSE:
        names = _RESPONSE_FIELDS
    else:
        raise ValueError(f"{kind} is not a half of a prediction; expected {REQUEST} or {RESPONSE}")
    half = {name: value.get(name) for name in names}
    half["event_time"] = to_micros(value["event_time"])
    return half


MAX_REMEMBERED_FEEDBACK = 16  # ids kept per prediction to swallow redelivered Feedback


def summarize_feedback(value: Mapping[str, Any]) -> FeedbackSummary:
    """The fields of a decoded Feedback a labelled trace needs, JSON-able (times in UTC microseconds)."""
    return {
        "event_id": str(value["event_id"]), "prediction_id": str(value["prediction_id"]),
        "label": value.get("label"), "outcome": value.get("outcome"), "source": str(value.get("source")),
        "observed_time": _micros(value["observed_time"]), "event_time": _micros(value["event_time"]),
    }


def _micros(value: Any) -> int:
    micros = to_micros(value)
    if micros is None:
        raise ValueError("a Feedback event needs event_time and observed_time")
    return micros


def label_fields(feedback: FeedbackSummary) -> dict[str, Any]:
    """The PredictionTrace (v2) fields that carry one Feedback's ground truth."""
    return {
        "label": feedback.get("label"), "outcome": feedback.get("outcome"),
        "feedback_source": feedback.get("source"), "feedback_time": feedback.get("observed_time"),
        "feedback_event_id": feedback.get("event_id"),
    }


def _feedback_order(feedback: FeedbackSummary) -> tuple[int, str]:
    return int(feedback.get("observed_time") or 0), str(feedback.get("event_id"))


def newest_feedback(entry: PendingEntry) -> FeedbackSummary | None:
    """The pending Feedback a trace emitted now carries: the latest observed (ties: the larger id)."""
    waiting = entry.get("b") or []
    return max(waiting, key=_feedback_order) if waiting else None


def absorb_feedback(entry: PendingEntry | None, feedback: FeedbackSummary, *, partition: int,
                    now: float) -> PendingEntry | None:
    """The entry with one more Feedback waiting to be applied, or None for a Feedback already seen."""
    event_id = feedback["event_id"]
    if entry is None:
        return {"p": partition, "s": now, "b": [feedback], "f": [event_id]}
    seen = entry.get("f") or []
    if event_id in seen:
        return None
    return {**entry, "b": [*(entry.get("b") or []), feedback], "f": [*seen, event_id][-MAX_REMEMBERED_FEEDBACK:]}


def apply_late_feedback(entry: PendingEntry) -> tuple[PendingEntry, list[tuple[str, dict[str, Any]]]]:
    """For a done marker with pending Feedback: the marker without it, and the labelled traces to send.

    Each labelled trace is the emitted trace's fields plus one Feedback's ground truth, with its
    event id (:func:`labelled_event_id`); oldest observation first, so the newest is sent last.
    """
    if not is_done(entry):
        raise ValueError("late feedback applies to a done marker only; a pending trace carries its feedback")
    waiting = sorted(entry.get("b") or [], key=_feedback_order)
    if not waiting:
        return entry, []
    if entry.get("t") is None:
        raise ValueError("the done marker keeps no trace to label; it was written by an older worker")
    labelled = []
    trace = entry["t"]
    for feedback in waiting:
        trace = {**entry["t"], **label_fields(feedback)}
        labelled.append((labelled_event_id(str(trace["prediction_id"]), feedback), trace))
    rest = without_feedback(entry)
    rest["t"] = trace
    return rest, labelled


def without_feedback(entry: PendingEntry) -> PendingEntry:
    """A copy of ``entry`` without its pending feedback."""
    rest = PendingEntry(**entry)
    rest.pop("b", None)
    return rest


def labelled_event_id(prediction_id: str, feedback: FeedbackSummary) -> str:
    """A labelled trace's event id: a pure function of the prediction and the Feedback's event id."""
    return stable_event_id("provline-labelled-trace", f"{prediction_id}\x00{feedback['event_id']}",
                           int(feedback["event_time"]))


def build_trace(
    request: Mapping[str, Any] | None, response: Mapping[str, Any] | None, lineage: LineageIndex
) -> dict[str, Any]:
    """The PredictionTrace field values (everything but the envelope) for one prediction.

    ``request`` and ``response`` are decoded InferenceRequest / InferenceResponse values; at least
    one must be given. The model is the version the response named, else the one deployed to the
    endpoint at request time (response time when there is no request), resolved to its registered
    version (a server may report one of the ModelVersion's ``served_versions``; the trace then keeps
    the reported string as ``served_version``). An exchange naming an MLflow model uuid (the sidecar read
    it from the served model's directory) is of the version whose ModelVersion names that uuid, whatever
    the response or a deployment says; until that ModelVersion is known it names no model and misses its
    lineage, so a late import completes it rather than leaving it credited to another version.
    Positional features and outputs (a single V2 tensor's
    ``input-0[0]``...) are named after the model's signature when it is known. ``complete`` is true when
    both halves and the lineage (model version, its artifact, and its training run's code) are
    known and the deployment that put the model on the endpoint is found; otherwise ``missing``
    names the first thing absent: request, response, lineage, then deployment.
    """
    if request is None and response is None:
        raise ValueError("build_trace needs a request or a response; got neither")
    first = request if request is not None else response
    assert first is not None
    endpoint = str(first["endpoint"])
    at = request["event_time"] if request is not None else first["event_time"]

    deployed = lineage.deployment_at(endpoint, at)
    mlflow_uuid = _first_not_none(response and response.get("mlflow_model_uuid"),
                                  request and request.get("mlflow_model_uuid"))
    if mlflow_uuid:
        # the sidecar read the served model's uuid from its model directory: that names the model, not
        # what a Deployment claims; until its ModelVersion is known the trace misses its lineage (and is
        # completed when it arrives), never credited to another version
        model = lineage.mlflow_model(str(mlflow_uuid), endpoint=endpoint, at=at)
        model_name = model.model_name if model is not None else None
        reported_version = model_version = model.version if model is not None else None
    else:
        model_name = _first_not_none(
            response and response.get("model_name"), deployed and deployed.model_name,
            request and request.get("model_name"),
        )
        reported_version = _first_not_none(
            response and response.get("model_version"), deployed and deployed.model_version,
            request and request.get("model_version"),
        )
        # the server may report another string than the registered version (MLServer's "v1" for "1")
        model = lineage.model(model_name, reported_version) if model_name and reported_version else None
        model_version = model.version if model is not None else reported_version
    deployment = deployed
    if deployed is not None and (deployed.model_name, deployed.model_version) != (model_name, model_version):
        # the response named another version than the one deployed at request time (a canary, or
        # a rollout racing the request): credit the deployment that put that version there
        deployment = (
            lineage.last_deployment_of(endpoint, model_name, model_version, at)
            if model_name is not None and model_version is not None else None
        )

    code = lineage.code(model.run_id) if model is not None and model.run_id else None
    lineage_known = model is not None and (model.run_id is None or code is not None)

    inputs, outputs = (model.input_names, model.output_names) if model is not None else ((), ())
    missing: str | None = None
    if request is None:
        missing = "request"
    elif response is None:
        missing = "response"
    elif not lineage_known:
        missing = "lineage"
    elif deployment is None:
        missing = "deployment"

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
        "features": named_row(request.get("features") or {}, inputs) if request is not None else {},
        "outputs": named_row(response.get("outputs") or {}, outputs) if response is not None else {},
        "feature_rows": [named_row(row, inputs) for row in request.get("feature_rows") or []]
        if request is not None else [],
        "output_rows": [named_row(row, outputs) for row in response.get("output_rows") or []]
        if response is not None else [],
        "row_count": int(request["row_count"]) if request is not None and request.get("row_count") is not None else 1,
        "request_id": _first_not_none(request and request.get("request_id"), response and response.get("request_id")),
        "served_version": reported_version if model is not None and reported_version != model.version else None,
    }



def _first_not_none(*values: Any) -> Any:
    for value in values:
        if value:
            return value
    return None


def trace_event_id(prediction_id: str, first_time_us: int) -> str:
    """The trace's event id: a pure function of the prediction (see :func:`stable_event_id`)."""
    return stable_event_id("provline-trace", prediction_id, first_time_us)


def completed_event_id(prediction_id: str, first_time_us: int) -> str:
    """The event id of a trace's completed revision (its links arrived after it went out incomplete)."""
    return stable_event_id("provline-completed-trace", prediction_id, first_time_us)


LATE_LINKS = frozenset({"lineage", "deployment"})  # what may still arrive after a trace went out
_LABEL_FIELDS = ("label", "outcome", "feedback_source", "feedback_time", "feedback_event_id")


class Step(Enum):
    """What the join agent does with a pending entry now."""

    WAIT = "wait"  # a half is missing, or both wait for lineage; nothing is due yet
    EMIT = "emit"  # emit the trace (complete, or flagged incomplete because its wait is over)


@dataclass(frozen=True)
class Timing:
    """The join's time limits, in seconds."""

    ttl: float  # how long a lone half waits for the other one before a partial trace goes out
    lineage_wait: float  # how long two joined halves wait for unknown lineage
    retention: float  # how long a done marker is kept to swallow duplicates
    feedback_retention: float = 0.0  # how long a done marker keeps the trace for late feedback, if longer


def absorb(entry: PendingEntry | None, kind: str, half: Mapping[str, Any], *, partition: int,
           now: float) -> PendingEntry | None:
    """The entry with one more half, or None when nothing changes (a duplicate, or already done).

    A half seen twice keeps its first copy: the first arrival is the one a trace is built from.
    """
    if kind not in HALF_KINDS:
        raise ValueError(f"{kind} is not a half of a prediction; expected {REQUEST} or {RESPONSE}")
    field: Literal["q", "r"] = "q" if kind == REQUEST else "r"
    if entry is None:
        entry = {"p": partition, "s": now}
    elif "d" in entry or field in entry:
        return None
    elif not has_a_half(entry):  # only feedback so far: the time-to-live runs from the first half
        entry = {**entry, "s": now}
    else:
        entry = {**entry}
    entry[field] = dict(half)
    return entry


def is_done(entry: PendingEntry) -> bool:
    return "d" in entry


def has_both_halves(entry: PendingEntry) -> bool:
    return "q" in entry and "r" in entry


def has_a_half(entry: PendingEntry) -> bool:
    return "q" in entry or "r" in entry


def is_feedback_only(entry: PendingEntry) -> bool:
    """Feedback waiting for a prediction this worker has no halves (or done marker) of."""
    return not is_done(entry) and not has_a_half(entry)


def halves(entry: PendingEntry) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return entry.get("q"), entry.get("r")


def next_step(entry: PendingEntry, trace: Mapping[str, Any], *, now: float, timing: Timing,
              lineage_current: bool = True) -> Step:
    """Emit when both halves and the lineage are here, or when the entry's wait is over.

    ``lineage_current``: whether the worker has read all the lineage fetched so far. While it has
    not, a trace that looks complete may still name the version an unread rollout or rollback
    replaced, so it waits too (for the same ``lineage_wait`` at most).
    """
    if is_done(entry) or not has_a_half(entry):
        return Step.WAIT
    if not has_both_halves(entry):
        return Step.EMIT if now - entry["s"] >= timing.ttl else Step.WAIT
    if trace["complete"] and lineage_current:
        return Step.EMIT
    held_since = entry.get("h")
    if held_since is not None and now - held_since >= timing.lineage_wait:
        return Step.EMIT
    return Step.WAIT


def hold(entry: PendingEntry, *, now: float) -> PendingEntry:
    """The entry marked as waiting for lineage (from the first time only); lone halves are not held."""
    if "h" in entry or not has_both_halves(entry):
        return entry
    return {**entry, "h": now}


def is_held(entry: PendingEntry) -> bool:
    return "h" in entry and not is_done(entry)


def mark_done(entry: PendingEntry, trace: Mapping[str, Any], *, now: float) -> PendingEntry:
    """The done marker left after ``trace`` was emitted: applied feedback is dropped, and so are the
    halves unless the trace still misses a link that may arrive (:data:`LATE_LINKS`); the trace is
    kept to label late feedback with, and the Feedback ids to swallow redeliveries."""
    marker: PendingEntry = {"p": entry["p"], "d": now, "m": trace.get("model_name"),
                            "v": trace.get("model_version"), "t": dict(trace)}
    if trace.get("missing") in LATE_LINKS and has_both_halves(entry):
        marker["q"], marker["r"] = entry["q"], entry["r"]
    if entry.get("f"):
        marker["f"] = list(entry["f"])
    return marker


def awaits_links(entry: PendingEntry) -> bool:
    """A done marker whose trace went out missing a link, keeping its halves to complete it later."""
    return is_done(entry) and has_both_halves(entry)


def waits_for_lineage(entry: PendingEntry) -> bool:
    """Whether a lineage change may move the entry on: halves held for lineage, or a marker that awaits links."""
    return is_held(entry) or awaits_links(entry)


def complete_late(entry: PendingEntry, lineage: LineageIndex) -> tuple[PendingEntry, dict[str, Any] | None]:
    """For a marker that :func:`awaits_links`: the trace rebuilt with the lineage known now. When it is
    complete: the marker without halves and the completed revision to send (carrying the ground truth
    the emitted trace had); otherwise the marker unchanged and None."""
    if not awaits_links(entry):
        raise ValueError("only a done marker that kept its halves can be completed")
    trace = build_trace(entry["q"], entry["r"], lineage)
    if not trace["complete"]:
        return entry, None
    emitted = entry.get("t") or {}
    trace.update({name: emitted[name] for name in _LABEL_FIELDS if emitted.get(name) is not None})
    marker = PendingEntry(**entry)
    del marker["q"], marker["r"]
    marker["m"], marker["v"], marker["t"] = trace["model_name"], trace["model_version"], trace
    return marker, trace


def deadline(entry: PendingEntry, timing: Timing) -> float:
    """Wall-clock seconds at which the entry next needs attention without any new event.

    A lone half: its time-to-live; halves held for lineage: the end of the wait; a done marker, or
    feedback without halves: when it is forgotten. Two halves not (yet) held need none (they are decided at once).
    """
    if is_done(entry):
        return float(entry["d"]) + max(timing.retention, timing.feedback_retention)
    if not has_a_half(entry):
        return float(entry["s"]) + timing.retention
    if "h" in entry:
        return float(entry["h"]) + timing.lineage_wait
    if has_both_halves(entry):
        return float(entry["s"])
    return float(entry["s"]) + timing.ttl


def first_time_us(entry: PendingEntry) -> int:
    """The time the trace's event id is derived from: the request's, else the response's."""
    half = entry.get("q") or entry.get("r")
    if half is None:
        raise ValueError("a pending entry without halves has no trace time; it is a done marker")
    return int(half["event_time"])
