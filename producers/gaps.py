"""Counting events lost by policy, so that missing audit data is itself recorded.

Drops are recorded as they happen (from any thread); :meth:`GapTracker.take` hands out one
DeliveryGap record per reason — count and time range — and starts counting afresh. The emitter
emits those records as soon as an event is accepted again, that is once delivery resumes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from provline.schemas.events import utcnow

log = logging.getLogger("provline.emitter")
EVENTS_DROPPED = Counter("provline_events_dropped_total", "Events lost, by reason", ["reason"])


@dataclass
class _Gap:
    count: int
    first: datetime
    last: datetime


class GapTracker:
    def __init__(self) -> None:
        self._gaps: dict[str, _Gap] = {}
        self._lock = threading.Lock()

    def record(self, reason: str, *, at: datetime | None = None) -> None:
        """Count one dropped event; logs the first drop of each gap, every drop goes to the metric."""
        when = at or utcnow()
        EVENTS_DROPPED.labels(reason).inc()
        with self._lock:
            gap = self._gaps.get(reason)
            if gap is None:
                self._gaps[reason] = _Gap(1, when, when)
                log.warning("provline is dropping events (%s); a DeliveryGap record will follow", reason)
            else:
                gap.count += 1
                gap.last = when

    def take(self) -> list[dict[str, Any]]:
        """DeliveryGap fields for every gap since the last call (usually none: a cheap check)."""
        if not self._gaps:
            return []
        with self._lock:
            gaps, self._gaps = self._gaps, {}
        return [{"dropped": g.count, "reason": reason, "first_time": g.first, "last_time": g.last}
                for reason, g in gaps.items()]
