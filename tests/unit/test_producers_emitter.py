from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provline.producers import JobSettings, MemoryTransport, build_emitter
from provline.producers.emitter import Emitter
from provline.producers.errors import ConfigurationError
from provline.producers.processor import BatchProcessor
from provline.schemas import default_catalog
from provline.schemas.integrity import load_public_key, signature_valid
from provline.sink.verify import Trust
from tests.helpers import chain_findings, decoded, events_sent, memory_emitter, sent


def deployment(version: str) -> dict:
    return {"model_name": "m", "model_version": version, "environment": "prod", "endpoint": "/p", "action": "DEPLOY"}


class FlakyProcessor(BatchProcessor):
    """Refuses the messages whose positions are listed, as a full queue with ``on_full="drop"`` does."""

    def __init__(self, drop_at: set[int]) -> None:
        transport = MemoryTransport()
        super().__init__(lambda: transport, JobSettings().emitter)
        self.drop_at = drop_at
        self.calls = 0

    def submit(self, topic: str, key: bytes, value: bytes) -> bool:
        self.calls += 1
        if self.calls in self.drop_at:
            return False
        return super().submit(topic, key, value)


def test_dropped_events_are_recorded_as_a_delivery_gap_once_delivery_resumes() -> None:
    emitter = Emitter(FlakyProcessor(drop_at={2, 3, 4}), producer_name="flaky")
    for version in "12345":
        emitter.emit("Deployment", deployment(version))
    events = decoded(emitter)
    assert [kind for kind, _ in events] == ["Deployment", "Deployment", "DeliveryGap"]
    gap = events[2][1]
    assert gap["dropped"] == 3 and gap["reason"] == "queue_full"
    assert gap["first_time"] <= gap["last_time"]
    assert events[1][1]["model_version"] == "5"
    # the chain skips the dropped events: what was delivered still verifies
    assert chain_findings(sent(emitter)) == []


def test_a_delivery_gap_that_is_dropped_itself_is_sent_later_with_its_count() -> None:
    # Sends: 1 kept, 2-3 dropped, 4 kept, 5 (the gap of 2-3) dropped, 6 kept, then that gap and the gap of 5.
    emitter = Emitter(FlakyProcessor(drop_at={2, 3, 5}), producer_name="flaky")
    for version in "12345":
        emitter.emit("Deployment", deployment(version))
    events = decoded(emitter)
    assert [kind for kind, _ in events] == ["Deployment", "Deployment", "Deployment", "DeliveryGap", "DeliveryGap"]
    assert [value["dropped"] for _, value in events[3:]] == [2, 1]
    assert chain_findings(sent(emitter)) == []


def pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize("encoding", ["pem", "base64"])
def test_events_are_signed_with_the_configured_key(encoding: str) -> None:
    key = Ed25519PrivateKey.generate()
    text = pem(key) if encoding == "pem" else base64.b64encode(
        key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())).decode()
    emitter, _ = memory_emitter(signing={"key": text})
    emitter.emit("Deployment", deployment("1"))
    [(_, event)] = decoded(emitter)
    public = load_public_key(base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode())
    assert signature_valid(public, event)
    assert not signature_valid(public, {**event, "hash": "0" * 64})
    assert not signature_valid(load_public_key(
        base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()), event)
    assert chain_findings(sent(emitter), trust=Trust({"test": (public,)})) == []
    assert [f.problem for f in chain_findings(sent(emitter), trust=Trust({"other-producer": (public,)}))] == [
        "untrusted"]


@pytest.mark.parametrize(("key", "message"), [
    ("not a key!", "neither PEM nor base64"),
    (base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
])
def test_an_unusable_signing_key_fails_at_start_up(key: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"PROVLINE_SIGNING__KEY cannot be used: .*{message}"):
        build_emitter(JobSettings(signing={"key": key}), transport=MemoryTransport())


def test_a_closed_emitter_records_the_drop() -> None:
    emitter, transport = memory_emitter()
    emitter.emit("Deployment", deployment("0"))
    emitter.close()
    emitter.emit("Deployment", deployment("1"))
    # closing sealed the session: its last event is the final seal, nothing follows it
    kinds = [(d.record, d.value) for d in (default_catalog().decode(raw) for raw in events_sent(transport))]
    assert [(kind, value.get("count"), value.get("final")) for kind, value in kinds] == [
        ("Deployment", None, None), ("SessionSeal", 1, True)]
    assert emitter.drops.take()[0]["reason"] == "emitter_closed"


def test_a_session_that_emitted_nothing_closes_without_a_seal() -> None:
    """A service that publishes rarely (serve, with no Feedback) adds nothing to the record at each restart."""
    emitter, transport = memory_emitter()
    assert emitter.close()
    emitter.emit("Deployment", deployment("1"))
    assert events_sent(transport) == []
    assert emitter.drops.take()[0]["reason"] == "emitter_closed"


def test_the_file_transport_appends_each_message_as_a_json_line(tmp_path) -> None:
    import json

    path = tmp_path / "out" / "events.jsonl"
    emitter = build_emitter(JobSettings(emitter={"transport": "file", "file": path}), producer_name="offline")
    sent_events = [emitter.emit("Deployment", deployment(str(i))) for i in range(3)]
    assert emitter.close(5.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    decoded = [default_catalog().decode(base64.b64decode(line["value"])) for line in lines]
    assert [d.value["event_id"] for d in decoded[:3]] == [e["event_id"] for e in sent_events]
    assert [d.record for d in decoded[3:]] == ["SessionSeal"]  # the session's final seal
    assert {line["topic"] for line in lines} == {"provline.lineage.v1"}
    assert [base64.b64decode(line["key"]).decode() for line in lines[:3]] == [f"m@{i}" for i in range(3)]


def test_the_file_transport_needs_a_file() -> None:
    with pytest.raises(ValueError, match="PROVLINE_EMITTER__FILE"):
        JobSettings(emitter={"transport": "file"})


def test_a_session_seals_itself_while_events_flow_and_once_at_close() -> None:
    emitter, transport = memory_emitter(emitter={"seal_interval_s": 30})
    emitter.emit("Deployment", deployment("1"))
    emitter._last_seal = float("-inf")  # the seal interval has passed
    emitter.emit("Deployment", deployment("2"))
    emitter.emit("Deployment", deployment("3"))  # no new seal: the interval starts again
    emitter.close()
    events = [default_catalog().decode(m.value).value | {"kind": default_catalog().decode(m.value).record}
              for m in transport.messages]
    assert [(e["kind"], e.get("count"), e.get("final")) for e in events] == [
        ("Deployment", None, None), ("Deployment", None, None), ("SessionSeal", 2, False),
        ("Deployment", None, None), ("SessionSeal", 4, True)]
    assert chain_findings(events_sent(transport)) == []
