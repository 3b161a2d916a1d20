"""What ``provline verify`` checks, as pure functions over what the store holds. The I/O is in
:mod:`provline.sink.verifier`.

Every stored event is checked against its own bytes (``raw``, exactly as read from Kafka): it must
decode, its hash must be the SHA-256 of those bytes as written (any schema revision), its row's
envelope columns must be the event's, and with trusted keys configured it must be signed by a key
trusted for its producer's name (never a key found in the data). A session's events must form one
chain by their own links (prev_hash -> hash), in whatever order they are stored: one start, no
event linking to a missing one, no two events linking to the same one, nothing after a final seal.
Every column an answer is built from is re-derived from the verified raw event by the sink's own
SQL and compared; so are the derived tables. An anchor (published outside the store) names, per
session, a count and a head that must still be there.

Every problem is reported, not only the first.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from provline.schemas import Catalog, SchemaError
from provline.schemas.integrity import SigningKeyError, body_digest, load_public_key, signature_of_hash_valid

ALTERED = "altered"  # the stored bytes do not decode, or do not hash to their hash
COLUMNS = "columns"  # a stored column disagrees with the event it was made from
MISSING = "missing"  # an event links to one the session does not have
DEAD_LETTERED = "dead-lettered"  # ... which was never stored: a stored dead letter held it (sink/sql/0013)
FORK = "fork"  # two events link to the same one: an event was inserted or replaced
START = "start"  # the session's chain has no start, or more than one
AFTER_FINAL = "after-final"  # events follow the session's final seal
REPLACED = "replaced"  # one event id was stored with different contents (the ledger remembers)
UNSIGNED = "unsigned"
UNTRUSTED = "untrusted"  # no trusted key for the producer
BAD_SIGNATURE = "bad-signature"
TRUNCATED = "truncated"  # fewer events, or not the head, a seal or an anchor vouches for
SESSION_DELETED = "session-deleted"  # an anchored session has no stored event
DERIVED = "derived"  # a derived row (prediction_index, lineage_edges) that its events do not give, or the reverse


@dataclass(frozen=True)
class Finding:
    problem: str
    detail: str
    session: str = ""
    event_id: str = ""
    table: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trust:
    """The public keys trusted for each producer name; empty: signatures are not checked."""

    keys: Mapping[str, tuple[Ed25519PublicKey, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, keys: Mapping[str, Iterable[str]]) -> Trust:
        """From ``{producer name: [public key, PEM or base64]}``; ValueError naming a key that cannot be read."""
        loaded = {}
        for producer, texts in keys.items():
            try:
                loaded[producer] = tuple(load_public_key(text) for text in texts)
            except SigningKeyError as exc:
                raise ValueError(f"trusted key of producer {producer!r}: {exc}") from exc
        return cls(loaded)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


def check_signature(trust: Trust, producer: str, digest: str, signature: bytes | None) -> tuple[str, str] | None:
    """(problem, detail) when ``signature`` is not a valid signature of ``digest`` by a key trusted for ``producer``."""
    if not trust.enabled:
        return None
    keys = trust.keys.get(producer)
    if not keys:
        return UNTRUSTED, (f"no key is trusted for producer {producer!r}; add it to PROVLINE_EVIDENCE__TRUSTED_KEYS "
                           "or the event is not what it claims")
    if not signature:
        return UNSIGNED, f"not signed, but producer {producer!r} has trusted keys"
    if not any(signature_of_hash_valid(key, digest, signature) for key in keys):
        return BAD_SIGNATURE, f"the signature does not verify with any key trusted for producer {producer!r}"
    return None


@dataclass(frozen=True)
class CheckedEvent:
    """An event as verified from its bytes: what the chain and derived checks build on."""

    kind: str
    value: dict[str, Any]


def check_event(catalog: Catalog, row: Mapping[str, Any], trust: Trust) -> tuple[list[Finding], CheckedEvent | None]:
    """Findings about one stored row (table, event_id, producer_session, producer_name, hash, prev_hash, raw),
    and the event decoded from its bytes when they decode."""
    raw = bytes(row["raw"])
    session, event_id, table = str(row.get("producer_session", "")), str(row["event_id"]), str(row.get("table", ""))

    def finding(problem: str, detail: str) -> Finding:
        return Finding(problem, detail, session, event_id, table)

    try:
        writer, start = catalog.writer_for(raw)
        decoded = catalog.decode(raw)
        seal = body_digest(raw[start:])
    except (SchemaError, ValueError) as exc:
        return [finding(ALTERED, f"the stored bytes are not an intact event: {exc}")], None
    value = decoded.value
    findings = []
    if not seal.intact:
        findings.append(finding(ALTERED, f"the bytes hash to {seal.computed_hash[:16]}… but claim "
                                         f"{seal.declared_hash[:16]}…: the event was altered"))
    stored = {"event_id": row["event_id"], "hash": row.get("hash"), "prev_hash": row.get("prev_hash"),
              "producer_session": row.get("producer_session"), "producer_name": row.get("producer_name")}
    actual = {"event_id": value["event_id"], "hash": value["hash"], "prev_hash": value.get("prev_hash"),
              "producer_session": value["producer"]["session_id"], "producer_name": value["producer"]["name"]}
    differing = sorted(name for name in stored if name in row and stored[name] != actual[name])
    if differing:
        findings.append(finding(COLUMNS, f"the row's {', '.join(differing)} disagree with its stored raw event"))
    problem = check_signature(trust, actual["producer_name"], seal.declared_hash, seal.signature)
    if problem is not None:
        findings.append(finding(*problem))
    return findings, CheckedEvent(writer.record, value)


@dataclass(frozen=True)
class Links:
    """A session's chain shape, from its stored events' links (computed by the store, set-wise)."""

    events: int
    roots: list[str]  # event ids with no prev_hash
    dangling: list[tuple[str, str]]  # (event id, the prev_hash no stored event has)
    forks: list[tuple[str, list[str]]]  # (prev_hash, the event ids that all link to it)
    heads: list[tuple[str, str]]  # (event id, hash) of events no event links to


@dataclass(frozen=True)
class Seals:
    """What a session's seals vouch for: the largest sealed count, and the final seal if any."""

    sealed_count: int | None = None
    final_event_id: str | None = None
    final_hash: str | None = None
    after_final: list[str] = field(default_factory=list)  # event ids linking to the final seal


