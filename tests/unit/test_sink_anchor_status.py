"""Each record's anchor status (issue 18): the newest trusted anchor per session, whether it covers a
record, and provline serve's book of anchors re-read on a schedule."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provline.sink import anchor
from provline.sink.anchor import AnchorBook, AnchorHead, newest_heads
from provline.sink.chain import Record, anchored, combined, verification
from provline.sink.verify import AnchoredSession

KEY = Ed25519PrivateKey.generate()
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def document(created: datetime, *sessions: AnchoredSession, key: Ed25519PrivateKey = KEY) -> dict:
    return anchor.build(list(sessions), key, created=created)


def test_the_newest_trusted_anchor_of_each_session_wins_and_the_others_are_named() -> None:
    older = document(T0, AnchoredSession("s1", 3, "h3"), AnchoredSession("s2", 1, "g1"))
    newer = document(T0 + timedelta(hours=1), AnchoredSession("s1", 5, "h5", "2026-03-01T09:59:00+00:00"))
    forged = document(T0 + timedelta(hours=2), AnchoredSession("s1", 9, "h9"), key=Ed25519PrivateKey.generate())
    altered = {**document(T0 + timedelta(hours=3), AnchoredSession("s2", 2, "g2")), "root": "0" * 64}
    heads, problems = newest_heads([("b", newer), ("c", forged), ("a", older), ("d", altered), ("e", [1])],
                                   [KEY.public_key()])
    assert (heads["s1"].head, heads["s1"].count, heads["s1"].name) == ("h5", 5, "b")
    assert heads["s1"].stored_until == "2026-03-01T09:59:00+00:00" and heads["s2"].head == "g1"
    assert any(p.startswith("c: ") and "trusted anchor key" in p for p in problems)
    assert any(p.startswith("d: ") and "Merkle root" in p for p in problems)
    assert any(p.startswith("e: ") and "not a provline anchor" in p for p in problems)


def test_stored_until_is_signed_and_read_back() -> None:
    signed = document(T0, AnchoredSession("s1", 2, "h2", "2026-03-01T08:00:00+00:00"))
    sessions, problems = anchor.check(signed, [KEY.public_key()])
    assert problems == [] and sessions[0].stored_until == "2026-03-01T08:00:00+00:00"
    signed["sessions"][0]["stored_until"] = "2026-03-02T08:00:00+00:00"  # moved later, to cover more
    assert anchor.check(signed, [KEY.public_key()])[1]
    garbled = document(T0, AnchoredSession("s1", 2, "h2", "yesterday"))
    sessions, problems = anchor.check(garbled, [KEY.public_key()])
    assert sessions == [] and "malformed" in problems[0]


def record(hash_: str, ledgered: datetime | None) -> Record:
    return Record("Deployment", f"e-{hash_}", T0, {}, verification(True, True, ["fine", "anchors are held outside "
                  "the store: provline verify --anchor checks them"]), "s1", hash_, ledgered)


def head(stored_until: str | None = None) -> AnchorHead:
    return AnchorHead("s1", "h5", 5, "2026-03-01T10:00:00+00:00", "a.json", "r" * 64, stored_until)


def test_a_record_stored_before_the_anchor_was_taken_is_anchored_and_one_stored_after_is_pending() -> None:
    until = (T0 + timedelta(minutes=30)).isoformat()
    inside = anchored(record("h2", T0 + timedelta(minutes=30)), head(until), True)
    assert inside.verification["anchor"]["status"] == "anchored"
    assert inside.verification["detail"] == "fine; covered by the anchor of 2026-03-01T10:00:00+00:00: stored " \
                                            "before it was taken"
    naive = anchored(record("h2", datetime(2026, 3, 1, 9, 30)), head(until), True)  # the store's client: naive UTC
    assert naive.verification["anchor"]["status"] == "anchored"
    later = anchored(record("h6", T0 + timedelta(minutes=31)), head(until), True)
    assert later.verification["anchor"]["status"] == "pending" and "next anchor" in later.verification["detail"]
    # an anchor without stored_until: covered when stored no later than the anchor was created (10:00)
    assert anchored(record("h2", T0 + timedelta(hours=1)), head(), True).verification["anchor"]["status"] == "anchored"
    late = record("h2", T0 + timedelta(hours=1, seconds=1))
    assert anchored(late, head(), True).verification["anchor"]["status"] == "pending"


def test_the_head_itself_a_missing_head_and_no_anchor() -> None:
    assert anchored(record("h5", None), head(), True).verification["anchor"]["status"] == "anchored"
    missing = anchored(record("h2", T0), head(), False).verification
    assert missing["anchor"]["status"] == "head_missing" and "were deleted" in missing["detail"]
    assert missing["status"] == "verified"  # the record's own checks hold; verify --anchor names the loss
    none = anchored(record("h2", T0), None, False).verification
    assert none["anchor"] == {"status": "unanchored", "anchor": None, "created": None}
    assert "no trusted anchor" in none["detail"] and "provline verify --anchor checks" not in none["detail"]
    # a stored record never recorded in the ledger is not placed before any head
    assert anchored(record("h2", None), head(), True).verification["anchor"]["status"] == "pending"


def test_a_node_of_several_records_shows_its_worst_anchor_status() -> None:
    good = anchored(record("h2", T0), head(), True)
    gone = anchored(record("h3", T0), head(), False)
    assert combined([good, gone])["anchor"]["status"] == "head_missing"
    assert combined([good, good])["anchor"]["status"] == "anchored"
    assert combined([record("h2", T0)])["anchor"] is None  # no anchors read


def settled(book: AnchorBook, wanted: Callable[[dict[str, AnchorHead]], bool], what: str) -> dict[str, AnchorHead]:
    """The book's heads once the background read it started shows ``wanted`` (it never waits for it)."""
    deadline = time.monotonic() + 10
    while not wanted(heads := book.heads()):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling interval
    return heads


