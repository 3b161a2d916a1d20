from __future__ import annotations

from pathlib import Path

from provline.producers.spool import Spool, SpooledMessage


def messages(count: int, start: int = 0) -> list[tuple[str, bytes, bytes]]:
    return [("topic-a" if i % 2 else "topic-b", f"k{i % 3}".encode(), f"value-{i}".encode() * 3)
            for i in range(start, start + count)]


def replayed(spool: Spool) -> list[SpooledMessage]:
    """What a process replays from the spool: everything from the committed mark on (the emitter's read)."""
    return spool.read(spool.cursor_at(spool.committed), 1_000_000)


def values(spool: Spool) -> list[bytes]:
    return [m.value for m in replayed(spool)]


def test_appended_messages_are_pending_in_order_until_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(messages(5))
    assert values(spool) == [v for _, _, v in messages(5)]
    for sequence in (1, 0, 3):
        spool.ack(sequence)
    assert spool.committed == 2
    assert [m.sequence for m in replayed(spool)] == [2, 3, 4]  # 3 was acknowledged out of order: sent again
    assert spool.backlog == 2


def test_a_new_process_replays_what_was_not_acknowledged(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append(messages(10))
    for sequence in range(4):
        first.ack(sequence)
    first.close()

    second = Spool(tmp_path)
    assert [m.sequence for m in replayed(second)] == list(range(4, 10))
    assert [(m.topic, m.key, m.value) for m in replayed(second)] == messages(6, start=4)
    second.append(messages(2, start=10))
    assert [m.sequence for m in replayed(second)][-2:] == [10, 11]


def test_a_torn_record_from_a_crash_is_cut_and_the_rest_survives(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(messages(3))
    spool.close()
    segment = next(tmp_path.glob("segment-*.log"))
    with open(segment, "ab") as handle:
        handle.write(b"\x50\x00\x00\x00garbage")  # a length header and half a record

    reopened = Spool(tmp_path)
    assert values(reopened) == [v for _, _, v in messages(3)]
    reopened.append(messages(1, start=3))
    assert len(values(Spool(tmp_path))) == 4


def test_acknowledged_segments_are_deleted_and_size_is_tracked(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)  # smaller than one batch: a segment per batch
    for start in range(0, 20, 4):
        spool.append(messages(4, start=start))
    assert len(list(tmp_path.glob("segment-*.log"))) == 5
    assert spool.size_bytes() == sum(p.stat().st_size for p in tmp_path.glob("segment-*.log"))
    for sequence in range(16):
        spool.ack(sequence)
    spool.checkpoint()
    assert len(list(tmp_path.glob("segment-*.log"))) == 1
    assert spool.size_bytes() == sum(p.stat().st_size for p in tmp_path.glob("segment-*.log"))
    assert [m.sequence for m in replayed(Spool(tmp_path))] == [16, 17, 18, 19]


def test_a_cursor_reads_across_segments_in_batches_and_resumes_anywhere(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    for start in range(0, 12, 3):
        spool.append(messages(3, start=start))
    cursor = spool.cursor_at(0)
    seen = []
    while batch := spool.read(cursor, 5):
        assert len(batch) <= 5
        seen.extend(batch)
    assert [m.sequence for m in seen] == list(range(12))
    assert [m.value for m in seen] == [v for _, _, v in messages(12)]
    assert cursor.sequence == spool.end().sequence == 12
    middle = spool.cursor_at(7)
    assert [m.sequence for m in spool.read(middle, 2)] == [7, 8]
    spool.append(messages(1, start=12))
    assert [m.sequence for m in spool.read(cursor, 5)] == [12]
