"""A disk that refuses the spool (full, failing): the emitter's worker keeps running, holds events in
memory, and delivers them all, in order, once the disk takes writes again. The refusal is real:
the spool's segment is a symlink to /dev/full, where every write fails with ENOSPC."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from provline.producers.processor import SPOOL_WRITE_ERRORS, BatchProcessor
from provline.producers.settings import EmitterSettings
from provline.producers.spool import Spool
from provline.producers.transports import MemoryTransport

DEADLINE_S = 10.0

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")


def first_segment(directory: Path) -> Path:
    return directory / f"segment-{0:020d}.log"


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling interval


def test_a_full_disk_holds_events_in_memory_and_delivers_them_all_once_it_has_room(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    transport = MemoryTransport()
    processor = BatchProcessor(lambda: transport, EmitterSettings(spool_dir=spool, linger_s=0.001))
    first_segment(spool).symlink_to("/dev/full")  # the segment the first append opens (the spool opens it lazily)
    refused_before = SPOOL_WRITE_ERRORS._value.get()
    try:
        for number in range(20):
            assert processor.submit("t", str(number).encode(), b"v")
        wait_for(lambda: SPOOL_WRITE_ERRORS._value.get() > refused_before, "the full disk was never written to")
        assert processor.alive, "the worker stopped at the first refused write"
        assert processor.submit("t", b"20", b"v")  # still accepting
        assert transport.messages == [] and processor.queued == 21
        first_segment(spool).unlink()  # room again
        wait_for(lambda: len(transport.messages) == 21, "the held events were not delivered once the disk had room")
        assert [m.key for m in transport.messages] == [str(n).encode() for n in range(21)]
        assert processor.alive and processor.backlog == 0
    finally:
        processor.close(5.0)


def test_a_batch_the_disk_refused_leaves_nothing_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync="always")
    spool.append([("t", b"k0", b"v0")])
    target = next(tmp_path.glob("segment-*.log"))
    kept = target.read_bytes()
    spool._abandon_writer()  # as after a refusal: the next append opens the segment again
    target.unlink()
    target.symlink_to("/dev/full")
    with pytest.raises(OSError):
        spool.append([("t", b"k1", b"v1")])
    target.unlink()
    target.write_bytes(kept)
    assert spool.append([("t", b"k2", b"v2")]) == 1  # the refused batch took no sequence number
    reopened = Spool(tmp_path)
    assert [(m.sequence, m.key) for m in reopened.read(reopened.cursor_at(0), 10)] == [(0, b"k0"), (1, b"k2")]