def test_the_book_reads_anchors_again_after_its_interval_and_keeps_them_when_a_read_fails(tmp_path: Path) -> None:
    now = [0.0]
    book = AnchorBook(str(tmp_path), [KEY.public_key()], reload_s=60, clock=lambda: now[0])
    assert book.heads() == {}
    anchor.publish(document(T0, AnchoredSession("s1", 3, "h3")), str(tmp_path))
    now[0] = 59.0
    assert book.heads() == {}  # not read again yet
    now[0] = 60.0
    settled(book, lambda heads: "s1" in heads and heads["s1"].head == "h3", "the book was not read again")
    (tmp_path / "zz-broken.json").write_text("{not json")
    anchor.publish(document(T0 + timedelta(hours=2), AnchoredSession("s1", 9, "h9")), str(tmp_path))
    now[0] = 120.0
    book.heads()
    wait_until_idle(book)
    assert book.heads()["s1"].head == "h3"  # a read that failed keeps what was read before
    (tmp_path / "zz-broken.json").unlink()
    (tmp_path / "zz-list.json").write_text(json.dumps([1, 2]))
    now[0] = 180.0
    settled(book, lambda heads: heads["s1"].head == "h9", "a document that is no anchor stopped the read")


def wait_until_idle(book: AnchorBook) -> None:
    deadline = time.monotonic() + 10
    while any(t.name == "provline-anchor-read" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the background read never ended"
        time.sleep(0.01)  # polling interval


def test_a_read_that_hangs_does_not_hold_up_the_heads_once_they_were_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve asks the book for every trace: a slow anchor URL (30 s timeout) must not stall those requests."""
    anchor.publish(document(T0, AnchoredSession("s1", 3, "h3")), str(tmp_path))
    now = [0.0]
    book = AnchorBook(str(tmp_path), [KEY.public_key()], reload_s=60, clock=lambda: now[0])
    assert book.heads()["s1"].head == "h3"
    released = threading.Event()
    real_load = anchor.load

    def hanging(source: str) -> Any:
        released.wait(30)
        return real_load(source)

    monkeypatch.setattr(anchor, "load", hanging)
    now[0] = 61.0
    answered: list[dict[str, AnchorHead]] = []
    caller = threading.Thread(target=lambda: answered.append(book.heads()))
    caller.start()
    caller.join(10)
    hung = caller.is_alive()
    released.set()
    assert not hung, "heads() waited for the read in progress"
    assert answered[0]["s1"].head == "h3"  # the heads read before, while the new read hangs
    wait_until_idle(book)
