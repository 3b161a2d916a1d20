"""Configuration of ``provline serve`` (sink writer + audit API) and of the store commands."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLICKHOUSE_URL = "chdb://.provline/clickhouse"
DEFAULT_BATCH_MAX_EVENTS = 20_000  # bench/sink.py: 20k-event inserts reach ~1.7x the rows/s of 5k ones
DEFAULT_BATCH_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_BATCH_MAX_SECONDS = 0.5
DEFAULT_PREFETCH_KBYTES = 32 * 1024
DEFAULT_API_PORT = 8700

Role = Literal["viewer", "auditor", "admin"]
_CLUSTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class ApiGrant(BaseModel):
    """One bearer token of the audit API and the role it is granted."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr = Field(min_length=16)
    role: Role


class SinkSettings(BaseSettings):
    """Settings from ``PROVLINE_*`` environment variables (nested with ``__``); unknown keys are errors.

    ``clickhouse_url`` is ``chdb://<path>[?database=<db>]`` for the embedded chDB store on disk
    (relative paths are relative to the working directory) or
    ``http(s)://user:password@host:port/<database>`` for a ClickHouse server.

    ``api_tokens`` maps a reader's name to its token and role, e.g.
    ``PROVLINE_API_TOKENS='{"alice": {"token": "…", "role": "auditor"}}'``; without tokens every
    ``/v1`` request is refused. ``retention_days`` maps a table to the days its rows are kept
    (``{"inference_requests": 90}``), applied as a TTL by ``provline migrate`` / ``serve``.
    ``cluster`` runs the DDL ``ON CLUSTER`` with Replicated engines.
    """

    model_config = SettingsConfigDict(env_prefix="PROVLINE_", env_nested_delimiter="__", extra="forbid")

    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    topic_prefix: str = "provline"
    clickhouse_url: str = DEFAULT_CLICKHOUSE_URL
    cluster: str | None = None
    retention_days: dict[str, int] = Field(default_factory=dict)
    consumer_group: str = "provline-sink"
    # Kafka static membership: a sink restarted with the same id (e.g. the pod name) gets its
    # partitions back at once instead of waiting out the dead member's session timeout.
    consumer_instance_id: str | None = None
    session_timeout_ms: int = Field(default=45_000, ge=1_000)
    batch_max_events: int = Field(default=DEFAULT_BATCH_MAX_EVENTS, ge=1)
    batch_max_bytes: int = Field(default=DEFAULT_BATCH_MAX_BYTES, ge=1024)
    batch_max_seconds: float = Field(default=DEFAULT_BATCH_MAX_SECONDS, gt=0)
    # Store connections inserting a batch's event tables in parallel (one core each in ClickHouse).
    insert_threads: int = Field(default=2, ge=1, le=16)
    # librdkafka's prefetch queue per partition: bounds the memory held while inserts are slow.
    prefetch_max_kbytes: int = Field(default=DEFAULT_PREFETCH_KBYTES, ge=1024)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535)
    api_tokens: dict[str, ApiGrant] = Field(default_factory=dict)
    signing_key: SecretStr | None = Field(
        None, description="Ed25519 private key (PEM or base64 of 32 bytes) that signs evidence bundles",
    )
    event_public_key: str | None = Field(
        None, description="Ed25519 public key (PEM or base64) of the producers; `verify` then checks signatures",
    )

    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, value: str | None) -> str | None:
        if value is not None and not _CLUSTER_NAME.match(value):
            raise ValueError(f"cluster {value!r} must be a ClickHouse cluster name (letters, digits, _ . -)")
        return value

    @field_validator("retention_days")
    @classmethod
    def _positive_days(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {table: days for table, days in value.items() if days < 1}
        if bad:
            raise ValueError(f"retention_days must be at least 1 day; got {bad}; drop the entry to keep rows forever")
        return value

    @model_validator(mode="after")
    def _distinct_tokens(self) -> SinkSettings:
        seen: dict[str, str] = {}
        for name, grant in self.api_tokens.items():
            secret = grant.token.get_secret_value()
            if secret in seen:
                raise ValueError(f"api_tokens {seen[secret]!r} and {name!r} share one token; give each reader its own")
            seen[secret] = name
        return self
