"""Helpers shared by tests: events as the production code sends them, and checked as it checks them."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from confluent_kafka import Consumer

from provline.producers import Emitter, JobSettings, Lineage, MemoryTransport, build_emitter
from provline.schemas import Catalog, default_catalog
from provline.schemas.frames import events_in
from provline.schemas.integrity import HashChain
from provline.sink.verify import Finding, Links, Seals, Trust, check_event, link_findings

FLUSH_TIMEOUT_S = 10.0
T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread, serving while the synchronous test talks to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def serve_app(app: Any) -> tuple[Any, int]:
    """Start an aiohttp ``web.Application`` on a free local port (a fake model server); (runner, port).
    Stop it with ``await runner.cleanup()``."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def memory_emitter(producer_name: str = "test", **sections: Any) -> tuple[Emitter, MemoryTransport]:
    """An emitter whose messages stay in memory; ``sections`` are JobSettings sections, e.g. signing={...}."""
    transport = MemoryTransport()
    return build_emitter(JobSettings(**sections), producer_name=producer_name, transport=transport), transport


def memory_lineage(producer_name: str = "provline-job", **sections: Any) -> Lineage:
    """A Lineage whose events stay in memory: read them with ``decoded(lineage.emitter)``."""
    return Lineage(settings=JobSettings(emitter={"transport": "memory"}, **sections), producer_name=producer_name)


def sent(emitter: Emitter) -> list[bytes]:
    """Every event the emitter has handed to its (memory) transport, once everything queued went out;
    an exchange frame's two events one after the other."""
    assert emitter.flush(FLUSH_TIMEOUT_S), "the emitter did not deliver its queue in time"
    transport = emitter.transport
    assert isinstance(transport, MemoryTransport), f"{type(transport).__name__} keeps no messages"
    return events_sent(transport)


def events_sent(transport: MemoryTransport) -> list[bytes]:
    """The events of the messages the transport holds now; an exchange frame's two one after the other."""
    return events_of(list(transport.messages))


def events_of(messages: Iterable[Any]) -> list[bytes]:
    """The events of these transport messages; an exchange frame's two one after the other."""
    return [event for message in messages for event in events_in(default_catalog(), message.value)]


def decoded(emitter: Emitter, catalog: Catalog | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(kind, value)`` of every message sent, in order."""
    catalog = catalog or default_catalog()
    return [(d.record, d.value) for d in (catalog.decode(raw) for raw in sent(emitter))]


def chain_findings(raws: Iterable[bytes], *, catalog: Catalog | None = None, session: str = "s",
                   trust: Trust | None = None) -> list[Finding]:
    """What ``provline verify`` finds in one session's messages: every event checked by the production
    check, and the chain's shape (computed here in memory, as the store computes it set-wise)."""
    catalog = catalog or default_catalog()
    findings: list[Finding] = []
    links: list[tuple[str, str, str | None]] = []
    for raw in raws:
        event = catalog.decode(raw).value
        found, _ = check_event(catalog, {"event_id": event["event_id"], "raw": raw}, trust or Trust())
        findings += found
        links.append((event["event_id"], event["hash"], event.get("prev_hash")))
    hashes = {h for _, h, _ in links}
    predecessors = [p for _, _, p in links if p is not None]
    shape = Links(
        events=len(links), roots=[e for e, _, p in links if p is None],
        dangling=[(e, p) for e, _, p in links if p is not None and p not in hashes],
        forks=[(p, [e for e, _, q in links if q == p]) for p in sorted(set(predecessors))
               if predecessors.count(p) > 1],
        heads=[(e, h) for e, h, _ in links if h not in set(predecessors)],
    )
    return findings + link_findings(session, shape, Seals())


def seal(chain: HashChain, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` sealed into ``chain`` the way producers seal events (``HashChain.seal_encode``)."""
    chain.seal_encode(kind, value)
    return value


class StoredMessage:
    """A Kafka message held outside a consumer (a replay, a test), with the accessors the sink reads."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_topic", "_value")

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None = b"",
                 headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        self._topic, self._partition, self._offset, self._value, self._key = topic, partition, offset, value, key
        self._headers = headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, str | bytes | None]] | None:
        return self._headers


def wait_until(condition: Any, what: str, timeout: float, *, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns something true, and return that; after ``timeout`` s, AssertionError."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return result


def consume_events(bootstrap: str, topic: str, done: Any, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """Decoded (kind, value) of the events on ``topic`` (an exchange frame's two included), read from the
    start until ``done(events)`` holds, then until a second passes without more."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    events: list[tuple[str, dict[str, Any]]] = []

    def read(wait_s: float) -> int:
        messages = [message for message in consumer.consume(500, wait_s) if message.error() is None]
        for message in messages:
            for event in events_in(default_catalog(), message.value()):
                decoded = default_catalog().decode(event)
                events.append((decoded.record, decoded.value))
        return len(messages)

    try:
        wait_until(lambda: read(0.5) >= 0 and done(events), f"the expected events on {topic}", timeout)
        while read(1.0):
            pass
    finally:
        consumer.close()
    return events