def link_findings(session: str, links: Links, seals: Seals, dead_lettered: Mapping[str, str] | None = None,
                  ) -> list[Finding]:
    """Problems of one session's chain; an intact chain has one start and one head, and no gaps or forks.
    ``dead_lettered``: of the hashes events link to that the session lacks, those a stored dead letter held
    (and the ledger never recorded stored), with how the dead letter names itself: gaps, not deletions."""
    dead_lettered = dead_lettered or {}
    findings = []
    if not links.roots:
        findings.append(Finding(START, "no stored event starts the chain (prev_hash null): its first events are "
                                       "missing", session))
    elif len(links.roots) > 1:
        findings += [Finding(START, f"{len(links.roots)} events start a chain under one session id: events of "
                                    "another chain were added", session, event_id) for event_id in links.roots]
    findings += [Finding(DEAD_LETTERED, f"links to {prev_hash[:16]}…, which was never stored: the event before this "
                                        f"one was dead-lettered, {dead_lettered[prev_hash]}", session, event_id)
                 if prev_hash in dead_lettered else
                 Finding(MISSING, f"links to {prev_hash[:16]}…, which no stored event of the session has: the "
                                  "event before this one is missing (deleted, or expired by a retention TTL)",
                         session, event_id) for event_id, prev_hash in links.dangling]
    findings += [Finding(FORK, f"{len(events)} events link to the same predecessor {prev_hash[:16]}…: an event was "
                               "inserted or replaced", session, events[0]) for prev_hash, events in links.forks]
    findings += [Finding(AFTER_FINAL, "links to the session's final seal: nothing can follow it, this was added",
                         session, event_id) for event_id in seals.after_final]
    gaps = len({prev_hash for _, prev_hash in links.dangling} & dead_lettered.keys())
    if seals.sealed_count is not None and links.events + gaps < seals.sealed_count + 1:
        never_stored = f" and {gaps} dead-lettered" if gaps else ""
        findings.append(Finding(TRUNCATED, f"the session's seals vouch for {seals.sealed_count + 1} events (the last "
                                           f"seal included) but {links.events} are stored{never_stored}: events were "
                                           "deleted", session))
    return findings


def replaced_findings(replaced: Iterable[tuple[str, str, int]]) -> list[Finding]:
    """From the ledger: (event id, table, number of different contents stored under it)."""
    return [Finding(REPLACED, f"{contents} different contents were stored under this event id; the store keeps "
                              "the last: an event was re-published to replace another", "", event_id, table)
            for event_id, table, contents in replaced]


def deleted_findings(deleted: Iterable[tuple[str, str, str]]) -> list[Finding]:
    """From the ledger: (event id, table, session) of events once stored that no table holds now."""
    return [Finding(MISSING, f"the ledger recorded this event stored in {table}; no table holds it now: it was "
                             "deleted (or expired under a retention verify was not told of)", session, event_id, table)
            for event_id, table, session in deleted]


def column_findings(table: str, differing: Iterable[tuple[str, str, list[str]]]) -> list[Finding]:
    """From the re-derivation: (event id, session, columns that differ from what the raw event gives)."""
    return [Finding(COLUMNS, f"{', '.join(columns)} differ from what its stored raw event gives: the row or "
                              "its raw event was altered",
                    session, event_id, table) for event_id, session, columns in differing]


def derived_findings(table: str, missing: Iterable[str], extra: Iterable[str]) -> list[Finding]:
    """Rows of a derived table its events give but it lacks (``missing``), and rows no event gives (``extra``)."""
    return ([Finding(DERIVED, f"missing: {row} follows from the stored events", table=table) for row in missing]
            + [Finding(DERIVED, f"not derived from any stored event: {row}", table=table) for row in extra])


@dataclass(frozen=True)
class AnchoredSession:
    session: str
    count: int  # events of the session at anchor time
    head: str  # hash of its last event then
    stored_until: str | None = None  # ISO time (the store's clock) its last stored event was ledgered, then


def anchor_findings(anchored: Iterable[AnchoredSession], stored_events: Mapping[str, int],
                    head_stored: Mapping[str, bool], anchor_name: str) -> list[Finding]:
    """Problems of the store against an anchor: a session it names is gone, or no longer has the events up
    to its anchored head (``head_stored[session]``: whether the session has an event with that hash)."""
    findings = []
    for item in anchored:
        events = stored_events.get(item.session, 0)
        if events == 0:
            findings.append(Finding(SESSION_DELETED, f"anchor {anchor_name} holds this session ({item.count} events); "
                                                     "the store has none of them", item.session))
        elif not head_stored.get(item.session, False):
            findings.append(Finding(TRUNCATED, f"anchor {anchor_name}: the session's head then ({item.head[:16]}…, "
                                               f"event {item.count}) is not stored: it was truncated or rewritten",
                                    item.session))
        elif events < item.count:
            findings.append(Finding(TRUNCATED, f"anchor {anchor_name}: {item.count} events then, {events} stored now",
                                    item.session))
    return findings


def raw_bytes(text: str) -> bytes:
    """The bytes of a base64 ``raw`` from a bundle; ValueError naming the problem."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from exc
