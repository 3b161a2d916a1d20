"""Sealing and encoding the processors' derived events (PredictionTrace, DriftMetric) and their seals.

Pure apart from the clock. A derived event's id is a pure function of what it is about
(:func:`~provline.schemas.events.stable_event_id`), so re-emitting it after a crash gives the same
id, and the sink's dedup by event id collapses the copies. Like every producer, a worker signs its
events with its own key
(``PROVLINE_SIGNING__KEY``) and seals its session with SessionSeal events (:meth:`TraceEncoder.seal`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provline.schemas.events import new_envelope, producer_identity
from provline.schemas.events import stable_event_id as stable_event_id  # re-exported: it lived here
from provline.schemas.integrity import HashChain
from provline.schemas.serde import Catalog

TRACE_KIND = "PredictionTrace"
DRIFT_KIND = "DriftMetric"
SEAL_KIND = "SessionSeal"
PRODUCER_NAME = "stream_processors"
DEFAULT_SEAL_INTERVAL_S = 60.0


class TraceEncoder:
    """Turns derived-event fields into sealed, encoded events of one producer session.

    Each encoded event extends the session's hash chain, so encode events in the order they are
    sent. Not thread-safe (one per event loop).
    """

    def __init__(self, catalog: Catalog, *, session_id: str | None = None, signer: Ed25519PrivateKey | None = None,
                 seal_interval_s: float = DEFAULT_SEAL_INTERVAL_S) -> None:
        self.catalog = catalog
        self.seal_interval_s = seal_interval_s
        self._signer = signer
        self._start_session(session_id or str(uuid.uuid4()))

    def _start_session(self, session_id: str) -> None:
        self.session_id = session_id
        self.producer = producer_identity(PRODUCER_NAME, session_id)
        self.chain = HashChain(self.catalog, signer=self._signer)
        self._sealed_count = 0
        self._last_seal = time.monotonic()
        self._final = False

    def encode(self, fields: Mapping[str, Any], *, kind: str = TRACE_KIND, event_id: str | None = None) -> bytes:
        if self._final:  # nothing may follow a final seal: what comes after it starts a session of its own
            self._start_session(str(uuid.uuid4()))
        value: dict[str, Any] = {**new_envelope(self.producer), **fields}
        if event_id is not None:
            value["event_id"] = event_id
        return self.catalog.header(kind) + self.chain.seal_encode(kind, value)

    def seal_due(self, now: float) -> bool:
        """Whether the session has events since its last seal and the seal interval has passed."""
        return self.chain.count > self._sealed_count and now - self._last_seal >= self.seal_interval_s

    def seal(self, *, now: float, final: bool = False) -> bytes:
        """The encoded SessionSeal of the chain so far (send it to the lineage topic, keyed by session id)."""
        encoded = self.encode({"count": self.chain.count, "final": final}, kind=SEAL_KIND)
        self._sealed_count, self._last_seal, self._final = self.chain.count, now, final
        return encoded
