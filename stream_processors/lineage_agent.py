"""The lineage agent: Deployment, ModelVersion and RunEvent events into lineage state.

Why a ``GlobalTable``: the join agent on every worker must resolve any endpoint, model and run,
but the lineage topic is split across workers by subject, and Deployments are keyed by model
version, not endpoint. Each worker writes the entries of its lineage partitions into one
GlobalTable; Faust gives every worker every changelog partition, so all workers converge on the
same entries, and a restarted worker recovers them from the changelog (it survives restarts
with the in-memory store, and with RocksDB too).

Entries are written so that two workers never read-modify-write the same key (one key per
Deployment event; a model or run is only ever written by the worker owning its partition), so
the last-writer-wins changelog loses nothing. Each worker mirrors the table into a
:class:`~stream_processors.lineage.LineageIndex` (an endpoint's deployments sorted by time) from
three places: its own writes, other workers' changelog records (``on_changelog_event``) and, once
recovery ends, the recovered table (which covers stores that skip replaying old records).

The changelog has one partition and ``recovery_buffer_size=1``, as Faust advises for a
GlobalTable shared by several app instances; lineage is low-volume.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.types import EventT

from schemas.errors import SchemaError
from schemas.serde import Catalog
from stream_processors.dead_letters import DeadLetters
from stream_processors.lineage import LINEAGE_EVENT_KINDS, LineageIndex

log = logging.getLogger(__name__)
LINEAGE_TABLE = "lineage"


def register_lineage_agent(
    app: faust.App, *, topic: faust.TopicT, catalog: Catalog, dead_letters: DeadLetters
) -> LineageIndex:
    """Add the lineage table and agent to ``app``; returns this worker's index of it."""
    index = LineageIndex()

    async def on_changelog_event(event: EventT[Any, Any]) -> None:
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
            index.apply(str(key), value)
        log.info("lineage index recovered: %d entries", len(index))

    async def handle(event: EventT[bytes, bytes]) -> None:
        try:
            decoded = catalog.decode(event.value)
        except SchemaError as exc:
            await dead_letters.send(event, str(exc))
            return
        if decoded.record in LINEAGE_EVENT_KINDS:
            for key, value in index.ingest(decoded.record, decoded.value):
                table[key] = value

    @app.agent(topic, name="lineage")
    async def lineage(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as exc:  # one bad event must not stop lineage for every later one
                log.exception("lineage failed for %s[%s]@%s", event.message.topic, event.message.partition,
                              event.message.offset)
                await dead_letters.send(event, f"lineage indexing failed: {type(exc).__name__}: {exc}")

    return index
