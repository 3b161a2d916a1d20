"""Hash chains over events: each producer session links its events by SHA-256.

``hash = SHA-256(Avro binary of the event with hash="" and signature=null)``; the encoding
includes ``prev_hash``, so changing, removing or reordering any event breaks the chain from
that event on. :class:`HashChain` is not thread-safe: the emitter seals under its own lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from schemas.serde import Catalog


def event_hash(catalog: Catalog, kind: str, value: dict[str, Any]) -> str:
    unsealed = {**value, "hash": "", "signature": None}
    return hashlib.sha256(catalog.encode_body(kind, unsealed)).hexdigest()


@dataclass
class HashChain:
    """The running chain of one producer session."""

    catalog: Catalog
    last_hash: str | None = None

    def seal(self, kind: str, value: dict[str, Any]) -> dict[str, Any]:
        """Set ``prev_hash`` and ``hash`` on ``value`` (in place) and advance the chain."""
        value["prev_hash"] = self.last_hash
        value["hash"] = event_hash(self.catalog, kind, value)
        self.last_hash = value["hash"]
        return value


def first_break(catalog: Catalog, chain: list[tuple[str, dict[str, Any]]]) -> tuple[int, str] | None:
    """Index and reason of the first event in a session's ordered events that breaks the chain."""
    previous: str | None = None
    for index, (kind, value) in enumerate(chain):
        if value.get("prev_hash") != previous:
            return index, (
                f"prev_hash {value.get('prev_hash')} does not link to {previous}: an event is missing or moved"
            )
        if event_hash(catalog, kind, value) != value.get("hash"):
            return index, "content does not match its hash: the event was altered"
        previous = value["hash"]
    return None
