"""Which offsets of each partition an agent (join, lineage) has decided, and reading again what Faust skipped.

Pure logic, no I/O. The agents do not trust Faust's committed offsets: faust-streaming acks, so
may commit, messages it never hands to the agent (it skips messages fetched in an earlier
consumer generation, faust-streaming #216/#221/#223, and under load it was seen to drop a few
right after a recovery). The inference and lineage topics are neither compacted nor transactional,
so their offsets have no holes: an offset past the next one expected means messages were skipped.

:class:`Positions` admits each event's offset: the next expected one is decided, one below it was
decided already (a re-read) and is ignored, one above it opens a gap: it is ignored too, and the
agent seeks the partition back to the expected offset (:meth:`Positions.due_rewinds`). A skipped
tail has no later offset to give it away: a partition whose end lies past its last decided offset
while no event of it came for ``STALL_SECONDS`` is treated as a gap too (:meth:`Positions.check_stalled`).
A skipped head has no decided offset before it: a partition nobody decided anything of starts at its
log start (:meth:`Positions.reset`), not where Faust's committed offset says.
A needless rewind only re-reads events the agent then ignores. The last
decided offset per partition is kept in the agent's table, whose changelog carries it after the
entries it covers (:func:`position_key`), so a worker that takes a partition over knows where its
predecessor's decisions end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

REWIND_RETRY_SECONDS = 2.0  # a rewind that brought nothing back by then is asked for again
MAX_REWINDS = 10  # then the skipped offsets are taken to be gone from the topic (retention)
STALL_SECONDS = 10.0  # no event of a partition that has unread offsets for this long: they were skipped
POSITION_KEY_PREFIX = "\x00position:"  # no table key of the agents starts with NUL (HTTP header values exclude it)


class PositionRecord(TypedDict):
    """The value of a position record: the last offset of its partition the agent decided."""

    offset: int


def position_key(partition: int) -> str:
    """The table key of a partition's position record; its value is ``{"offset": last decided offset}``."""
    return f"{POSITION_KEY_PREFIX}{partition}"


def is_position_key(key: str) -> bool:
    return key.startswith(POSITION_KEY_PREFIX)


def positions_in(items: Iterable[tuple[str, Any]]) -> dict[int, int]:
    """The position records among a table's items: last decided offset per partition."""
    return {int(key[len(POSITION_KEY_PREFIX):]): value["offset"] for key, value in items if is_position_key(key)}


@dataclass
class Gap:
    expected: int  # the first offset not yet decided
    beyond: int  # the lowest offset seen past it
    rewinds: int = 0
    last_rewind: float = float("-inf")


@dataclass(frozen=True)
class Rewind:
    partition: int
    offset: int
    lost: range = range(0)  # offsets given up on: no rewind brought them back


class Positions:
    """Last decided offset per partition and the gaps waiting for a rewind. Not thread-safe."""

    def __init__(self, *, retry_seconds: float = REWIND_RETRY_SECONDS, max_rewinds: int = MAX_REWINDS,
                 stall_seconds: float = STALL_SECONDS) -> None:
        self.decided: dict[int, int] = {}
        self.starts: dict[int, int] = {}  # where partitions with no decided offset begin, when known
        self.gaps: dict[int, Gap] = {}
        self.seen: dict[int, float] = {}  # when an event of each partition last came
        self.retry_seconds = retry_seconds
        self.max_rewinds = max_rewinds
        self.stall_seconds = stall_seconds

    def reset(self, decided: dict[int, int], *, now: float, starts: dict[int, int] | None = None) -> None:
        """Start over from recovered positions (after a rebalance). A partition with no recorded position
        starts at its log start in ``starts`` (nobody decided any of it: Faust's committed offset may be past
        events it skipped); one in neither starts at whatever offset comes first."""
        self.decided = dict(decided)
        self.starts = {partition: offset for partition, offset in (starts or {}).items() if partition not in decided}
        self.gaps = {}
        self.seen = dict.fromkeys([*decided, *self.starts], now)

    def _expected(self, partition: int) -> int | None:
        last = self.decided.get(partition)
        return last + 1 if last is not None else self.starts.get(partition)

    def admit(self, partition: int, offset: int, *, now: float) -> bool:
        """Whether the event at ``offset`` is to be decided now; marks it decided if so."""
        self.seen[partition] = now
        expected = self._expected(partition)
        fresh = partition not in self.decided
        if expected is None or offset == expected or (fresh and offset < expected):
            self.decided[partition] = offset
            self.starts.pop(partition, None)
            self.gaps.pop(partition, None)
            return True
        if offset > expected:
            gap = self.gaps.get(partition)
            if gap is None:
                self.gaps[partition] = Gap(expected=expected, beyond=offset)
            else:
                gap.beyond = min(gap.beyond, offset)
        return False

    def check_stalled(self, partition: int, end: int, *, now: float) -> None:
        """Open a gap for ``partition`` if offsets before ``end`` (its log end) are undecided and none came
        for ``stall_seconds``."""
        expected = self._expected(partition)
        if expected is None or partition in self.gaps or end <= expected:
            return
        if now - self.seen.get(partition, now) >= self.stall_seconds:
            self.gaps[partition] = Gap(expected=expected, beyond=end)

    def due_rewinds(self, now: float) -> list[Rewind]:
        """Partitions to seek back to their first undecided offset, now; after ``max_rewinds`` that
        brought nothing back, the skipped offsets are given up (``lost``) and reading goes on past them."""
        due = []
        for partition, gap in list(self.gaps.items()):
            if now - gap.last_rewind < self.retry_seconds:
                continue
            if gap.rewinds >= self.max_rewinds:
                del self.gaps[partition]
                self.decided[partition] = gap.beyond - 1
                due.append(Rewind(partition, gap.beyond, lost=range(gap.expected, gap.beyond)))
                continue
            gap.rewinds += 1
            gap.last_rewind = now
            due.append(Rewind(partition, gap.expected))
        return due
