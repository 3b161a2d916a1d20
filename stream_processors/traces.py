"""Sealing and encoding the processors' derived events (PredictionTrace, DriftMetric).

Pure apart from the clock. A derived event's id is a pure function of what it is about
(:func:`stable_event_id`), so re-emitting it after a crash gives the same id, and the sink's dedup
by event id collapses the copies.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from provline.schemas.events import new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.schemas.serde import Catalog

TRACE_KIND = "PredictionTrace"
DRIFT_KIND = "DriftMetric"
PRODUCER_NAME = "stream_processors"


def stable_event_id(namespace: str, subject: str, time_us: int) -> str:
    """A UUIDv7-shaped id that depends only on its arguments, time-ordered like every event id.

    48 bits of milliseconds from ``time_us``, the version and variant bits, and 74 bits of
    SHA-256 over ``namespace`` and ``subject``.
    """
    digest = int.from_bytes(hashlib.sha256(f"{namespace}\x00{subject}".encode()).digest()[:10], "big")
    millis = (time_us // 1000) & ((1 << 48) - 1)
    rand_a = (digest >> 68) & 0xFFF
    rand_b = digest & ((1 << 62) - 1)
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


class TraceEncoder:
    """Turns derived-event fields into sealed, encoded events of one producer session.

    Each encoded event extends the session's hash chain, so encode events in the order they are
    sent. Not thread-safe (one per event loop).
    """

    def __init__(self, catalog: Catalog, *, session_id: str) -> None:
        self.catalog = catalog
        self.producer = producer_identity(PRODUCER_NAME, session_id)
        self.chain = HashChain(catalog)

    def encode(self, fields: Mapping[str, Any], *, kind: str = TRACE_KIND, event_id: str | None = None) -> bytes:
        value: dict[str, Any] = {**new_envelope(self.producer), **fields}
        if event_id is not None:
            value["event_id"] = event_id
        return self.catalog.header(kind) + self.chain.seal_encode(kind, value)
