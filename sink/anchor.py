"""Anchors: a signed digest of every session's chain head, published where the store cannot rewrite it.

The store can be rewritten by whoever administers it: an event deleted from the end of a session,
or a whole session, leaves no broken link behind. An anchor is taken from time to time (``provline
anchor``): for each session whose chain is intact, its number of events and the hash of its last
one; the list, its Merkle root (like Certificate Transparency's signed tree heads) and an Ed25519
signature over the document are written somewhere else: a directory (a new file each time, never
overwritten) or an HTTP endpoint (an object-store key by PUT, an append-only log service by POST).
``provline verify --anchor`` loads them, checks their signatures with keys the verifier trusts (never
a key the document names), and checks that every anchored session still has its anchored head: a
deleted tail or session, or a consistent rewrite of a session, is then found.

Building and checking are pure; :func:`publish` and :func:`load` do the I/O.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provline.schemas.integrity import merkle_root
from provline.sink.verify import AnchoredSession

log = logging.getLogger(__name__)
FORMAT = "provline-anchor/1"
HTTP_TIMEOUT_S = 30.0
ANCHOR_RELOAD_S = 60.0  # provline serve reads the anchors again this often (they are taken every few minutes)


def leaf(session: AnchoredSession) -> bytes:
    return f"{session.session}\0{session.count}\0{session.head}".encode()


def root_of(sessions: Iterable[AnchoredSession]) -> str:
    return merkle_root([leaf(s) for s in sorted(sessions, key=lambda s: s.session)]).hex()


def _signed_part(document: Mapping[str, Any]) -> bytes:
    """The canonical bytes an anchor's signature covers: everything but the signature itself."""
    return json.dumps({k: v for k, v in document.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":")).encode()


def build(sessions: Iterable[AnchoredSession], signer: Ed25519PrivateKey, *,
          created: datetime | None = None) -> dict[str, Any]:
    """A signed anchor document of ``sessions``."""
    listed = sorted(sessions, key=lambda s: s.session)
    public = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    document: dict[str, Any] = {
        "format": FORMAT,
        "created": (created or datetime.now(UTC)).isoformat(),
        "sessions": [{"session": s.session, "count": s.count, "head": s.head}
                     | ({"stored_until": s.stored_until} if s.stored_until else {}) for s in listed],
        "root": root_of(listed),
        "public_key": base64.b64encode(public).decode(),  # for people; a verifier uses the keys it trusts
    }
    document["signature"] = base64.b64encode(signer.sign(_signed_part(document))).decode()
    return document


def check(document: Mapping[str, Any], trusted: Iterable[Ed25519PublicKey]) -> tuple[list[AnchoredSession], list[str]]:
    """The anchored sessions of ``document``, and its problems (empty: it is intact and signed by a trusted key)."""
    keys = list(trusted)
    problems = []
    if document.get("format") != FORMAT:
        return [], [f"not a provline anchor (format {document.get('format')!r}, expected {FORMAT})"]
    try:
        sessions = [AnchoredSession(str(s["session"]), int(s["count"]), str(s["head"]),
                                    datetime.fromisoformat(s["stored_until"]).isoformat()
                                    if s.get("stored_until") else None)
                    for s in document["sessions"]]
    except (KeyError, TypeError, ValueError) as exc:
        return [], [f"its session list is malformed: {exc}"]
    if root_of(sessions) != document.get("root"):
        problems.append("its Merkle root does not match its sessions: it was altered")
    if not keys:
        problems.append("no trusted anchor key: set PROVLINE_ANCHOR__PUBLIC_KEYS (or --anchor-public-key); "
                        "an anchor's own key proves nothing")
    else:
        try:
            signature = base64.b64decode(str(document.get("signature", "")), validate=True)
        except ValueError:
            signature = b""
        if not any(_verifies(key, signature, _signed_part(document)) for key in keys):
            problems.append("its signature does not verify with any trusted anchor key")
    return sessions, problems


