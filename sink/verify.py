"""Integrity checks of stored events: hash chains per producer session and signatures. Pure.

A session's stored events are walked in event-id order (UUIDv7, creation order) with the content
taken from ``raw``, the exact Kafka bytes. The first record that does not decode or whose content
does not match its hash is *altered*; one whose ``prev_hash`` names another stored event of the
session is *reordered*; one whose ``prev_hash`` names no stored event follows a *missing* one.
A row whose indexed columns disagree with its raw event is *altered* too.

Events are checked one at a time, so a session of any length is verified in bounded memory; only
when a link breaks is the session searched for the hash it names (``hash_stored``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from provline.schemas import Catalog, SchemaError
from provline.schemas.integrity import event_hash, signature_valid

ALTERED, MISSING, REORDERED, UNSIGNED, BAD_SIGNATURE = "altered", "missing", "reordered", "unsigned", "bad-signature"


@dataclass(frozen=True)
class Finding:
    session: str
    index: int  # position in the session's event-id order
    event_id: str
    table: str
    problem: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decode(catalog: Catalog, raw: bytes) -> tuple[str, dict[str, Any]] | str:
    try:
        decoded = catalog.decode(bytes(raw))
    except SchemaError as exc:
        return f"the stored bytes do not decode: {exc}"
    return decoded.record, decoded.value


def verify_session(
    catalog: Catalog, session: str, events: Iterable[Mapping[str, Any]], *,
    public_key: Ed25519PublicKey | None = None, hash_stored: Callable[[str], bool] | None = None,
) -> Finding | None:
    """The first problem in one session's stored events (rows with table, event_id, hash, raw), or None.

    ``events`` must be in event-id order; they are read one at a time. ``hash_stored`` tells
    whether the session has a stored event with a given hash (asked only when a link breaks, to
    tell reordered from missing); without it ``events`` are held in memory and searched. With
    ``public_key`` every event must carry a valid signature.
    """
    if hash_stored is None:
        events = list(events)
        declared = {item[1]["hash"] for item in (_decode(catalog, row["raw"]) for row in events)
                    if not isinstance(item, str)}
        hash_stored = declared.__contains__
    previous: str | None = None
    for index, row in enumerate(events):
        def finding(problem: str, detail: str, row: Mapping[str, Any] = row, index: int = index) -> Finding:
            return Finding(session, index, str(row["event_id"]), str(row.get("table", "")), problem, detail)

        item = _decode(catalog, row["raw"])
        if isinstance(item, str):
            return finding(ALTERED, item)
        kind, value = item
        link = value.get("prev_hash")
        if link != previous:
            if link is not None and hash_stored(link):
                return finding(REORDERED, (
                    f"links to {link[:16]}…, an event stored elsewhere in the session, not to the one before it "
                    f"({(previous or 'none')[:16]}…): events were moved or swapped"
                ))
            if link is None:
                return finding(REORDERED, "starts a chain (prev_hash null) but is not the session's first event")
            return finding(MISSING, (
                f"links to {link[:16]}…, which no stored event of the session has: the event before this one is "
                "missing (deleted, or expired by a retention TTL)"
            ))
        computed = event_hash(catalog, kind, value)
        if computed != value.get("hash"):
            return finding(ALTERED, f"content hashes to {computed[:16]}… but claims {str(value.get('hash'))[:16]}…")
        if value["event_id"] != row["event_id"] or value["hash"] != row.get("hash", value["hash"]):
            return finding(ALTERED, (
                f"the row's columns (event_id {row['event_id']}) disagree with its stored raw event "
                f"({value['event_id']})"
            ))
        if public_key is not None:
            if not value.get("signature"):
                return finding(UNSIGNED, "no signature, but a producer public key is configured")
            if not signature_valid(public_key, value):
                return finding(BAD_SIGNATURE, "the signature does not verify with the configured public key")
        previous = value["hash"]
    return None


def verify_event(
    catalog: Catalog, raw: bytes, *, event_id: str | None = None, public_key: Ed25519PublicKey | None = None
) -> str | None:
    """The problem with one event on its own (decode, hash, id, signature), or None. For bundles."""
    item = _decode(catalog, raw)
    if isinstance(item, str):
        return item
    kind, value = item
    if event_hash(catalog, kind, value) != value.get("hash"):
        return f"{kind} {value['event_id']}: content does not match its hash"
    if event_id is not None and value["event_id"] != event_id:
        return f"listed as {event_id} but the event is {value['event_id']}"
    if public_key is not None and not signature_valid(public_key, value):
        return f"{kind} {value['event_id']}: missing or invalid signature"
    return None
