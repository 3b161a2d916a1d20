"""Seeking a partition back over offsets Faust skipped: the I/O side of :mod:`provline.stream_processors.positions`."""

from __future__ import annotations

import logging

import faust
from faust.types import TP

from provline.stream_processors.metrics import ProcessorMetrics
from provline.stream_processors.positions import MAX_REWINDS, Positions

log = logging.getLogger(__name__)


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
