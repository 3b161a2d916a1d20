"""The join agent: an inference request and its response, plus lineage, into one PredictionTrace.

The first-arriving half waits in a Table keyed by prediction id (co-partitioned with the
inference topic, which is keyed by prediction id). When both halves are there and the lineage is
known, the trace is sent to the traces topic and the entry is marked done, so a duplicated half
never yields a second trace. When the lineage is not known yet, the entry is held; a timer on
each worker retries its held entries and, after ``lineage_wait_seconds``, emits the trace with
``missing="lineage"``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from faust.types import TP, EventT

from schemas.errors import SchemaError
from schemas.serde import Catalog
from stream_processors.dead_letters import DeadLetters
from stream_processors.join import (
    HALF_FIELD,
    PendingEntry,
    Step,
    absorb,
    build_trace,
    halves,
    has_both_halves,
    hold,
    is_held,
    mark_done,
    next_step,
)
from stream_processors.lineage import LineageIndex
from stream_processors.traces import TraceEncoder

log = logging.getLogger(__name__)
PENDING_TABLE = "pending-predictions"
MAX_RETRY_INTERVAL_SECONDS = 1.0
MIN_RETRY_INTERVAL_SECONDS = 0.05


def retry_interval(wait_seconds: float) -> float:
    """How often held entries are retried: often enough to honour ``wait_seconds`` closely."""
    return max(MIN_RETRY_INTERVAL_SECONDS, min(MAX_RETRY_INTERVAL_SECONDS, wait_seconds / 10))


class Joiner:
    """Advances pending entries: builds the trace, sends it when due. One per worker."""

    def __init__(
        self, *, catalog: Catalog, lineage: LineageIndex, encoder: TraceEncoder, traces: faust.TopicT,
        wait_seconds: float,
    ) -> None:
        self.catalog = catalog
        self.lineage = lineage
        self.encoder = encoder
        self.traces = traces
        self.wait_seconds = wait_seconds

    async def advance(self, prediction_id: str, entry: PendingEntry, *, now: float) -> PendingEntry:
        """The entry after sending its trace if it is due, holding it if it waits for lineage."""
        if not has_both_halves(entry):
            return entry
        request_raw, response_raw = halves(entry)
        assert request_raw is not None and response_raw is not None
        trace = build_trace(
            self.catalog.decode(request_raw).value, self.catalog.decode(response_raw).value, self.lineage
        )
        if next_step(entry, trace, now=now, wait_seconds=self.wait_seconds) is Step.EMIT:
            await self.traces.send(key=prediction_id.encode(), value=self.encoder.encode(trace))
            return mark_done(entry)
        return hold(entry, now=now)


def register_join_agent(
    app: faust.App, *, topic: faust.TopicT, joiner: Joiner, catalog: Catalog, dead_letters: DeadLetters,
    partitions: int,
) -> faust.Table:
    """Add the pending table, the join agent and the retry timer to ``app``; returns the table."""
    pending = app.Table(PENDING_TABLE, partitions=partitions, help="halves of predictions waiting for a trace")

    async def handle(event: EventT[bytes, bytes]) -> None:
        try:
            decoded = catalog.decode(event.value)
        except SchemaError as exc:
            await dead_letters.send(event, str(exc))
            return
        if decoded.record not in HALF_FIELD:
            return  # Feedback: not part of the trace join
        prediction_id = str(decoded.value["prediction_id"])
        entry = absorb(pending.get(prediction_id), decoded.record, event.value, partition=event.message.partition)
        if entry is None:
            return  # a duplicated half, or the trace was already emitted
        pending[prediction_id] = await joiner.advance(prediction_id, entry, now=time.time())

    @app.agent(topic, name="join")
    async def join(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as exc:  # a bug or a broker error must not stop the join for everyone
                log.exception("join failed for %s[%s]@%s", event.message.topic, event.message.partition,
                              event.message.offset)
                await dead_letters.send(event, f"join failed: {type(exc).__name__}: {exc}")

    @app.timer(retry_interval(joiner.wait_seconds), name="retry-held-traces")
    async def retry_held() -> None:
        assigned = app.consumer.assignment()
        for prediction_id, entry in list(pending.items()):
            # the local store also holds standby partitions; only their owner may emit
            if not is_held(entry) or TP(topic.get_topic_name(), entry["partition"]) not in assigned:
                continue
            try:
                advanced = await joiner.advance(prediction_id, entry, now=time.time())
            except SchemaError as exc:
                log.error("held trace for prediction %s cannot be built, dropping it: %s", prediction_id, exc)
                advanced = mark_done(entry)
            except Exception:
                log.exception("retrying the held trace for prediction %s failed; will retry", prediction_id)
                continue
            if advanced != entry:
                _set_outside_stream(pending, entry["partition"], prediction_id, advanced)

    return pending


def _set_outside_stream(table: faust.Table, partition: int, key: str, value: Any) -> None:
    # ``table[key] = value`` takes the changelog partition from the current stream event, and a
    # timer has none; write the store and the changelog to the entry's own partition instead.
    table.data[key] = value
    table.send_changelog(partition, key, value)
