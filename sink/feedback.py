"""Ground truth that names a prediction by the client's request id, resolved where the mapping is: the store.

A client often knows only the id it sent (a KServe V2 request ``id``, ``x-request-id``), not provline's
prediction id. The mapping from one to the other is in the store (``prediction_traces.request_id``,
sink/sql/0006), which ``provline serve`` owns, so serve resolves it. Nothing else can: the processors
join by prediction id, on the partition of the prediction's key, and a Feedback keyed by the client's
id lands elsewhere.

Decision (issue 17): one resolver, :func:`resolve_request_ids`, used by every path:

- ``POST /v1/feedback`` resolves at once and publishes one Feedback per prediction the request id
  names (prediction id and client request id both set), answering ``not_found`` when it names none;
  a prediction id is accepted only when the store has that prediction (its request or its trace).
- ``lineage.feedback(client_request_id=...)`` cannot reach the store: it publishes a Feedback with
  only the client's id, which the sink stores like any other (``prediction_id`` ''). The
  :class:`FeedbackResolver` thread of serve looks at such rows of the last
  ``PROVLINE_FEEDBACK__RESOLVE_RETENTION_S`` every ``RESOLVE_INTERVAL_S``, resolves them against the
  traces stored by then, and publishes the resolved Feedback. A row whose requests are not stored yet
  is simply looked at again next time, until it is older than the retention: the store is the
  resolver's only state, so a crash loses nothing.
- A resolved Feedback's event id is derived from the original's and the prediction's
  (:func:`resolved_event_id`): resolving again (after a crash, or by a second serve) publishes the
  same event, which the sink stores once and the join swallows as already seen.

Resolved events are published through the producers' emitter with serve's settings (section
``emitter``), signed with serve's key (``PROVLINE_SIGNING__KEY``) like every other producer's.
The query functions block on the store; :func:`resolved_event_id` and :func:`resolved_fields` are pure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from provline.schemas import Catalog, default_catalog
from provline.schemas.events import stable_event_id
from provline.sink.queries import MAX_PREDICTIONS_PER_REQUEST_ID, TRACE_SETTINGS

log = logging.getLogger(__name__)

RESOLVED_NAMESPACE = "provline-resolved-feedback"
UNRESOLVED_BATCH = 1000  # stored Feedback by client request id looked at per pass, oldest first
REMEMBERED_PUBLISHED = 100_000  # resolved ids published but perhaps not stored yet: not published again


DURABLE_TIMEOUT_S = 10.0  # how long POST /v1/feedback waits for its events to be in serve's spool


class FeedbackEmitter(Protocol):
    """The part of :class:`provline.producers.Emitter` serve publishes Feedback with."""

    def emit(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> dict[str, Any]: ...

    def emit_spooled(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None,
                     on_spooled: Callable[[], None]) -> dict[str, Any] | None: ...


def publish_durably(emitter: FeedbackEmitter, events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Emit each Feedback and wait until all are in the emitter's on-disk spool, so an answer of
    "accepted" survives a broker outage and a restart of serve; the full events, or None when one
    was dropped (queue full) or not spooled within ``DURABLE_TIMEOUT_S``. Blocks; thread-safe."""
    timeout_s = DURABLE_TIMEOUT_S
    spooled = threading.Semaphore(0)
    sent = []
    for fields in events:
        event = emitter.emit_spooled("Feedback", fields, on_spooled=spooled.release)
        if event is None:
            return None
        sent.append(event)
    deadline = time.monotonic() + timeout_s
    if all(spooled.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in sent):
        return sent
    return None


def _micros(value: datetime) -> int:
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def resolved_event_id(original_event_id: str, prediction_id: str, original_time: datetime) -> str:
    """The event id of the Feedback resolved from ``original_event_id`` for ``prediction_id``. Pure."""
    return stable_event_id(RESOLVED_NAMESPACE, f"{original_event_id}\x00{prediction_id}", _micros(original_time))


def resolved_fields(original: Mapping[str, Any], prediction_id: str) -> dict[str, Any]:
    """The fields of the Feedback for ``prediction_id`` resolved from a decoded Feedback naming only a
    client request id: the same ground truth, both ids, a derived event id. Pure."""
    return {
        "event_id": resolved_event_id(str(original["event_id"]), prediction_id, original["event_time"]),
        "prediction_id": prediction_id, "client_request_id": original["client_request_id"],
        "label": original.get("label"), "outcome": original.get("outcome"), "source": original["source"],
        "observed_time": original["observed_time"],
    }


def resolve_request_ids(client: Client, request_ids: Iterable[str]) -> dict[str, list[str]]:
    """Client request id -> the prediction ids whose trace carries it (newest first, at most
    ``MAX_PREDICTIONS_PER_REQUEST_ID``); ids naming no stored trace are left out. Blocks."""
    wanted = sorted(set(request_ids))
    if not wanted:
        return {}
    result = client.query(
        "SELECT request_id, groupArray({limit:UInt32})(prediction_id) FROM ("
        " SELECT request_id, prediction_id, max(event_time) AS newest FROM prediction_traces"
        " WHERE request_id IN {ids:Array(String)} GROUP BY request_id, prediction_id ORDER BY newest DESC"
        ") GROUP BY request_id",
        parameters={"ids": wanted, "limit": MAX_PREDICTIONS_PER_REQUEST_ID}, settings=TRACE_SETTINGS,
    )
    return {str(row[0]): [str(p) for p in row[1]] for row in result.result_rows}


