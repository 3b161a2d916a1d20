"""Sidecar settings, from ``PROVLINE_*`` environment variables or keyword arguments.

    PROVLINE_UPSTREAM=http://127.0.0.1:8000   the model server (required)
    PROVLINE_SIDECAR_PORT=8080                 where clients connect
    PROVLINE_SIDECAR_WORKERS=4                 worker processes sharing the port
    PROVLINE_SIDECAR_POLICY=policy.yaml        redaction, capture mode and sampling per route (sidecar.policy)
    PROVLINE_REDACTION_KEY=...                 HMAC key for fields the policy hashes
    PROVLINE_KAFKA_BOOTSTRAP=broker:9092        the emitter's settings, exactly as for EmitterSettings;
                                               the sidecar always uses on_full=drop and one spool per worker

Build once at start-up and pass down; nothing here reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from provline.producers.settings import EmitterSettings
from provline.sidecar.model_version import DEFAULT_METADATA_TTL_S
from provline.sidecar.payload import DEFAULT_MAX_FEATURES

DEFAULT_PORT = 8080
DEFAULT_ADMIN_PORT = 9090
DEFAULT_MAX_CAPTURE_BYTES = 64 * 1024
DEFAULT_MAX_PARSE_BYTES = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 100
# Shorter than the idle timeout of common model servers (uvicorn 5 s), so a pooled connection is
# dropped by us before the upstream closes it under a non-idempotent POST (which cannot be retried).
DEFAULT_KEEPALIVE_S = 4.0
DEFAULT_FLUSH_TIMEOUT_S = 10.0
# Replies up to this size (by Content-Length) are read whole and sent in one piece, the fastest path;
# larger ones, and those of unknown length, are streamed to the client as they arrive.
DEFAULT_STREAM_THRESHOLD_BYTES = 256 * 1024


class SidecarSettings(BaseSettings):
    """How the sidecar proxies one model server and records its predictions."""

    # populate_by_name: keyword arguments use the field names (host=, port=, admin_port=), while the
    # environment uses the aliases, which say "SIDECAR" so they cannot be mistaken for another
    # component's listen address.
    model_config = SettingsConfigDict(
        env_prefix="PROVLINE_", env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    upstream: HttpUrl = Field(description="model server base URL; a path prefix is kept, e.g. http://m:8000/v2")
    host: str = Field("0.0.0.0", validation_alias="PROVLINE_SIDECAR_HOST", description="listen address")
    port: int = Field(
        DEFAULT_PORT, ge=0, le=65535, validation_alias="PROVLINE_SIDECAR_PORT", description="proxy listen port"
    )
    admin_port: int = Field(
        DEFAULT_ADMIN_PORT, ge=0, le=65535, validation_alias="PROVLINE_SIDECAR_ADMIN_PORT",
        description="/healthz, /readyz and /metrics listen port",
    )
    endpoint: str | None = Field(None, description="endpoint name recorded in events; default: the request path")
    model_name: str | None = None
    model_version: str | None = Field(
        None, description="recorded when the upstream sends no X-Model-Version response header"
    )
    upstream_connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    upstream_read_timeout_s: float = Field(
        DEFAULT_READ_TIMEOUT_S, gt=0, description="longest silence while waiting for upstream bytes; then 504"
    )
    upstream_max_connections: int = Field(DEFAULT_MAX_CONNECTIONS, gt=0)
    upstream_keepalive_s: float = Field(DEFAULT_KEEPALIVE_S, gt=0)
    max_capture_bytes: int = Field(
        DEFAULT_MAX_CAPTURE_BYTES, ge=0, description="body bytes stored in events; the SHA-256 covers all"
    )
    max_parse_bytes: int = Field(
        DEFAULT_MAX_PARSE_BYTES, ge=0, description="larger bodies are hashed but not parsed for features"
    )
    max_features: int = Field(DEFAULT_MAX_FEATURES, ge=0, description="feature values kept per event")
    stream_threshold_bytes: int = Field(
        DEFAULT_STREAM_THRESHOLD_BYTES, ge=0, description="replies larger than this are streamed, not buffered"
    )
    workers: int = Field(1, ge=1, validation_alias="PROVLINE_SIDECAR_WORKERS", description="worker processes")
    policy_file: Path | None = Field(
        None, validation_alias="PROVLINE_SIDECAR_POLICY",
        description="YAML capture policy: fields to drop, hash or mask, capture mode and sampling per route",
    )
    redaction_key: SecretStr | None = Field(
        None, validation_alias="PROVLINE_REDACTION_KEY", description="HMAC key for fields the policy hashes"
    )
    capture_mode: Literal["full", "redacted", "hash-only"] | None = Field(
        None, description="default capture mode when the policy names none: redacted with a policy, else full"
    )
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="default share of predictions recorded")
    kserve_metadata: bool = Field(True, description="ask a KServe V2 server for the model version when needed")
    metadata_ttl_s: float = Field(DEFAULT_METADATA_TTL_S, gt=0)
    follow_deployments: bool = Field(
        False, description="read Deployment events from the lineage topic to know each endpoint's model version"
    )
    log_format: Literal["json", "text"] = Field("json", description="log lines as JSON objects or as text")
    flush_timeout_s: float = Field(
        DEFAULT_FLUSH_TIMEOUT_S, ge=0, description="how long shutdown waits for queued events to be delivered"
    )
    emitter: EmitterSettings = Field(
        default_factory=EmitterSettings,
        description="Kafka settings; PROVLINE_KAFKA_BOOTSTRAP, PROVLINE_TOPIC_PREFIX... as for any emitter",
    )

    @field_validator("upstream")
    @classmethod
    def _plain_base_url(cls, value: HttpUrl) -> HttpUrl:
        if value.query or value.fragment:
            raise ValueError(
                f"upstream {value} has a query or fragment; give the model server's base URL only, "
                "e.g. PROVLINE_UPSTREAM=http://127.0.0.1:8000"
            )
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> SidecarSettings:
        if self.port and self.port == self.admin_port:
            raise ValueError(
                f"port and admin_port (PROVLINE_SIDECAR_PORT, PROVLINE_SIDECAR_ADMIN_PORT) are both {self.port}; "
                "the admin endpoints need their own port so they never shadow proxied paths"
            )
        return self
