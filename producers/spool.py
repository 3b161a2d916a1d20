"""A durable, append-only on-disk spool of Kafka messages: the emitter's write-ahead log.

Every message is appended before it is handed to Kafka, and the spool remembers how far the
broker has acknowledged (``ack`` of record sequence numbers, in any order). After a crash or a
broker outage, reading from ``cursor_at(committed)`` replays every record not known to be
acknowledged, in append order, also in the next process that opens the same directory.

Layout: ``segment-<first sequence number>.log`` files of records ``[u32 length][u32 crc32]
[u16 topic length][topic][u32 key length][key][value]``, rolled at ``segment_bytes``; a
``committed`` file holds the highest sequence number below which everything was acknowledged
(replaced atomically). Fully acknowledged segments are deleted. A torn last record (crash
mid-write) is detected by its length or CRC and cut off on open.

Not thread-safe: one writer thread owns a spool. ``fsync``: ``always`` (after every append
batch), ``interval`` (at most every ``fsync_interval_s``), ``never`` (leave it to the OS).
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

log = logging.getLogger("provline.spool")

FsyncPolicy = Literal["always", "interval", "never"]
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_FSYNC_INTERVAL_S = 1.0
_HEADER = struct.Struct("<II")
_SEGMENT_PREFIX = "segment-"


@dataclass
class Cursor:
    """Where the next record to read is: its sequence number, segment and byte offset."""

    sequence: int
    segment: int
    offset: int


@dataclass(frozen=True)
class SpooledMessage:
    sequence: int
    topic: str
    key: bytes
    value: bytes


def encode_record(topic: str, key: bytes, value: bytes) -> bytes:
    topic_bytes = topic.encode()
    payload = struct.pack("<H", len(topic_bytes)) + topic_bytes + struct.pack("<I", len(key)) + key + value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> tuple[str, bytes, bytes]:
    (topic_length,) = struct.unpack_from("<H", payload, 0)
    topic = payload[2 : 2 + topic_length].decode()
    (key_length,) = struct.unpack_from("<I", payload, 2 + topic_length)
    key_start = 6 + topic_length
    return topic, payload[key_start : key_start + key_length], payload[key_start + key_length :]


def _read_records(handle: BinaryIO, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset after the record, payload) for every intact record from ``offset`` (where ``handle``
    is positioned); stops at the first torn one."""
    while True:
        header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        length, crc = _HEADER.unpack(header)
        payload = handle.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        offset += _HEADER.size + length
        yield offset, payload


