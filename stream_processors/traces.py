"""Sealing and encoding PredictionTrace events; pure apart from the clock and the event id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.events import new_envelope, producer_identity
from schemas.integrity import HashChain
from schemas.serde import Catalog

TRACE_KIND = "PredictionTrace"
PRODUCER_NAME = "stream_processors"


class TraceEncoder:
    """Turns trace fields into sealed, encoded PredictionTrace events of one producer session.

    Each encoded trace extends the session's hash chain, so encode traces in the order they are
    sent. Not thread-safe (one per event loop).
    """

    def __init__(self, catalog: Catalog, *, session_id: str) -> None:
        self.catalog = catalog
        self.producer = producer_identity(PRODUCER_NAME, session_id)
        self.chain = HashChain(catalog)

    def encode(self, fields: Mapping[str, Any]) -> bytes:
        value: dict[str, Any] = {**new_envelope(self.producer), **fields}
        self.chain.seal(TRACE_KIND, value)
        return self.catalog.encode(TRACE_KIND, value)
