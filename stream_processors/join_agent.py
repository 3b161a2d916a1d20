"""The join agent: an inference request and its response, plus lineage, into one PredictionTrace.

Events are taken in batches (``stream.take_events``). A message is one event, or an exchange
frame holding a prediction's request and response (:mod:`provline.schemas.frames`, what the
sidecar sends). A complete frame whose prediction has nothing pending is decided at once: its
trace is sent and nothing is written to the table. Its trace's event id is a pure function of
the prediction (:func:`~provline.stream_processors.join.trace_event_id`), so a frame read again
after a crash makes the same trace again and the sink keeps one; Feedback arriving after such a
trace waits in the table as for an unknown prediction (ground truth is stored by the sink either
way; only the labelled copy of the trace is not made).

Everything else goes through the table, keyed by prediction id (co-partitioned with the inference
topic, which is keyed by prediction id): the first-arriving half waits there; each prediction
touched by a batch is written once. When both halves are there and the lineage is known, the
trace is sent and the entry becomes a done marker, so a duplicated half never yields a second
trace. A timer on each worker handles what time alone decides: a lone half whose time-to-live ran
out (a partial trace saying which half is missing), halves waiting for lineage (retried when the
lineage changed, emitted incomplete when the wait is over), and done markers past their retention
(forgotten). The timer works from an in-memory deadline heap rebuilt from the table after every
recovery, so it never scans the table.

Feedback on the same topic (same key, so the same partition) waits in the prediction's entry and
rides on its trace, or, once the trace is out, yields a labelled copy of it (see
:mod:`provline.stream_processors.join`).

State, the Faust way: a Faust Table in Faust's in-memory store, recovered by Faust from its
changelog when a worker starts or takes partitions over. Writes go to ``table.data`` (the store)
and to the changelog with ``Table.send_changelog`` naming the partition of the entry's own
inference partition: a batch mixes partitions, so Faust's "partition of the current event"
(what ``table[key] = value`` uses) would be wrong for all but one. That is also why the table
does not run on Faust's RocksDB store, which files every write under the current event's
partition. The table holds only predictions still waiting (and, for separately sent halves, done
markers for the dedup retention): memory is enough, and a killed worker's successor recovers it
(tests/integration/test_processors_stream.py kills one mid-stream, with halves and with frames).

Traces and dead letters go through a librdkafka producer (:class:`BatchProducer`), not Faust's:
Faust's sends one message per event-loop turn, which caps the join at a few thousand traces a
second. A batch's traces are delivered before its changelog records are sent: a done marker that
reached the changelog while its trace did not (a crash between the two) would swallow the trace
when the batch is consumed again.

Where reading stands is part of that state too, not left to Faust's committed offsets (see
:mod:`provline.stream_processors.positions`): after every batch, each of its inference partitions gets a
position record (the last offset decided) in its own changelog partition, written after the
batch's entries, so it never covers an entry that is not there. After a recovery, an offset that
Faust delivers past the recorded position makes the agent seek back, and one below it is ignored.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

import faust
from faust.types import TP, EventT, TableT

from provline.schemas.errors import SchemaError
from provline.schemas.frames import events_in
from provline.schemas.serde import Catalog, Decoded
from provline.stream_processors.dead_letters import DeadLetters
from provline.stream_processors.drift import DriftAccumulator
from provline.stream_processors.join import (
    FEEDBACK,
    HALF_KINDS,
    REQUEST,
    RESPONSE,
    PendingEntry,
    Step,
    Timing,
    absorb,
    absorb_feedback,
    apply_late_feedback,
    awaits_links,
    build_trace,
    complete_late,
    completed_event_id,
    deadline,
    first_time_us,
    halves,
    has_a_half,
    has_both_halves,
    hold,
    is_done,
    is_feedback_only,
    label_fields,
    mark_done,
    newest_feedback,
    next_step,
    summarize,
    summarize_feedback,
    trace_event_id,
    waits_for_lineage,
    without_feedback,
)
from provline.stream_processors.lineage import LineageIndex, to_micros
from provline.stream_processors.lineage_agent import LineageAgent
from provline.stream_processors.metrics import ProcessorMetrics
from provline.stream_processors.positions import (
    PositionRecord,
    Positions,
    is_position_key,
    position_key,
)
from provline.stream_processors.producer import BatchProducer
from provline.stream_processors.rewind import BrokerOffsets, log_end, resume_positions, seek_back
from provline.stream_processors.traces import TraceEncoder

log = logging.getLogger(__name__)
PENDING_TABLE = "pending-predictions"
MAX_TICK_SECONDS = 1.0
MIN_TICK_SECONDS = 0.05
CHANGELOG_BACKLOG_MESSAGES = 10_000  # table writes waiting in Faust's producer before a batch waits for them
LINEAGE_CATCH_UP_SECONDS = 0.2  # enough for the lineage agent to read what one fetch brought


def tick_interval(timing: Timing) -> float:
    """How often the timer runs: often enough to honour the shortest wait closely."""
    return max(MIN_TICK_SECONDS, min(MAX_TICK_SECONDS, min(timing.ttl, timing.lineage_wait) / 10))


class Joiner:
    """One worker's join: decides, sends traces, writes the table and keeps the deadline heap.

    Traces and table changelog records go through ``producer`` (a :class:`BatchProducer`);
    :meth:`flush` ends every batch and timer tick. Not thread-safe.
    """

    def __init__(
        self, *, catalog: Catalog, lineage: LineageIndex, encoder: TraceEncoder, timing: Timing,
        metrics: ProcessorMetrics, drift: DriftAccumulator, producer: BatchProducer, traces_topic: str,
        dead_letters: DeadLetters, lineage_topic: str,
    ) -> None:
        self.catalog = catalog
        self.lineage = lineage
        self.encoder = encoder
        self.timing = timing
        self.metrics = metrics
        self.drift = drift
        self.producer = producer
        self.traces_topic = traces_topic
        self.lineage_topic = lineage_topic  # where the session's seals go
        self.dead_letters = dead_letters
        self.table: Any = None  # the pending table, set when registered
        self._heap: list[tuple[float, str]] = []
        self._held: set[str] = set()
        self._lineage_changes = -1
        self.flush_changelog: Any = None  # bounds Faust's producer backlog (see flush), set when registered
        self._changelog: list[tuple[str, PendingEntry | PositionRecord | None, int]] = []
        self.positions = Positions()
        self._events_in: dict[str, Any] = {}
        # Whether this worker has read all the lineage fetched so far; set by the agent before every
        # batch and tick. While it is False no trace is decided from the lineage index: a rollout or
        # rollback still unread would give it the version that was replaced.
        self.lineage_current = True
        self._lineage_was_current = True

    def _write(self, key: str, entry: PendingEntry | PositionRecord | None, partition: int) -> None:
        # into the store now; to the changelog (of the entry's own partition) once the batch's
        # traces are delivered: see flush
        if entry is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = entry
        self._changelog.append((key, entry, partition))

    def record_positions(self, partitions: set[int]) -> None:
        """Write the last decided offset of ``partitions``; each record follows its partition's entries."""
        for partition in partitions:
            self._write(position_key(partition), {"offset": self.positions.decided[partition]}, partition)

    def take(self, events: list[Decoded], touched: dict[str, PendingEntry], *, partition: int, now: float) -> None:
        """Take one message's events (one, or an exchange frame's request and response) into ``touched``,
        the entries this batch changed; a complete exchange with nothing pending is decided at once.

        Raises ValueError for events the join cannot use (the message is dead-lettered)."""
        kinds = [decoded.record for decoded in events]
        for kind in kinds:
            counter = self._events_in.get(kind)
            if counter is None:  # looked up once per kind: labels() takes a lock on every call
                counter = self._events_in[kind] = self.metrics.events_in.labels(kind)
            counter.inc()
        if any(kind not in HALF_KINDS and kind != FEEDBACK for kind in kinds):
            log.warning("ignoring a %s event on the inference topic", "/".join(kinds))
            return
        if kinds == [FEEDBACK] and not events[0].value.get("prediction_id"):
            # Keyed by the client's request id: the sink resolves it to prediction ids and publishes
            # a Feedback per prediction (provline.sink.feedback), which this join takes.
            return
        prediction_id = str(events[0].value["prediction_id"])
        if is_position_key(prediction_id):
            raise ValueError(f"prediction_id {prediction_id!r} starts with a NUL character")
        if len(events) == 2 and events[1].value["prediction_id"] != prediction_id:
            raise ValueError(f"an exchange frame holds the request of {prediction_id!r} and the response of "
                             f"{events[1].value['prediction_id']!r}; both halves must be one prediction's")
        entry = touched[prediction_id] if prediction_id in touched else self.table.data.get(prediction_id)
        if entry is None and len(events) == 2 and self._emit_exchange(prediction_id, events, partition, now=now):
            return
        for decoded in events:
            kind = decoded.record
            if kind == FEEDBACK:
                changed = absorb_feedback(entry, summarize_feedback(decoded.value), partition=partition, now=now)
            else:
                changed = absorb(entry, kind, summarize(kind, decoded.value), partition=partition, now=now)
            if changed is None:
                (self.metrics.feedback_duplicates if kind == FEEDBACK else self.metrics.duplicates).inc()
                continue
            touched[prediction_id] = entry = changed

    def _emit_exchange(self, prediction_id: str, events: list[Decoded], partition: int, *, now: float) -> bool:
        """Emit the trace of an exchange nothing is pending for, if it is complete, without a table
        entry: a redelivered frame makes the same trace again, with the same event id, and the sink
        keeps one. False when the trace would be incomplete, or this worker has lineage still to read (it
        then waits in the table as two halves)."""
        entry: PendingEntry = {"p": partition, "s": now, "q": summarize(REQUEST, events[0].value),
                               "r": summarize(RESPONSE, events[1].value)}
        trace = build_trace(entry["q"], entry["r"], self.lineage)
        if not trace["complete"] or not self.lineage_current:
            return False
        self._emit(prediction_id, entry, trace, now=now)
        self.metrics.exchanges_joined.inc()
        return True

    def dead_letter(self, event: EventT[bytes], reason: str, error: str) -> None:
        """Send a message the join cannot use to the dead-letter topic, delivered with the batch's traces."""
        self.dead_letters.send(event, reason, error)
        self.metrics.dead_letters.inc()

    def release_changelog(self) -> None:
        """Send the table writes held back so far to the table's changelog (Faust's ``send_changelog``)."""
        held, self._changelog = self._changelog, []
        for key, entry, partition in held:
            if entry is None:
                self.table.send_changelog(partition, key, None, value_serializer="raw")  # a tombstone
            else:
                self.table.send_changelog(partition, key, entry)

    async def flush(self) -> None:
        """Deliver this batch's traces, then hand its table writes to Faust's producer.

        In that order (see the module docstring). The changelog records are not waited for, only
        kept from piling up (``flush_changelog`` waits when Faust's buffer is long): Faust sends a
        partition's records in order, so a position record never lands before the entries it
        covers, and records a crash loses are made again from the events read again after the
        recovered position. Waiting for Faust's producer after every batch added about a second
        to every trace (bench/processors.py). The session's seal goes out with the traces when one
        is due.
        """
        now = time.monotonic()
        if self.encoder.seal_due(now):
            self.send_seal(now=now)
        await self.producer.flush()
        if self._changelog:
            self.release_changelog()
            await self.flush_changelog()

    def send_seal(self, *, now: float, final: bool = False) -> None:
        """Seal this worker's session: a SessionSeal on the lineage topic, keyed by the session id."""
        session = self.encoder.session_id
        self.producer.produce(self.lineage_topic, session.encode(), self.encoder.seal(now=now, final=final))

    def schedule(self, prediction_id: str, entry: PendingEntry) -> None:
        heapq.heappush(self._heap, (deadline(entry, self.timing), prediction_id))
        if waits_for_lineage(entry):
            self._held.add(prediction_id)

    def rebuild(self, entries: list[tuple[str, PendingEntry]]) -> None:
        """Reset the heap and held set from the table (after a recovery)."""
        self._heap = []
        self._held = set()
        for prediction_id, entry in entries:
            if is_position_key(prediction_id):
                continue
            self._heap.append((deadline(entry, self.timing), prediction_id))
            if waits_for_lineage(entry):
                self._held.add(prediction_id)
        heapq.heapify(self._heap)

    def advance(self, prediction_id: str, entry: PendingEntry, *, now: float) -> None:
        """Decide one changed or due entry: emit its trace (or labelled copies of a done one) or keep
        it waiting; write and schedule it."""
        if is_done(entry) and entry.get("b"):
            entry = self._label_late(prediction_id, entry)
        elif has_a_half(entry) and not is_done(entry) \
                and (has_both_halves(entry) or now - entry["s"] >= self.timing.ttl):
            request, response = halves(entry)
            trace = build_trace(request, response, self.lineage)
            if next_step(entry, trace, now=now, timing=self.timing,
                         lineage_current=self.lineage_current) is Step.EMIT:
                feedback = newest_feedback(entry)
                if feedback is not None:
                    trace = {**trace, **label_fields(feedback)}
                    self.metrics.feedback_joined.labels("trace").inc(len(entry["b"]))
                self._emit(prediction_id, entry, trace, now=now)
                entry = mark_done(entry, trace, now=now)
                self._held.discard(prediction_id)
            else:
                entry = hold(entry, now=now)
        self._write(prediction_id, entry, entry["p"])
        self.schedule(prediction_id, entry)

    def _label_late(self, prediction_id: str, entry: PendingEntry) -> PendingEntry:
        """Send a labelled copy of a done prediction's trace per pending Feedback; the marker without them."""
        if entry.get("t") is None:  # a marker from a worker that kept no trace: nothing to label
            log.warning("dropping %d feedback for prediction %s: its done marker keeps no trace",
                        len(entry["b"]), prediction_id)
            self.metrics.feedback_dropped.inc(len(entry["b"]))
            return without_feedback(entry)
        entry, labelled = apply_late_feedback(entry)
        for event_id, trace in labelled:
            self.producer.produce(self.traces_topic, prediction_id.encode(),
                                  self.encoder.encode(trace, event_id=event_id))
            self.metrics.feedback_joined.labels("late").inc()
        return entry

    def _complete_late(self, prediction_id: str, entry: PendingEntry) -> None:
        """Send the completed revision of a trace that went out missing a link, once the link is known."""
        try:
            marker, trace = complete_late(entry, self.lineage)
        except Exception:  # one broken entry must not stop the timer for every other one
            log.exception("could not complete the trace of prediction %s; it stays as it went out", prediction_id)
            self._held.discard(prediction_id)
            return
        if trace is None:
            return
        event_id = completed_event_id(prediction_id, first_time_us(entry))
        self.producer.produce(self.traces_topic, prediction_id.encode(), self.encoder.encode(trace, event_id=event_id))
        self.metrics.traces_completed_late.inc()
        if not (entry.get("m") and entry.get("v")):  # it went out with no model version to count its values for
            self.drift.add(trace)
        self._held.discard(prediction_id)
        self._write(prediction_id, marker, marker["p"])

    def _emit(self, prediction_id: str, entry: PendingEntry, trace: dict[str, Any], *, now: float) -> None:
        event_id = trace_event_id(prediction_id, first_time_us(entry))
        self.producer.produce(self.traces_topic, prediction_id.encode(), self.encoder.encode(trace, event_id=event_id))
        self.metrics.traces_out.inc()
        if trace["missing"] is not None:
            self.metrics.partial_traces.labels(trace["missing"]).inc()
        last = max(to_micros(t) or 0 for t in (trace["request_time"], trace["response_time"]) if t is not None)
        self.metrics.join_latency.observe(max(now - last / 1e6, 0.0))
        self.drift.add(trace)

    def on_timer(self, *, now: float, owns: Any, caught_up: Any = None) -> None:
        """Retry held entries if lineage changed or was read up to its end; act on entries whose deadline passed.

        ``owns(partition)`` says whether this worker owns an inference partition now;
        ``caught_up(partition)`` whether it has read all of it. A lone half's time-to-live only
        ends on a caught-up partition: after a restart or under lag, its other half may still be
        waiting unread in the topic.
        """
        caught_up_on_lineage = self.lineage_current and not self._lineage_was_current
        self._lineage_was_current = self.lineage_current
        if self._held and (self.lineage.changes != self._lineage_changes or caught_up_on_lineage):
            self._lineage_changes = self.lineage.changes
            for prediction_id in list(self._held):
                entry = self.table.data.get(prediction_id)
                if entry is None or not waits_for_lineage(entry) or not owns(entry["p"]):
                    self._held.discard(prediction_id)
                    continue
                if awaits_links(entry):
                    self._complete_late(prediction_id, entry)
                else:
                    self._guarded_advance(prediction_id, entry, now=now)
        behind: list[tuple[float, str]] = []
        while self._heap and self._heap[0][0] <= now:
            item = heapq.heappop(self._heap)
            prediction_id = item[1]
            entry = self.table.data.get(prediction_id)
            if entry is None or not owns(entry["p"]) or deadline(entry, self.timing) > now:
                continue  # gone, moved to another worker, or superseded by a later state
            if not is_done(entry) and not has_both_halves(entry) and caught_up is not None \
                    and not caught_up(entry["p"]):
                behind.append(item)  # look again on a later tick
                continue
            if is_done(entry):
                self._write(prediction_id, None, entry["p"])  # forget the marker
                continue
            if is_feedback_only(entry):  # no prediction came for it within the retention
                self.metrics.feedback_dropped.inc(len(entry.get("b") or []))
                self._write(prediction_id, None, entry["p"])
                continue
            self._guarded_advance(prediction_id, entry, now=now)
        for item in behind:
            heapq.heappush(self._heap, item)

    def _guarded_advance(self, prediction_id: str, entry: PendingEntry, *, now: float) -> None:
        try:
            self.advance(prediction_id, entry, now=now)
        except Exception:  # one broken entry must not stop the timer for every other one
            log.exception("could not advance prediction %s; dropping its pending entry", prediction_id)
            self._write(prediction_id, None, entry["p"])
            self._held.discard(prediction_id)