def _verifies(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def anchored_sessions(heads: Iterable[Mapping[str, Any]]) -> list[AnchoredSession]:
    """The sessions to anchor from the store's heads (``GET /v1/anchor``, :func:`provline.sink.verifier.anchor_heads`):
    the intact ones."""
    return [AnchoredSession(str(h["session"]), int(h["events"]), str(h["head"]), h.get("stored_until"))
            for h in heads if h["intact"]]


@dataclass(frozen=True)
class AnchorHead:
    """A session's head as the newest intact, trusted anchor listing the session recorded it."""

    session: str
    head: str  # hash of the session's last event at anchor time
    count: int
    created: str
    name: str  # where the anchor was read from
    root: str
    stored_until: str | None = None  # see AnchoredSession


def newest_heads(documents: Iterable[tuple[str, Mapping[str, Any]]],
                 trusted: Iterable[Ed25519PublicKey]) -> tuple[dict[str, AnchorHead], list[str]]:
    """Per session, its head in the newest anchor (by ``created``) that is intact and signed by a trusted key;
    and the problems of the anchors left out (``name: problem``)."""
    keys = list(trusted)
    heads: dict[str, AnchorHead] = {}
    problems: list[str] = []
    readable = []
    for name, document in documents:
        if isinstance(document, Mapping):
            readable.append((name, document))
        else:
            problems.append(f"{name}: not a provline anchor (a JSON {type(document).__name__}, not an object)")
    for name, document in sorted(readable, key=lambda item: str(item[1].get("created", ""))):
        sessions, found = check(document, keys)
        if found:
            problems += [f"{name}: {problem}" for problem in found]
            continue
        for s in sessions:
            heads[s.session] = AnchorHead(s.session, s.head, s.count, str(document["created"]), name,
                                          str(document["root"]), s.stored_until)
    return heads, problems


# ---------------------------------------------------------------- I/O


def publish(document: Mapping[str, Any], destination: str, *, method: str = "POST") -> str:
    """Write ``document`` to a directory (a new file, never an existing one) or send it to an http(s) URL;
    returns where it went. Raises OSError (or httpx.HTTPError) when it could not be stored."""
    body = json.dumps(document, indent=2, sort_keys=True).encode()
    if urlsplit(destination).scheme in ("http", "https"):
        response = httpx.request(method, destination, content=body, headers={"Content-Type": "application/json"},
                                 timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return destination
    directory = Path(destination.removeprefix("file://"))
    directory.mkdir(parents=True, exist_ok=True)
    stamp = str(document["created"]).replace(":", "").replace("-", "")[:15]
    path = directory / f"anchor-{stamp}-{str(document['root'])[:12]}.json"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444), "wb") as handle:
        handle.write(body)
    return str(path)


def load(source: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, document) of the anchors at ``source``: a file, a directory of them, or an http(s) URL."""
    if urlsplit(source).scheme in ("http", "https"):
        response = httpx.get(source, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return [(source, response.json())]
    path = Path(source.removeprefix("file://"))
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [(str(file), json.loads(file.read_text(encoding="utf-8"))) for file in files]


class AnchorBook:
    """The newest anchored head of every session, read from where ``provline anchor`` publishes, again
    once ``reload_s`` has passed since the last read. Only the first read is made by the caller of
    :meth:`heads`; later ones run in a background thread while callers get the heads read before, so a
    slow directory or URL (up to its 30 s timeout) never holds up a trace. An anchor that cannot be read
    or checked is left out and logged; heads read before stay until a read succeeds. Thread-safe."""

    def __init__(self, source: str, trusted: Iterable[Ed25519PublicKey], *, reload_s: float = ANCHOR_RELOAD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._trusted = list(trusted)
        self._reload_s = reload_s
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._reading = False
        self._first_read = threading.Event()  # set once the first read ended: until then callers wait for it
        self._heads: dict[str, AnchorHead] = {}

    def heads(self) -> dict[str, AnchorHead]:
        with self._lock:
            now, never_read = self._clock(), self._read_at is None
            start = not self._reading and (self._read_at is None or now - self._read_at >= self._reload_s)
            if start:
                self._reading, self._read_at = True, now
        if start and never_read:
            self._read()
        elif start:
            threading.Thread(target=self._read, name="provline-anchor-read", daemon=True).start()
        self._first_read.wait()
        return self._heads

    def _read(self) -> None:
        try:
            heads, problems = newest_heads(load(self.source), self._trusted)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            log.warning("could not read the anchors at %s (%s); keeping the %d heads read before",
                        self.source, exc, len(self._heads))
        else:
            for problem in problems:
                log.warning("anchor left out: %s", problem)
            self._heads = heads
        finally:
            with self._lock:
                self._reading = False
            self._first_read.set()