def known_predictions(client: Client, prediction_ids: Iterable[str]) -> set[str]:
    """The ``prediction_ids`` the store has a request or a trace of. Blocks."""
    wanted = sorted(set(prediction_ids))
    if not wanted:
        return set()
    result = client.query(
        "SELECT prediction_id FROM prediction_traces WHERE prediction_id IN {ids:Array(String)} "
        "UNION DISTINCT SELECT prediction_id FROM inference_requests WHERE prediction_id IN {ids:Array(String)}",
        parameters={"ids": wanted}, settings=TRACE_SETTINGS,
    )
    return {str(row[0]) for row in result.result_rows}


def unresolved_feedback(client: Client, catalog: Catalog, *, since: datetime,
                        limit: int = UNRESOLVED_BATCH) -> list[dict[str, Any]]:
    """Stored Feedback that names only a client request id, stored since ``since``, decoded from the
    exact bytes stored, oldest first. Blocks."""
    result = client.query(
        "SELECT raw FROM feedback WHERE prediction_id = '' AND client_request_id IS NOT NULL "
        "AND event_time >= {since:DateTime64(6, 'UTC')} ORDER BY event_time LIMIT 1 BY event_id "
        "LIMIT {limit:UInt32}",
        parameters={"since": since, "limit": limit}, settings=TRACE_SETTINGS, column_formats={"raw": "bytes"},
    )
    decoded = []
    for (raw,) in result.result_rows:
        try:
            decoded.append(catalog.decode(bytes(raw)).value)
        except Exception:  # stored means it decoded once; verify reports a row that no longer does
            log.warning("a stored Feedback no longer decodes; `provline verify` names it")
    return decoded


def stored_feedback_ids(client: Client, pairs: Iterable[tuple[str, str]]) -> set[str]:
    """The event ids among ``(prediction id, event id)`` pairs that the feedback table holds. Blocks."""
    wanted = list(pairs)
    if not wanted:
        return set()
    result = client.query(
        "SELECT DISTINCT event_id FROM feedback WHERE prediction_id IN {pids:Array(String)} "
        "AND event_id IN {ids:Array(String)}",
        parameters={"pids": sorted({p for p, _ in wanted}), "ids": sorted({e for _, e in wanted})},
    )
    return {str(row[0]) for row in result.result_rows}


class FeedbackResolver:
    """Resolves stored Feedback that names only a client request id, in a thread of serve's.

    :meth:`resolve_once` is one pass (blocks on the store); :meth:`run` repeats it every
    ``interval_s`` until the stop event is set. ``client`` is the resolver's own store connection.
    Not thread-safe: one thread runs it.
    """

    def __init__(self, client: Client, emitter: FeedbackEmitter, *, retention_s: float, interval_s: float,
                 catalog: Catalog | None = None) -> None:
        self._client = client
        self._emitter = emitter
        self._retention = timedelta(seconds=retention_s)
        self._interval_s = interval_s
        self._catalog = catalog or default_catalog()
        self._published: OrderedDict[str, None] = OrderedDict()

    def resolve_once(self, *, now: datetime | None = None) -> int:
        """Publish the resolved Feedback of every stored unresolved one whose requests are stored now and
        that is neither stored nor published yet; returns how many were published. Blocks."""
        originals = unresolved_feedback(self._client, self._catalog, since=(now or datetime.now(UTC)) - self._retention)
        if not originals:
            return 0
        found = resolve_request_ids(self._client, [str(o["client_request_id"]) for o in originals])
        candidates = [resolved_fields(original, pid) for original in originals
                      for pid in found.get(str(original["client_request_id"]), [])]
        fresh = [c for c in candidates if c["event_id"] not in self._published]
        stored = stored_feedback_ids(self._client, [(c["prediction_id"], c["event_id"]) for c in fresh])
        published = 0
        for fields in fresh:
            if fields["event_id"] in stored:
                continue
            self._emitter.emit("Feedback", fields)
            self._published[fields["event_id"]] = None
            published += 1
        while len(self._published) > REMEMBERED_PUBLISHED:
            self._published.popitem(last=False)
        if published:
            log.info("resolved %d feedback by client request id into %d prediction feedback", len(originals), published)
        return published

    def run(self, stop: threading.Event) -> None:
        """Resolve every ``interval_s`` until ``stop`` is set; blocks. A failed pass is logged and retried."""
        while not stop.wait(self._interval_s):
            try:
                self.resolve_once()
            except Exception:
                log.exception("feedback resolution failed; retrying in %.0f s", self._interval_s)
