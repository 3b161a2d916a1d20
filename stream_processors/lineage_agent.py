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
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from faust.types import EventT

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
from provline.stream_processors.rewind import assigned_partitions, seek_back

log = logging.getLogger(__name__)
LINEAGE_TABLE = "lineage"


def register_lineage_agent(
    app: faust.App, *, topic: faust.TopicT, catalog: Catalog, dead_letters: DeadLetters, metrics: ProcessorMetrics
) -> LineageIndex:
    """Add the lineage table and agent to ``app``; returns this worker's index of it."""
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

    return index
