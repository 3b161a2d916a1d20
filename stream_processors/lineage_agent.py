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

The join decides no trace until the lineage of *every* lineage partition, not only this worker's,
is in its index up to the ends the broker reported after the join's batch was fetched
(:meth:`LineageAgent.catch_up`): lineage and inference are separate streams, and a prediction
joined before an already published rollout was read would get the version it replaced. The other
workers' partitions count as read up to the last decided offset their changelog records carry,
so a worker whose peer is slow, stalled or dead holds its traces (for ``lineage_wait`` at most)
instead of deciding them from lineage it has not seen. The broker is asked for those ends one ask
after the other (:class:`~provline.stream_processors.rewind.BrokerOffsets`; a batch waits about one
round trip).
"""

from __future__ import annotations

import asyncio
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
from provline.stream_processors.rewind import BrokerOffsets, resume_positions, seek_back

log = logging.getLogger(__name__)
LINEAGE_TABLE = "lineage"
CATCH_UP_POLL_SECONDS = 0.005
ENDS_RETRY_SECONDS = 1.0  # after a failed ask: the broker or a partition leader is away
ASK_INTERVAL_SECONDS = 0.01  # between asks: a batch waits about one round trip for an ask sent after it


def read_to_end(decided: dict[int, int], ends: dict[int, int | None]) -> bool:
    """Whether every partition's events up to its end (None: not fetched yet) are decided. Pure."""
    for partition, end in ends.items():
        if end is None:
            return False
        last = decided.get(partition)
        if end > (last + 1 if last is not None else 0):
            return False
    return True


def merged_positions(*sources: dict[int, int]) -> dict[int, int]:
    """The highest decided offset of each partition over ``sources``. Pure."""
    merged: dict[int, int] = {}
    for source in sources:
        for partition, offset in source.items():
            merged[partition] = max(offset, merged.get(partition, offset))
    return merged


class LineageAgent:
    """This worker's lineage: its index, and whether it holds every lineage event published so far."""

    def __init__(self, *, index: LineageIndex, offsets: BrokerOffsets, topic: str, own: Positions,
                 peers: dict[int, int]) -> None:
        self.index = index
        self._offsets = offsets
        self._topic = topic
        self._own = own  # offsets this worker decided itself
        self._peers = peers  # offsets other workers decided, as their changelog records (already applied) say
        self._asked_at = -1.0  # monotonic time the last answered ask for the ends was sent
        self._needed_since = 0.0  # the latest join batch's start: ends asked before it may miss its lineage
        self._ends: dict[int, int | None] = {}

    def read_up_to(self) -> dict[int, int]:
        """The last offset of each lineage partition whose lineage is in the index."""
        return merged_positions(self._peers, self._own.decided)

    def is_current(self) -> bool:
        """Whether the index holds every lineage event the broker had when it was last asked, and
        that ask was sent after the latest join batch was fetched."""
        return self._asked_at >= self._needed_since and read_to_end(self.read_up_to(), self._ends)

    async def keep_asking(self) -> None:
        """Ask the broker for the lineage ends, one ask after the other, for as long as the worker runs."""
        failing = False
        while True:
            sent = time.monotonic()
            try:
                ends = await self._offsets.ends(self._topic)
            except Exception as exc:  # never stop asking: without answers every trace waits out lineage_wait
                if not failing:
                    log.warning("could not ask the broker for the lineage ends (%s); traces wait until it answers",
                                exc)
                failing = True
                await asyncio.sleep(ENDS_RETRY_SECONDS)
                continue
            if failing:
                log.info("the broker answers for the lineage ends again")
            failing = False
            self._ends, self._asked_at = dict(ends), sent
            await asyncio.sleep(ASK_INTERVAL_SECONDS)

    async def catch_up(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the index to hold every lineage event published before
        this call, yielding to the lineage agent; whether it does."""
        self._needed_since = time.monotonic()
        deadline = self._needed_since + within
        while not self.is_current():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(CATCH_UP_POLL_SECONDS)
        return True


def register_lineage_agent(
    app: faust.App, *, topic: faust.TopicT, catalog: Catalog, dead_letters: DeadLetters, metrics: ProcessorMetrics,
    offsets: BrokerOffsets,
) -> LineageAgent:
    """Add the lineage table and agent to ``app``; returns this worker's view of it."""
    index = LineageIndex()
    positions = Positions()
    peers: dict[int, int] = {}
    name = topic.get_topic_name()

    async def on_changelog_event(event: EventT[Any]) -> None:
        key = str(event.key)
        if not is_position_key(key):
            index.apply(key, event.value)
        elif event.value is not None:  # the entries this position follows were applied by earlier calls
            peers.update(merged_positions(peers, positions_in([(key, event.value)])))

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
        peers.update(merged_positions(peers, positions_in(table.items())))
        await resume_positions(app, name, positions, offsets, table.items())
        log.info("lineage index recovered: %d entries; last decided offsets %s", len(index), positions.decided)

    async def write(key: str, value: Any) -> None:
        try:
            table[key] = value
        except TypeError:
            # Faust picks the changelog partition of a write from aiokafka's cached metadata, which lacks
            # a topic created after its last refresh (the changelog, on a fresh start): refresh it and
            # write again (the failed write stored nothing). Not partitions_for(topic): that narrows the
            # producer's metadata to the topics it names, and batches of every other topic then wait
            # forever for a leader (a rebalance's commit hung on them in CI).
            await app.producer._ensure_producer().client.force_metadata_update()
            table[key] = value

    async def handle(event: EventT[bytes]) -> None:
        try:
            decoded = catalog.decode(event.value)
        except SchemaError as exc:
            dead_letters.send(event, type(exc).__name__, str(exc))
            return
        if decoded.record in LINEAGE_EVENT_KINDS:
            for key, value in index.ingest(decoded.record, decoded.value):
                await write(key, value)

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
                await write(position_key(message.partition), {"offset": message.offset})
            await seek_back(app, name, positions, metrics, now=time.time())

    agent = LineageAgent(index=index, offsets=offsets, topic=name, own=positions, peers=peers)

    @app.task
    async def ask_for_lineage_ends() -> None:
        await agent.keep_asking()

    @app.timer(REWIND_RETRY_SECONDS, name="lineage-rewinds")
    async def retry_rewinds() -> None:  # the lineage topic is quiet: a gap may see no later event
        await seek_back(app, name, positions, metrics, now=time.time())

    return agent
