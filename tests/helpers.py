"""Helpers shared by tests: events as the production code sends them, and checked as it checks them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from provline.producers import Emitter, JobSettings, Lineage, MemoryTransport, build_emitter
from provline.schemas import Catalog, default_catalog
from provline.schemas.integrity import HashChain
from provline.sink.verify import Finding, verify_session

FLUSH_TIMEOUT_S = 10.0


def memory_emitter(producer_name: str = "test", **sections: Any) -> tuple[Emitter, MemoryTransport]:
    """An emitter whose messages stay in memory; ``sections`` are JobSettings sections, e.g. signing={...}."""
    transport = MemoryTransport()
    return build_emitter(JobSettings(**sections), producer_name=producer_name, transport=transport), transport


def memory_lineage(producer_name: str = "provline-job", **sections: Any) -> Lineage:
    """A Lineage whose events stay in memory: read them with ``decoded(lineage.emitter)``."""
    return Lineage(settings=JobSettings(emitter={"transport": "memory"}, **sections), producer_name=producer_name)


def sent(emitter: Emitter) -> list[bytes]:
    """Every message the emitter has handed to its (memory) transport, once everything queued went out."""
    assert emitter.flush(FLUSH_TIMEOUT_S), "the emitter did not deliver its queue in time"
    transport = emitter.transport
    assert isinstance(transport, MemoryTransport), f"{type(transport).__name__} keeps no messages"
    return [message.value for message in transport.messages]


def decoded(emitter: Emitter, catalog: Catalog | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(kind, value)`` of every message sent, in order."""
    catalog = catalog or default_catalog()
    return [(d.record, d.value) for d in (catalog.decode(raw) for raw in sent(emitter))]


def chain_findings(raws: Iterable[bytes], *, catalog: Catalog | None = None, session: str = "s",
                   **options: Any) -> Finding | None:
    """What the store's verifier (``provline verify``) finds in one session's messages, walked in send order."""
    catalog = catalog or default_catalog()
    rows = [{"event_id": catalog.decode(raw).value["event_id"], "raw": raw, "table": ""} for raw in raws]
    return verify_session(catalog, session, rows, **options)


def seal(chain: HashChain, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` sealed into ``chain`` the way producers seal events (``HashChain.seal_encode``)."""
    chain.seal_encode(kind, value)
    return value


class StoredMessage:
    """A Kafka message held outside a consumer (a replay, a test), with the accessors the sink reads."""

    __slots__ = ("_key", "_offset", "_partition", "_topic", "_value")

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None = b"") -> None:
        self._topic, self._partition, self._offset, self._value, self._key = topic, partition, offset, value, key

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