class Spool:
    def __init__(
        self, directory: Path | str, *, fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.segment_bytes = segment_bytes
        self._committed_path = self.directory / "committed"
        self.committed = self._read_committed()  # every sequence number < committed is acknowledged
        self._acked_ahead: set[int] = set()
        self._segments = self._recover_segments()  # first sequence number -> path, in order
        self.next_sequence = self._count_records()
        self._size_bytes = sum(path.stat().st_size for path in self._segments.values())
        self._last_fsync = time.monotonic()
        self._writer: BinaryIO | None = None
        self._writer_bytes = 0

    def _read_committed(self) -> int:
        try:
            return int(self._committed_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _recover_segments(self) -> dict[int, Path]:
        segments = {}
        for path in self.directory.glob(f"{_SEGMENT_PREFIX}*.log"):
            segments[int(path.stem.removeprefix(_SEGMENT_PREFIX))] = path
        return dict(sorted(segments.items()))

    def _count_records(self) -> int:
        """Sequence number after the last intact record; cuts a torn tail left by a crash."""
        if not self._segments:
            return self.committed
        first, path = next(reversed(self._segments.items()))
        count, good_bytes = 0, 0
        with open(path, "rb") as handle:
            for good_bytes, _ in _read_records(handle):  # noqa: B007 - the last offset is what we need
                count += 1
        if good_bytes < path.stat().st_size:
            log.warning("spool %s: cut %d bytes of a torn record left by a crash",
                        path, path.stat().st_size - good_bytes)
            with open(path, "r+b") as handle:
                handle.truncate(good_bytes)
        return max(first + count, self.committed)

    def size_bytes(self) -> int:
        """Bytes the spool's segments take on disk."""
        return self._size_bytes

    @property
    def backlog(self) -> int:
        """Records appended but not yet acknowledged."""
        return self.next_sequence - self.committed - len(self._acked_ahead)

    def append(self, messages: list[tuple[str, bytes, bytes]]) -> int:
        """Append a batch; returns the sequence number of its first record.

        Raises OSError when the disk refuses the batch (full, read-only, failing): the spool then
        holds none of it, and the next append opens its segment again.
        """
        first = self.next_sequence
        data = b"".join(encode_record(topic, key, value) for topic, key, value in messages)
        try:
            if self._writer is None or self._writer_bytes >= self.segment_bytes:
                self._roll()
            assert self._writer is not None
            self._writer.write(data)
            self._writer.flush()
            self._maybe_fsync()
        except OSError:
            self._abandon_writer()
            raise
        self._writer_bytes += len(data)
        self._size_bytes += len(data)
        self.next_sequence += len(messages)
        return first

    def _abandon_writer(self) -> None:
        """After a failed write: close the segment and cut what part of the batch reached it."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()  # flushes what is buffered, if the disk takes it now
        except OSError:
            pass
        try:
            os.truncate(writer.name, self._writer_bytes)
        except OSError as exc:
            log.error("spool %s: could not cut a partly written batch (%s); records after it will not be "
                      "replayed from this segment", writer.name, exc)

    def _roll(self) -> None:
        continuing = self._writer is None  # a first open (or one after a failed write), not a full segment
        if self._writer is not None:
            self._fsync_now()
            self._writer.close()
            self._writer = None
        last = next(reversed(self._segments.items()), None)
        if continuing and last is not None and (not last[1].exists() or last[1].stat().st_size < self.segment_bytes):
            first, path = last  # continue the segment left unfinished (by a previous process, or a failed write)
        else:
            first, path = self.next_sequence, self.directory / f"{_SEGMENT_PREFIX}{self.next_sequence:020d}.log"
        self._writer = open(path, "ab")  # noqa: SIM115 - kept open for appends until close()
        self._segments[first] = path
        self._writer_bytes = path.stat().st_size

    def _maybe_fsync(self) -> None:
        if self.fsync == "always" or (
            self.fsync == "interval" and time.monotonic() - self._last_fsync >= self.fsync_interval_s
        ):
            self._fsync_now()

    def _fsync_now(self) -> None:
        if self._writer is not None and self.fsync != "never":
            os.fsync(self._writer.fileno())
        self._last_fsync = time.monotonic()

    def end(self) -> Cursor:
        """A cursor after the last appended record."""
        if not self._segments:
            return Cursor(self.next_sequence, self.next_sequence, 0)
        first, path = next(reversed(self._segments.items()))
        return Cursor(self.next_sequence, first, self._writer_bytes if self._writer else path.stat().st_size)

    def cursor_at(self, sequence: int) -> Cursor:
        """A cursor at ``sequence``; scans its segment from the start, so use it to begin, then :meth:`read`."""
        firsts = [first for first in self._segments if first <= sequence]
        if not firsts:
            return self.end() if sequence >= self.next_sequence else Cursor(sequence, sequence, 0)
        cursor = Cursor(firsts[-1], firsts[-1], 0)
        with open(self._segments[cursor.segment], "rb") as handle:
            for next_offset, _ in _read_records(handle):
                if cursor.sequence >= sequence:
                    break
                cursor.sequence += 1
                cursor.offset = next_offset
        return cursor

    def read(self, cursor: Cursor, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` records from ``cursor`` on, in append order; advances ``cursor``."""
        if cursor.segment not in self._segments and self._segments:
            moved = self.cursor_at(cursor.sequence)
            cursor.segment, cursor.offset = moved.segment, moved.offset
        records: list[SpooledMessage] = []
        while len(records) < limit and cursor.sequence < self.next_sequence and cursor.segment in self._segments:
            with open(self._segments[cursor.segment], "rb") as handle:
                handle.seek(cursor.offset)
                for next_offset, payload in _read_records(handle, cursor.offset):
                    topic, key, value = decode_payload(payload)
                    records.append(SpooledMessage(cursor.sequence, topic, key, value))
                    cursor.sequence += 1
                    cursor.offset = next_offset
                    if len(records) >= limit or cursor.sequence >= self.next_sequence:
                        return records
            later = [first for first in self._segments if first > cursor.segment]
            if not later:
                break
            cursor.segment, cursor.offset = later[0], 0
        return records

    def ack(self, sequence: int) -> None:
        """Mark one record delivered; the committed mark advances over contiguous acknowledgements."""
        if sequence < self.committed:
            return
        self._acked_ahead.add(sequence)
        while self.committed in self._acked_ahead:
            self._acked_ahead.discard(self.committed)
            self.committed += 1

    def checkpoint(self) -> None:
        """Persist the committed mark and delete fully acknowledged segments."""
        temporary = self._committed_path.with_suffix(".tmp")
        temporary.write_text(str(self.committed))
        os.replace(temporary, self._committed_path)
        firsts = list(self._segments)
        for index, first in enumerate(firsts[:-1]):
            if firsts[index + 1] <= self.committed:
                path = self._segments.pop(first)
                self._size_bytes -= path.stat().st_size
                path.unlink()

    def close(self) -> None:
        self.checkpoint()
        if self._writer is not None:
            self._fsync_now()
            self._writer.close()
            self._writer = None
