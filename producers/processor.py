"""The batch processor: a bounded queue, a worker thread and a durable spool in front of a transport.

Modelled on OpenTelemetry's ``BatchProcessor``. :meth:`BatchProcessor.submit` appends to a bounded
in-memory queue and returns. One worker thread moves queued messages into the on-disk
:class:`~provline.producers.spool.Spool`, hands them to the transport (at most ``max_in_flight``
unacknowledged) and marks them acknowledged in the spool as delivery reports come. While the
destination is away nothing is lost and memory stays bounded: messages wait on disk and are sent
in order when it returns, or by the next process that opens the same spool directory.

The queue fills only when the worker cannot write to disk as fast as messages come (or the spool
has reached ``spool_max_bytes``); then ``on_full`` applies: ``block`` waits for room (jobs: nothing
is lost), ``drop`` returns at once and the message is counted as a delivery gap (servers: a
request never waits on provline). A forked child starts afresh: an empty queue, its own private
spool (a spool has one writer), a new transport and worker.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

from prometheus_client import Counter

from provline.producers.gaps import GapTracker
from provline.producers.settings import EmitterSettings
from provline.producers.spool import DEFAULT_SEGMENT_BYTES, Spool, SpooledMessage
from provline.producers.transports import Transport

log = logging.getLogger("provline.emitter")

EVENTS_DELIVERED = Counter("provline_events_delivered_total", "Events the destination acknowledged")
SPOOL_WRITE_ERRORS = Counter("provline_spool_write_errors_total",
                             "Batches the spool's disk refused (full, read-only, failing); they wait in memory")
SPOOL_RETRY_S = 1.0  # how often a refused batch is offered to the disk again
SHIP_INTERVAL_S = 0.05
# Waking the worker for every message would hand the GIL back and forth per message; it wakes on a
# full batch, or after linger_s.
WAKE_BATCH = 512
SPOOL_BATCH_MAX = 5000
CHECKPOINT_INTERVAL_S = 0.5
CLOSE_GRACE_S = 5.0
FLUSH_POLL_S = 0.005
SEGMENTS_PER_SPOOL = 8  # the spool's bound holds at least this many segments

QueuedMessage = tuple[str, bytes, bytes]  # topic, key, value
SpooledCallback = Callable[[], None]


def open_spool(options: EmitterSettings, directory: Path | None = None) -> Spool:
    """The spool in ``directory`` (default: the configured one, else a private temporary one)."""
    directory = directory or options.spool_dir or Path(tempfile.mkdtemp(prefix="provline-spool-"))
    # Only whole acknowledged segments are deleted: with segments as large as the spool's bound, a
    # spool that once filled up would stay full after its backlog was delivered, and drop for ever.
    segment_bytes = max(1, min(DEFAULT_SEGMENT_BYTES, options.spool_max_bytes // SEGMENTS_PER_SPOOL))
    return Spool(directory, fsync=options.spool_fsync, segment_bytes=segment_bytes)


def _call_weakly(method: weakref.WeakMethod[Callable[[], object]]) -> None:
    bound = method()
    if bound is not None:
        bound()


class BatchProcessor:
    """Owns the queue, the worker, the spool, drop counting and fork handling for one transport.

    ``make_transport`` builds the transport, once now and again in a forked child. :meth:`submit`
    is thread-safe and never waits on the destination; :meth:`flush` and :meth:`close` block.
    """

    def __init__(self, make_transport: Callable[[], Transport], options: EmitterSettings) -> None:
        self._make_transport = make_transport
        self._options = options
        self._linger_s = max(options.linger_s, 0.001)
        self._closed = False
        self._start(self._open_spool())
        os.register_at_fork(after_in_child=partial(_call_weakly, weakref.WeakMethod(self._restart_in_child)))

    def _open_spool(self) -> Spool:
        # Without a configured directory the spool is private to this process: nobody else will ever open
        # it, so close() removes it once everything in it was delivered (else each run left a directory).
        self._private_spool = None if self._options.spool_dir else Path(tempfile.mkdtemp(prefix="provline-spool-"))
        return open_spool(self._options, self._private_spool)

    def _start(self, spool: Spool) -> None:
        self.drops = GapTracker()
        self.transport = self._make_transport()
        self._spool = spool
        self._queue: deque[QueuedMessage] = deque()
        self._in_hand = 0  # taken from the queue by the worker, not yet in the spool
        self._accepted = 0  # messages submit() accepted: the last one's ticket
        self._spooled = 0  # of those, how many the worker has appended to the spool (fsynced per its policy)
        self._spool_waiters: list[tuple[int, int, SpooledCallback]] = []  # heap of (ticket, order, callback)
        self._waiter_order = 0
        self._room = threading.Condition()
        self._closing = threading.Event()
        self._cursor = spool.cursor_at(spool.committed)  # replay what an earlier process left
        self._in_flight = 0
        self._close_deadline = float("inf")
        self._spool_error: OSError | None = None  # the disk's last refusal, until a write succeeds again
        self._worker = threading.Thread(target=self._run, name="provline-emitter", daemon=True)
        self._worker.start()

    def _restart_in_child(self) -> None:
        # The parent's worker thread and transport do not exist in the child; the parent delivers
        # what it queued, and the child gets a private spool, since a spool has one writer.
        if not self._closed:
            self._private_spool = Path(tempfile.mkdtemp(prefix="provline-spool-"))
            self._start(open_spool(self._options, self._private_spool))

    def submit(self, topic: str, key: bytes, value: bytes) -> bool:
        """Queue one message; False when it was dropped (``on_full="drop"`` and the queue is full)."""
        return self.submit_ticket(topic, key, value) is not None

    def submit_ticket(self, topic: str, key: bytes, value: bytes) -> int | None:
        """Queue one message, as :meth:`submit`; its ticket for :meth:`when_spooled`, or None when it was dropped.

        Tickets count the messages accepted, from 1; thread-safe.
        """
        with self._room:
            while len(self._queue) >= self._options.queue_max_messages:
                if self._options.on_full == "drop":
                    return None
                self._room.wait(0.1)
            self._queue.append((topic, key, value))
            self._accepted += 1
            if len(self._queue) == WAKE_BATCH:  # otherwise the worker wakes on its linger timer
                self._room.notify_all()
            return self._accepted

    def when_spooled(self, ticket: int, callback: SpooledCallback) -> None:
        """Call ``callback()`` once the message of ``ticket`` is in the on-disk spool; never waits.

        With ``spool_fsync="always"`` that is once it was fsynced: one fsync for every message the
        worker appended in one go, so many concurrent waiters share it (group commit). The callback
        runs in the worker thread (or in the caller's, when the message is spooled already): it
        must be quick and must not raise; from asyncio, hand over with ``loop.call_soon_threadsafe``.
        """
        with self._room:
            if ticket > self._spooled:
                self._waiter_order += 1
                heapq.heappush(self._spool_waiters, (ticket, self._waiter_order, callback))
                self._room.notify_all()  # a waiter wants the worker now, not after linger_s
                return
        callback()

    def _spooled_up_to(self, count: int) -> None:
        """The worker has spooled ``count`` more messages: call the callbacks waiting for them."""
        ready: list[SpooledCallback] = []
        with self._room:
            self._spooled += count
            while self._spool_waiters and self._spool_waiters[0][0] <= self._spooled:
                ready.append(heapq.heappop(self._spool_waiters)[2])
        for callback in ready:
            try:
                callback()
            except Exception:  # a waiter's mistake must not stop the worker
                log.exception("provline: a spool waiter's callback failed")

    @property
    def backlog(self) -> int:
        """Messages accepted by :meth:`submit` and not yet acknowledged by the destination."""
        return len(self._queue) + self._in_hand + self._spool.backlog

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (it stops at close; a disk refusing the spool does not stop it)."""
        return self._worker.is_alive()

    @property
    def queued(self) -> int:
        """Messages accepted and held in memory, not yet in the spool: at most ``queue_max_messages``
        (plus one batch in the worker's hands)."""
        return len(self._queue) + self._in_hand

    @property
    def spool_full(self) -> bool:
        """Whether the spool has reached ``spool_max_bytes`` (new messages wait in the queue meanwhile)."""
        return self._spool_full()

    @property
    def spool_directory(self) -> Path:
        return self._spool.directory

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until everything submitted is delivered; True when it is."""
        deadline = time.monotonic() + timeout
        with self._room:
            self._room.notify_all()
        while self.backlog and time.monotonic() < deadline and self._worker.is_alive():
            time.sleep(FLUSH_POLL_S)
        return self.backlog == 0

    def close(self, timeout: float) -> bool:
        """Spool everything queued and try to deliver it within ``timeout`` seconds; True when nothing is left.

        What is left stays in the spool, for the next process that opens it; a private temporary spool
        (no ``spool_dir``) is removed when nothing is left.
        """
        self._closed = True
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        with self._room:
            self._room.notify_all()
        self._worker.join(timeout + CLOSE_GRACE_S)
        remaining = self.backlog
        if remaining and self._private_spool is not None:
            log.warning("provline closed with %d events not yet delivered; they stay in %s, a temporary spool "
                        "no other process reads: set spool_dir (PROVLINE_EMITTER__SPOOL_DIR) to a lasting "
                        "directory to have them sent by the next process", remaining, self._spool.directory)
        elif remaining:
            log.warning("provline closed with %d events not yet delivered; they stay in %s and are sent "
                        "by the next process using that spool directory", remaining, self._spool.directory)
        elif self._private_spool is not None and not self._worker.is_alive():
            shutil.rmtree(self._private_spool, ignore_errors=True)
        return remaining == 0

    # ---------------------------------------------------------------- the worker thread

    def _spool_full(self) -> bool:
        return self._spool.size_bytes() >= self._options.spool_max_bytes

    def _take_batch(self) -> list[QueuedMessage]:
        with self._room:
            if not self._queue and not self._closing.is_set():
                self._room.wait(self._linger_s)
            if self._spool_full():
                self._room.wait(self._linger_s)  # room comes as the transport delivers; no busy loop meanwhile
                return []
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), SPOOL_BATCH_MAX))]
            self._in_hand = len(batch)
            if batch:
                self._room.notify_all()
            return batch

    def _run(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            batch = self._take_batch()
            if batch and not self._append(batch):
                batch = []
            self._in_hand = 0
            if batch:
                self._spooled_up_to(len(batch))
            self._ship(batch, self._spool.next_sequence - len(batch))
            closing = self._closing.is_set()
            self.transport.poll(SHIP_INTERVAL_S if closing else 0)
            if time.monotonic() - last_checkpoint >= CHECKPOINT_INTERVAL_S:
                try:
                    self._spool.checkpoint()
                except OSError as exc:  # the committed mark is written again at the next checkpoint
                    self._refused(exc)
                last_checkpoint = time.monotonic()
            if closing and (
                (not self._queue and self._spool.backlog == 0) or time.monotonic() >= self._close_deadline
            ):
                break
        while self._queue and not self._spool_full() and self._spool_error is None:
            batch = self._take_batch()  # past the deadline: keep on disk what fits
            if self._append(batch, wait=False):
                self._spooled_up_to(len(batch))
            self._in_hand = 0
        reason = "spool_full_at_close" if self._spool_error is None else "spool_unwritable_at_close"
        for _ in range(len(self._queue)):
            self.drops.record(reason)
        self.transport.close(max(0.0, self._close_deadline - time.monotonic()))
        try:
            self._spool.close()
        except OSError as exc:
            log.error("provline: could not close the spool in %s: %s", self._spool.directory, exc)

    def _append(self, batch: list[QueuedMessage], *, wait: bool = True) -> bool:
        """Append ``batch`` to the spool; when the disk refuses it, put it back at the head of the queue
        (new events queue behind it, up to the queue's bound), wait ``SPOOL_RETRY_S`` and return False."""
        try:
            self._spool.append(batch)
        except OSError as exc:
            with self._room:
                self._queue.extendleft(reversed(batch))
                self._in_hand = 0
            self._refused(exc)
            if wait:
                self._closing.wait(SPOOL_RETRY_S)
                if self._closing.is_set():
                    time.sleep(SHIP_INTERVAL_S)  # closing: retry until the deadline, without spinning
            return False
        if self._spool_error is not None:
            log.warning("provline: the spool in %s takes writes again", self._spool.directory)
            self._spool_error = None
        return True

    def _refused(self, error: OSError) -> None:
        SPOOL_WRITE_ERRORS.inc()
        if self._spool_error is None:  # once per outage; the counter counts every refusal
            log.error("provline: cannot write the spool in %s (%s). Events wait in memory, at most %d; beyond "
                      "that they are dropped and recorded as a DeliveryGap. Free space on that disk or fix "
                      "the volume; the write is retried every %.0f s.", self._spool.directory, error,
                      self._options.queue_max_messages, SPOOL_RETRY_S)
        self._spool_error = error

    def _ship(self, batch: list[QueuedMessage], first: int) -> None:
        """Hand spooled, unsent messages to the transport, oldest first, up to max_in_flight.

        When nothing older waits, the batch just spooled goes from memory; otherwise records are
        read back from the spool (a backlog after an outage, or left by an earlier process).
        """
        room = self._options.max_in_flight - self._in_flight
        if batch and self._cursor.sequence == first and room >= len(batch):
            for offset, (topic, key, value) in enumerate(batch):
                if not self._send(SpooledMessage(first + offset, topic, key, value)):
                    self._cursor = self._spool.cursor_at(first + offset)
                    return
            self._cursor = self._spool.end()
            return
        while room > 0 and self._cursor.sequence < self._spool.next_sequence:
            records = self._spool.read(self._cursor, min(room, SPOOL_BATCH_MAX))
            if not records:
                return
            for record in records:
                if not self._send(record):
                    self._cursor = self._spool.cursor_at(record.sequence)
                    return
            room -= len(records)

    def _send(self, message: SpooledMessage) -> bool:
        self._in_flight += 1
        if self.transport.send(message, self._delivered):
            return True
        self._in_flight -= 1
        return False

    def _delivered(self, sequence: int, error: str | None) -> None:
        self._in_flight -= 1
        if error is not None:  # refused for good: retrying cannot help, so it is recorded as dropped
            self.drops.record("rejected_by_broker")
        else:
            EVENTS_DELIVERED.inc()
        self._spool.ack(sequence)
