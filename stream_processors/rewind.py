"""Seeking a partition back over offsets Faust skipped: the I/O side of :mod:`provline.stream_processors.positions`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import faust
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from faust.types import TP

from provline.config import KafkaSettings
from provline.stream_processors.metrics import ProcessorMetrics
from provline.stream_processors.positions import MAX_REWINDS, Positions, positions_in

log = logging.getLogger(__name__)
OFFSETS_TIMEOUT_SECONDS = 5.0
METADATA_REFRESH_SECONDS = 30.0


class BrokerOffsets:
    """Where partitions begin and end, as the broker has them now: one ListOffsets round trip per ask
    (librdkafka's admin client, answered on its own thread); a topic's partitions are looked up again
    every ``METADATA_REFRESH_SECONDS``."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        self._config = kafka.librdkafka(**{"client.id": client_id})
        self._client: AdminClient | None = None  # made on first use: building an app connects to nothing
        self._partitions: dict[str, tuple[float, list[int]]] = {}

    @property
    def _admin(self) -> AdminClient:
        if self._client is None:
            self._client = AdminClient(self._config)
        return self._client

    def _lookup_partitions(self, topic: str) -> list[int]:
        metadata = self._admin.list_topics(topic, timeout=OFFSETS_TIMEOUT_SECONDS).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        return sorted(metadata.partitions)

    async def _list(self, topic: str, partitions: list[int], spec: OffsetSpec) -> dict[int, int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets({TopicPartition(topic, partition): spec for partition in partitions},
                                           request_timeout=OFFSETS_TIMEOUT_SECONDS)
        return {tp.partition: (await asyncio.wrap_future(future)).offset for tp, future in futures.items()}

    async def ends(self, topic: str) -> dict[int, int]:
        """The end offset of every partition of ``topic``; KafkaException when the broker does not answer."""
        looked_up, partitions = self._partitions.get(topic, (float("-inf"), []))
        if time.monotonic() - looked_up >= METADATA_REFRESH_SECONDS:
            partitions = await asyncio.to_thread(self._lookup_partitions, topic)
            self._partitions[topic] = (time.monotonic(), partitions)
        return await self._list(topic, partitions, OffsetSpec.latest())

    async def starts(self, topic: str, partitions: set[int]) -> dict[int, int]:
        """The log start offset of each of ``partitions``; {} (logged) when the broker does not answer."""
        try:
            return await self._list(topic, sorted(partitions), OffsetSpec.earliest())
        except KafkaException as exc:
            log.warning("could not ask where %s%s begins (%s): their first events are taken as they come",
                        topic, sorted(partitions), exc)
            return {}


async def resume_positions(app: faust.App, topic: str, positions: Positions, offsets: BrokerOffsets,
                           entries: Iterable[tuple[Any, Any]]) -> None:
    """After a table's recovery: this worker's partitions of ``topic`` resume after the position recorded
    in ``entries`` (the table's), and those with none from their log start, asked from the broker (Faust's
    committed offset may lie past events it skipped)."""
    mine = assigned_partitions(app, topic)
    recorded = {partition: offset for partition, offset in positions_in(entries).items() if partition in mine}
    positions.reset(recorded, now=time.time(), starts=await offsets.starts(topic, mine - set(recorded)))


async def seek_back(app: faust.App, topic: str, positions: Positions, metrics: ProcessorMetrics, *,
                    now: float) -> None:
    """Seek the partitions of ``topic`` with a due gap back to their first undecided offset; never raises."""
    if not app.rebalancing:  # during a rebalance Faust pauses partitions: no event coming is no stall
        for partition in assigned_partitions(app, topic):
            end = log_end(app, TP(topic, partition))
            if end is not None:
                positions.check_stalled(partition, end, now=now)
    for rewind in positions.due_rewinds(now):
        if rewind.lost:
            log.error("offsets %d..%d of %s[%d] did not come back after %d rewinds; going on without them",
                      rewind.lost.start, rewind.lost.stop - 1, topic, rewind.partition, MAX_REWINDS)
            metrics.offsets_lost.inc(len(rewind.lost))
        else:
            log.warning("%s[%d]: Faust skipped offsets from %d on; reading them again",
                        topic, rewind.partition, rewind.offset)
            metrics.rewinds.inc()
        try:
            await app.consumer.seek_wait({TP(topic, rewind.partition): rewind.offset})
        except Exception:  # revoked meanwhile, or the broker is slow: the gap is asked for again later
            log.warning("could not seek %s[%d] to %d", topic, rewind.partition, rewind.offset, exc_info=True)


def log_end(app: faust.App, tp: TP) -> int | None:
    """The end offset of ``tp`` seen at the last fetch; None while not known (nothing fetched yet)."""
    try:
        return app.consumer.highwater(tp)
    except Exception:  # not assigned or not fetched yet
        return None


def assigned_partitions(app: faust.App, topic: str) -> set[int]:
    """This worker's partitions of ``topic`` in the current assignment."""
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