def register_join_agent(
    app: faust.App, *, topic: faust.TopicT, joiner: Joiner, lineage: LineageAgent, catalog: Catalog,
    offsets: BrokerOffsets,
    partitions: int, batch_size: int, batch_within: float, after_batch: Any,
) -> TableT[str, Any]:
    """Add the pending table, the join agent and its timer to ``app``; returns the table.

    Before each batch the agent gives the lineage agent up to ``LINEAGE_CATCH_UP_SECONDS`` to read
    what was fetched (a seal or a deployment just published); traces are decided only once it has.

    ``after_batch()`` runs after every batch and timer tick (the drift partials are sent there).
    """
    pending = app.Table(PENDING_TABLE, partitions=partitions, key_type=str,
                        help="halves of predictions waiting for a trace")
    joiner.table = pending

    async def flush_changelog_when_behind() -> None:
        if app.producer.buffer.size > CHANGELOG_BACKLOG_MESSAGES:
            await app.producer.flush()

    joiner.flush_changelog = flush_changelog_when_behind
    metrics = joiner.metrics

    @pending.on_recover
    async def resume_from_recovered_state() -> None:
        joiner.rebuild(list(pending.data.items()))
        await resume_positions(app, topic.get_topic_name(), joiner.positions, offsets, pending.data.items())
        log.info("join table recovered: %d entries; last decided offsets %s", len(pending.data),
                 joiner.positions.decided)

    async def handle_batch(events: list[EventT[bytes]]) -> None:
        joiner.lineage_current = await lineage.catch_up(LINEAGE_CATCH_UP_SECONDS)
        now = time.time()
        touched: dict[str, PendingEntry] = {}
        decided: set[int] = set()
        for event in events:
            message = event.message
            if not joiner.positions.admit(message.partition, message.offset, now=now):
                continue  # decided before, or past offsets Faust skipped (read again after the rewind)
            decided.add(message.partition)
            try:
                decoded = [catalog.decode(raw) for raw in events_in(catalog, event.value)]
            except SchemaError as exc:
                joiner.dead_letter(event, type(exc).__name__, str(exc))
                continue
            try:
                joiner.take(decoded, touched, partition=message.partition, now=now)
            except Exception as exc:  # a bug or a bad value must not stop the join for every later event
                log.exception("join failed for %s[%s]@%s", message.topic, message.partition, message.offset)
                joiner.dead_letter(event, "JoinFailed", f"join failed: {type(exc).__name__}: {exc}")
        for prediction_id, entry in touched.items():
            joiner._guarded_advance(prediction_id, entry, now=now)
        joiner.record_positions(decided)
        metrics.pending.set(len(pending.data))
        await joiner.flush()
        await seek_back(app, topic.get_topic_name(), joiner.positions, metrics, now=now)
        await after_batch()

    @app.agent(topic, name="join")
    async def join(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(batch_size, within=batch_within):
            await handle_batch(list(events))

    @app.timer(tick_interval(joiner.timing), name="join-deadlines")
    async def on_tick() -> None:
        assigned = app.consumer.assignment()
        name = topic.get_topic_name()
        joiner.lineage_current = lineage.is_current()
        joiner.on_timer(now=time.time(), owns=lambda partition: TP(name, partition) in assigned,
                        caught_up=lambda partition: _caught_up(app, TP(name, partition),
                                                               joiner.positions.decided.get(partition)))
        await joiner.flush()
        await seek_back(app, name, joiner.positions, metrics, now=time.time())
        await after_batch()

    return pending


def _caught_up(app: faust.App, tp: TP, decided: int | None) -> bool:
    """Whether every message of ``tp`` up to the end seen at the last fetch is decided.

    Offsets fetched but still waiting in Faust's buffers do not count: their events are not in
    the table yet. Without a recovered position or a decided event for ``tp`` it is not caught
    up: a lone half on a partition that stays idle then waits for the next event there.
    """
    end = log_end(app, tp)  # not known (yet): assume behind, the next tick asks again
    return decided is not None and end is not None and decided + 1 >= end
