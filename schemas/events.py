"""The event model's conventions: envelope fields, topics and message keys.

Pure functions; no I/O. ``new_envelope`` gives the fields every event starts with; the hash
chain fields are filled in by :mod:`provline.schemas.integrity` when the event is sealed.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import uuid_utils

LINEAGE_KINDS = frozenset({
    "DatasetVersion", "FeatureSetVersion", "RunEvent", "ModelVersion", "Evaluation", "Decision",
    "Deployment", "DeliveryGap", "SessionSeal",
})
INFERENCE_KINDS = frozenset({"InferenceRequest", "InferenceResponse", "Feedback"})


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix (``PROVLINE_TOPICS__PREFIX``)."""

    prefix: str

    @property
    def lineage(self) -> str:
        return f"{self.prefix}.lineage.v1"

    @property
    def inference(self) -> str:
        return f"{self.prefix}.inference.v1"

    @property
    def traces(self) -> str:
        return f"{self.prefix}.traces.v1"

    @property
    def drift(self) -> str:
        return f"{self.prefix}.drift.v1"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq.v1"

    @property
    def all(self) -> list[str]:
        return [self.lineage, self.inference, self.traces, self.drift, self.dlq]

    def for_kind(self, kind: str) -> str:
        if kind in INFERENCE_KINDS:
            return self.inference
        if kind in LINEAGE_KINDS:
            return self.lineage
        if kind == "PredictionTrace":
            return self.traces
        if kind == "DriftMetric":
            return self.drift
        raise ValueError(f"no topic for event kind {kind!r}")


def model_key(model_name: str, version: str) -> str:
    return f"{model_name}@{version}"


def key_for(kind: str, value: dict[str, Any]) -> str:
    """The message key: the event's subject, so that events about one subject stay in order."""
    if kind == "Feedback":  # by prediction id; one naming only the client's request id, by that
        return str(value.get("prediction_id") or value["client_request_id"])
    if kind in INFERENCE_KINDS or kind == "PredictionTrace":
        return str(value["prediction_id"])
    if kind == "DatasetVersion" or kind == "FeatureSetVersion":
        return str(value["digest"])
    if kind == "RunEvent":
        return str(value["run_id"])
    if kind == "ModelVersion":
        return model_key(value["model_name"], value["version"])
    if kind in ("Evaluation", "Deployment"):
        return model_key(value["model_name"], value["model_version"])
    if kind == "Decision":
        return str(value["subject"])
    if kind == "DriftMetric":
        return f"{model_key(value['model_name'], value['model_version'])}/{value['feature']}"
    if kind in ("DeliveryGap", "SessionSeal"):
        return str(value["producer"]["session_id"])
    raise ValueError(f"no key rule for event kind {kind!r}")


def provline_version() -> str:
    try:
        return metadata.version("provline")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def new_event_id() -> str:
    """A UUIDv7: unique, and sorting by it sorts by creation time."""
    return str(uuid_utils.uuid7())


def stable_event_id(namespace: str, subject: str, time_us: int) -> str:
    """A UUIDv7-shaped id that depends only on its arguments, time-ordered like every event id.

    48 bits of milliseconds from ``time_us``, the version and variant bits, and 74 bits of
    SHA-256 over ``namespace`` and ``subject``. Events derived from others (traces, resolved
    Feedback) take such ids, so deriving one again after a crash gives the same id and the sink keeps one.
    """
    digest = int.from_bytes(hashlib.sha256(f"{namespace}\x00{subject}".encode()).digest()[:10], "big")
    millis = (time_us // 1000) & ((1 << 48) - 1)
    rand_a = (digest >> 68) & 0xFFF
    rand_b = digest & ((1 << 62) - 1)
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


def utcnow() -> datetime:
    return datetime.now(UTC)


def producer_identity(name: str, session_id: str) -> dict[str, str]:
    return {"name": name, "host": socket.gethostname(), "version": provline_version(), "session_id": session_id}


def new_envelope(producer: dict[str, str], *, event_time: datetime | None = None) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "event_time": event_time or utcnow(),
        "producer": producer,
        "prev_hash": None,
        "hash": "",
        "signature": None,
    }
