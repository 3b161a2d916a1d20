"""Positions: which inference offsets the join decides, ignores, or reads again after Faust skipped them."""

from __future__ import annotations

from provline.stream_processors.positions import Positions, Rewind


def test_offsets_in_order_are_decided_and_re_reads_are_ignored() -> None:
    positions = Positions()
    assert [positions.admit(0, offset, now=0) for offset in (5, 6, 7)] == [True, True, True]  # no position: any start
    assert not positions.admit(0, 6, now=0) and not positions.admit(0, 7, now=0)  # read again (Faust's commit lagged)
    assert positions.admit(0, 8, now=0) and positions.decided == {0: 8}
    assert positions.due_rewinds(now=0) == []


def test_a_skipped_offset_makes_the_partition_seek_back_once_until_the_retry_time() -> None:
    positions = Positions(retry_seconds=2, max_rewinds=5)
    positions.reset({1: 99, 2: 10}, now=0)
    assert not positions.admit(1, 103, now=0) and not positions.admit(1, 104, now=0)  # 100..102 never handed over
    assert positions.admit(2, 11, now=0)
    assert positions.due_rewinds(now=10) == [Rewind(1, 100)]
    assert not positions.admit(1, 105, now=0)  # still in flight from before the seek: no second seek yet
    assert positions.due_rewinds(now=11) == []
    assert positions.admit(1, 100, now=0) and positions.admit(1, 101, now=0) and positions.decided[1] == 101
    assert positions.gaps == {} and positions.due_rewinds(now=20) == []


def test_offsets_that_never_come_back_are_given_up_and_reading_goes_on_past_them() -> None:
    positions = Positions(retry_seconds=1, max_rewinds=2)
    positions.reset({0: 9}, now=0)
    assert not positions.admit(0, 14, now=0) and not positions.admit(0, 12, now=0)
    assert positions.due_rewinds(now=0) == [Rewind(0, 10)]
    assert positions.due_rewinds(now=1) == [Rewind(0, 10)]
    assert positions.due_rewinds(now=2) == [Rewind(0, 12, lost=range(10, 12))]
    assert positions.decided[0] == 11 and positions.admit(0, 12, now=0)


def test_reset_forgets_gaps_and_partitions_not_recovered() -> None:
    positions = Positions()
    positions.admit(3, 50, now=0)
    positions.admit(3, 60, now=0)
    positions.reset({1: 4}, now=0)
    assert positions.decided == {1: 4} and positions.gaps == {}
    assert positions.admit(3, 61, now=0)  # a partition without a recovered position starts where Faust starts it


def test_a_partition_with_unread_offsets_and_no_event_for_the_stall_time_is_read_again() -> None:
    positions = Positions(retry_seconds=2, stall_seconds=10)
    positions.reset({0: 49, 1: 9}, now=100)
    positions.check_stalled(0, 50, now=200)  # everything up to the end is decided: no gap
    positions.check_stalled(1, 15, now=105)  # offsets 10..14 unread, but the stall time is not over
    assert positions.due_rewinds(now=105) == []
    positions.check_stalled(1, 15, now=110)  # a skipped tail: nothing later will show the gap
    assert positions.due_rewinds(now=110) == [Rewind(1, 10)]
    assert positions.admit(1, 10, now=111)
    positions.check_stalled(1, 15, now=112)  # events come again
    assert positions.due_rewinds(now=120) == []


def test_a_partition_nobody_decided_starts_at_its_log_start_so_a_skipped_head_is_read_again() -> None:
    """Faust dropped the only lineage event of a fresh partition (fetched in an earlier generation, then
    committed past): with no decided offset any first offset was taken, and that event never came."""
    positions = Positions(retry_seconds=2, stall_seconds=10)
    positions.reset({1: 9}, now=0, starts={0: 0, 1: 0, 2: 40})
    assert positions.starts == {0: 0, 2: 40}  # a recorded position wins over the log start
    assert not positions.admit(0, 3, now=0)  # 0..2 never handed over
    assert positions.due_rewinds(now=0) == [Rewind(0, 0)]
    assert [positions.admit(0, offset, now=1) for offset in (0, 1, 2, 3)] == [True] * 4
    assert positions.admit(2, 40, now=0) and positions.decided == {0: 3, 1: 9, 2: 40}
    # a skipped head that is the whole partition: no event comes at all, the stall check finds it
    positions.reset({}, now=100, starts={5: 0})
    positions.check_stalled(5, 1, now=105)
    assert positions.due_rewinds(now=105) == []
    positions.check_stalled(5, 1, now=110)
    assert positions.due_rewinds(now=110) == [Rewind(5, 0)]
