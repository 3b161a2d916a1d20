"""The dead-letter topic's messages as ``dead_letters`` rows, and the gaps they name in a chain."""

from __future__ import annotations

from datetime import UTC, datetime

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.dead_letters import (
    ERROR,
    EVENT_HASH,
    EVENT_ID,
    EVENT_SESSION,
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
)
from provline.schemas.integrity import HashChain
from provline.sink.dead_letters import COLUMNS, dead_letter_row, describe, gaps
from provline.sink.verify import Links, Seals, link_findings
from provline.sink.writer import plan_batch
from tests.helpers import StoredMessage, seal

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def feedback() -> dict[str, object]:
    chain = HashChain(default_catalog())
    envelope = new_envelope(producer_identity("t", "session-1"))
    return seal(chain, "Feedback", {**envelope, "prediction_id": "p", "source": "s", "observed_time": NOW})


def row_of(value: bytes | None, headers: list[tuple[str, str | bytes | None]] | None) -> dict[str, object]:
    message = StoredMessage("dlq", 2, 7, value, headers=headers)
    return dict(zip(COLUMNS, dead_letter_row(message, default_catalog(), NOW), strict=True))


def test_a_dead_letter_with_the_events_bytes_is_named_by_the_event_itself() -> None:
    event = feedback()
    lying = [(REASON, b"InvalidEventError"), (ERROR, b"never sealed"), (SOURCE_TOPIC, b"provline.inference.v1"),
             (SOURCE_PARTITION, b"1"), (SOURCE_OFFSET, b"42"), (EVENT_HASH, b"not-its-hash")]
    row = row_of(default_catalog().encode("Feedback", event), lying)
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("dlq", 2, 7)
    assert (row["reason"], row["error"], row["source_topic"], row["source_partition"], row["source_offset"]) == (
        "InvalidEventError", "never sealed", "provline.inference.v1", 1, 42)
    assert (row["event_id"], row["hash"], row["producer_session"], row["kind"]) == (
        event["event_id"], event["hash"], "session-1", "Feedback")
    assert row["stored"] == NOW


def test_a_dead_letter_without_bytes_is_named_by_its_headers() -> None:
    headers = {REASON: "TooLarge", ERROR: "larger than max.message.bytes", SOURCE_TOPIC: "provline.traces.v1",
               EVENT_ID: "e1", EVENT_HASH: "h1", EVENT_SESSION: "worker-1"}
    row = row_of(None, list(headers.items()))
    assert (row["reason"], row["event_id"], row["hash"], row["producer_session"], row["kind"], row["raw"]) == (
        "TooLarge", "e1", "h1", "worker-1", "", b"")
    assert (row["source_partition"], row["source_offset"]) == (-1, -1)  # not read from a topic: made for one


def test_junk_without_headers_is_kept_and_named_nothing() -> None:
    row = row_of(b"\x00junk", None)
    assert (row["reason"], row["event_id"], row["hash"], row["producer_session"], row["raw"]) == (
        "Unknown", "", "", "", b"\x00junk")
    bad_numbers = row_of(None, [(SOURCE_PARTITION, b"x"), (SOURCE_OFFSET, None)])
    assert (bad_numbers["source_partition"], bad_numbers["source_offset"]) == (-1, -1)


def test_the_dead_letter_topic_becomes_rows_never_dead_letters_again() -> None:
    catalog = default_catalog()
    messages = [StoredMessage("dlq", 0, 3, b"garbage", headers=[(REASON, b"CorruptEventError")]),
                StoredMessage("t", 0, 4, b"garbage")]
    plan = plan_batch(messages, catalog, dead_letter_topic="dlq", now=NOW)
    assert [(row[3], position) for row, position in plan.dead_letter_rows] == [("CorruptEventError", ("dlq", 0, 3))]
    assert [d.origin.offset for d in plan.dead_letters] == [4]
    assert plan.without({("dlq", 0, 3)}).dead_letter_rows == []
    assert plan_batch(messages, catalog, now=NOW).dead_letter_rows == []  # no dead-letter topic named


def test_describe_says_why_and_where() -> None:
    assert describe("TooLarge", "too big", "traces", -1, -1) == "TooLarge: too big (made for traces)"
    assert describe("CorruptEventError", "bad", "inference", 3, 9) == (
        "CorruptEventError: bad (read from inference[3]@9)")
    assert describe("Unknown", "", "", -1, -1) == "Unknown: "


def test_a_gap_a_dead_letter_held_is_dead_lettered_and_counts_for_the_seals() -> None:
    links = Links(events=4, roots=["e1"], dangling=[("e3", "h2"), ("e5", "h4")], forks=[], heads=[("e5", "h5")])
    found = link_findings("s", links, Seals(sealed_count=5), {"h2": "TooLarge: too big (made for traces)"})
    assert [(f.problem, f.event_id) for f in found] == [("dead-lettered", "e3"), ("missing", "e5"),
                                                        ("truncated", "")]
    assert "TooLarge: too big" in found[0].detail and "h2" in found[0].detail
    assert "6 events" in found[2].detail and "4 are stored and 1 dead-lettered" in found[2].detail
    both = link_findings("s", links, Seals(sealed_count=5), {"h2": "a", "h4": "b"})
    assert [f.problem for f in both] == ["dead-lettered", "dead-lettered"]  # 4 stored + 2 never stored = 6


def test_gaps_are_links_a_dead_letter_of_their_session_held_and_the_ledger_never_stored() -> None:
    rows = [("letter", "h1", "s", "TooLarge", "big", "traces", -1, -1),
            ("letter", "h2", "", "CorruptEventError", "bad", "inference", 0, 5),  # named no session
            ("letter", "h3", "s", "TooLarge", "big", "traces", -1, -1),
            ("stored", "h3", "s", "", "", "", -1, -1),  # the ledger saw it stored: deleted, not dead-lettered
            ("letter", "h4", "other", "TooLarge", "big", "traces", -1, -1)]
    links = [("s", "h1"), ("s", "h2"), ("s", "h3"), ("s", "h4"), ("s", "h5")]
    assert gaps(links, rows) == {("s", "h1"): "TooLarge: big (made for traces)",
                                 ("s", "h2"): "CorruptEventError: bad (read from inference[0]@5)"}
