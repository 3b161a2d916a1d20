"""The lineage agent: Deployment, ModelVersion and RunEvent events into lineage state.

Why a ``GlobalTable``: the join agent on every worker must resolve any endpoint, model and run,
but the lineage topic is split across workers by subject, and Deployments are keyed by model
version, not endpoint. Each worker writes the entries of its lineage partitions into one
GlobalTable; Faust gives every worker every changelog partition, so all workers converge on the
same entries, and a restarted worker recovers them from the changelog.

State: Faust's Table API, used as Faust means it (``table[key] = value`` inside the agent, one
event at a time, so Faust writes the changelog and recovers the table from it). The store is
Faust's in-memory one, rebuilt from the changelog at every start (tests/integration/
test_processors_kill.py kills a worker and checks the lineage a restarted one resolves); lineage
is small (entries per model version, run and deployment), so it needs no store larger than memory.

Entries are written so that two workers never read-modify-write the same key (one key per
Deployment event; a model or run is only ever written by the worker owning its partition), so
the last-writer-wins changelog loses nothing. Each worker mirrors the table into a
:class:`~provline.stream_processors.lineage.LineageIndex` (an endpoint's deployments sorted by time) from
three places: its own writes, other workers' changelog records (``on_changelog_event``) and, once
recovery ends, the recovered table (which covers stores that skip replaying old records).

The changelog has one partition and ``recovery_buffer_size=1``, as Faust advises for a
GlobalTable shared by several app instances; lineage is low-volume.

A lineage event Faust skips would leave traces with the wrong model version, so, as in the join,
the table also holds the last decided offset of each lineage partition (written after the
event's entries) and the agent seeks back over offsets Faust skipped (:mod:`provline.stream_processors.positions`).

The join decides no trace while this worker's lineage partitions are not read up to the end seen at
the last fetch (:attr:`LineageAgent.is_current`): lineage and inference are separate streams, and a
prediction joined before an already published rollback was read would get the version it replaced.
Lineage is read on other workers' partitions through the changelog; that path has no such check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, EventT

from provline.schemas.errors import SchemaError
from provline.schemas.serde import Catalog
from provline.stream_processors.dead_letters import DeadLetters
from provline.stream_processors.lineage import LINEAGE_EVENT_KINDS, LineageIndex
from provline.stream_processors.metrics import ProcessorMetrics
from provline.stream_processors.positions import (
    REWIND_RETRY_SECONDS,
    Positions,
    is_position_key,
    position_key,
    positions_in,
)
from provline.stream_processors.rewind import assigned_partitions, log_end, seek_back

log = logging.getLogger(__name__)
LINEAGE_TABLE = "lineage"
CATCH_UP_POLL_SECONDS = 0.005


def read_to_end(decided: dict[int, int], ends: dict[int, int | None]) -> bool:
    """Whether every partition's events up to its end (None: not fetched yet) are decided. Pure."""
    for partition, end in ends.items():
        if end is None:
            return False
        last = decided.get(partition)
        if end > (last + 1 if last is not None else 0):
            return False
    return True


@dataclass(frozen=True)
class LineageAgent:
    """This worker's lineage: its index, and whether it has read its lineage partitions to the end."""

    index: LineageIndex
    app: faust.App
    topic: str
    positions: Positions

    def is_current(self) -> bool:
        """Whether every lineage event fetched so far on this worker's partitions is in the index."""
        ends = {partition: log_end(self.app, TP(self.topic, partition))
                for partition in assigned_partitions(self.app, self.topic)}
        return read_to_end(self.positions.decided, ends)

    async def catch_up(self, within: float) -> bool:
        """Wait up to ``within`` seconds, yielding to the lineage agent, for :meth:`is_current`; its answer."""
        deadline = time.monotonic() + within
        while not self.is_current():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(CATCH_UP_POLL_SECONDS)
        return True


def register_lineage_agent(
    app: faust.App, *, topic: faust.TopicT, catalog: Catalog, dead_letters: DeadLetters, metrics: ProcessorMetrics
) -> LineageAgent:
    """Add the lineage table and agent to ``app``; returns this worker's view of it."""
    index = LineageIndex()
    positions = Positions()
    name = topic.get_topic_name()

    async def on_changelog_event(event: EventT[Any]) -> None:
        if not is_position_key(str(event.key)):
            index.apply(str(event.key), event.value)

    table = app.GlobalTable(
        LINEAGE_TABLE,
        partitions=1,
        use_partitioner=True,
        recovery_buffer_size=1,
        on_changelog_event=on_changelog_event,
        help="lineage entries (deployment/…, model/…, run/…) shared by all workers",
    )

    @table.on_recover
    async def rebuild_index() -> None:
        for key, value in table.items():
            if not is_position_key(str(key)):
                index.apply(str(key), value)
        mine = assigned_partitions(app, name)
        positions.reset({partition: offset for partition, offset in positions_in(table.items()).items()
                         if partition in mine}, now=time.time())
        log.info("lineage index recovered: %d entries; last decided offsets %s", len(index), positions.decided)

    async def handle(event: EventT[bytes]) -> None:
        try:
            decoded = catalog.decode(event.value)
        except SchemaError as exc:
            dead_letters.send(event, type(exc).__name__, str(exc))
            return
        if decoded.record in LINEAGE_EVENT_KINDS:
            for key, value in index.ingest(decoded.record, decoded.value):
                table[key] = value

    @app.agent(topic, name="lineage")
    async def lineage(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            if positions.admit(message.partition, message.offset, now=time.time()):
                dead = dead_letters.count
                try:
                    await handle(event)
                except Exception as exc:  # one bad event must not stop lineage for every later one
                    log.exception("lineage failed for %s[%s]@%s", message.topic, message.partition, message.offset)
                    dead_letters.send(event, "LineageFailed", f"lineage indexing failed: {type(exc).__name__}: {exc}")
                if dead_letters.count != dead:
                    await dead_letters.producer.flush()  # the dead letter is out before the position passes it
                table[position_key(message.partition)] = {"offset": message.offset}
            await seek_back(app, name, positions, metrics, now=time.time())

    @app.timer(REWIND_RETRY_SECONDS, name="lineage-rewinds")
    async def retry_rewinds() -> None:  # the lineage topic is quiet: a gap may see no later event
        await seek_back(app, name, positions, metrics, now=time.time())

    return LineageAgent(index=index, app=app, topic=name, positions=positions)
