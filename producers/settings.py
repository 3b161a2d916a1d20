"""Emitter settings, from ``PROVLINE_*`` environment variables or keyword arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from provline.producers.capture import DEFAULT_ENV_ALLOW_LIST
from provline.schemas.events import DEFAULT_TOPIC_PREFIX

DEFAULT_QUEUE_MAX_MESSAGES = 100_000
DEFAULT_MAX_IN_FLIGHT = 100_000
DEFAULT_LINGER_MS = 5.0
DEFAULT_SPOOL_MAX_BYTES = 1 << 30


class EmitterSettings(BaseSettings):
    """How a job or service publishes lineage events.

    ``transport``: ``kafka`` publishes to ``kafka_bootstrap``; ``memory`` keeps events in the
    process (tests); ``console`` prints one line per event; ``none`` disables provline with one
    warning. When ``transport`` is not set, ``kafka`` is used if ``kafka_bootstrap`` is set,
    otherwise ``none``: importing provline without a broker configured never breaks a job.
    """

    model_config = SettingsConfigDict(env_prefix="PROVLINE_", env_nested_delimiter="__", extra="forbid")

    transport: Literal["kafka", "memory", "console", "none"] | None = None
    kafka_bootstrap: str | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    producer_name: str | None = None
    queue_max_messages: int = Field(DEFAULT_QUEUE_MAX_MESSAGES, gt=0, description="in-memory queue bound")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, gt=0, description="messages handed to librdkafka, unacked")
    linger_ms: float = Field(DEFAULT_LINGER_MS, ge=0)
    spool_dir: Path | None = Field(
        None, description="durable spool; events left undelivered are sent by the next process using it. "
        "Default: a private temporary directory (no replay across processes)",
    )
    spool_fsync: Literal["always", "interval", "never"] = "interval"
    spool_max_bytes: int = Field(DEFAULT_SPOOL_MAX_BYTES, gt=0)
    on_full: Literal["block", "drop"] = Field(
        "block", description="when the queue is full (the spool cannot take events as fast as they come, or "
        "has reached spool_max_bytes): wait for room, or drop at once, count and record a delivery gap",
    )
    capture_env: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENV_ALLOW_LIST),
        description="environment variables a run records; names that look like secrets never are",
    )
    signing_key: SecretStr | None = Field(
        None, description="Ed25519 private key (PEM or base64 of 32 bytes) to sign every event's hash",
    )
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="extra librdkafka settings (SASL, TLS...), e.g. PROVLINE_KAFKA__SASL_MECHANISM",
    )

    def resolved_transport(self) -> str:
        if self.transport is not None:
            return self.transport
        return "kafka" if self.kafka_bootstrap else "none"
