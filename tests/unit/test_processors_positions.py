"""Positions: which inference offsets the join decides, ignores, or reads again after Faust skipped them."""

from __future__ import annotations

from stream_processors.positions import Positions, Rewind


def test_offsets_in_order_are_decided_and_re_reads_are_ignored() -> None:
    positions = Positions()
    assert [positions.admit(0, offset) for offset in (5, 6, 7)] == [True, True, True]  # no position yet: any start
    assert not positions.admit(0, 6) and not positions.admit(0, 7)  # read again (Faust's commit lagged)
    assert positions.admit(0, 8) and positions.decided == {0: 8}
    assert positions.due_rewinds(now=0) == []


def test_a_skipped_offset_makes_the_partition_seek_back_once_until_the_retry_time() -> None:
    positions = Positions(retry_seconds=2, max_rewinds=5)
    positions.reset({1: 99, 2: 10})
    assert not positions.admit(1, 103) and not positions.admit(1, 104)  # 100..102 never handed over
    assert positions.admit(2, 11)
    assert positions.due_rewinds(now=10) == [Rewind(1, 100)]
    assert not positions.admit(1, 105)  # still in flight from before the seek: no second seek yet
    assert positions.due_rewinds(now=11) == []
    assert positions.admit(1, 100) and positions.admit(1, 101) and positions.decided[1] == 101
    assert positions.gaps == {} and positions.due_rewinds(now=20) == []


def test_offsets_that_never_come_back_are_given_up_and_reading_goes_on_past_them() -> None:
    positions = Positions(retry_seconds=1, max_rewinds=2)
    positions.reset({0: 9})
    assert not positions.admit(0, 14) and not positions.admit(0, 12)
    assert positions.due_rewinds(now=0) == [Rewind(0, 10)]
    assert positions.due_rewinds(now=1) == [Rewind(0, 10)]
    assert positions.due_rewinds(now=2) == [Rewind(0, 12, lost=range(10, 12))]
    assert positions.decided[0] == 11 and positions.admit(0, 12)


def test_reset_forgets_gaps_and_partitions_not_recovered() -> None:
    positions = Positions()
    positions.admit(3, 50)
    positions.admit(3, 60)
    positions.reset({1: 4})
    assert positions.decided == {1: 4} and positions.gaps == {}
    assert positions.admit(3, 61)  # a partition without a recovered position starts where Faust starts it
