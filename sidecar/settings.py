"""Sidecar settings: sections ``sidecar`` (the proxy), ``capture`` (what of each body is recorded) and
the publishing sections every emitter reads (``kafka``, ``topics``, ``signing``, ``emitter``).

    PROVLINE_SIDECAR__UPSTREAM=http://127.0.0.1:8000   the model server (required)
    PROVLINE_SIDECAR__PORT=8080                         where clients connect
    PROVLINE_SIDECAR__WORKERS=4                         worker processes sharing the port
    PROVLINE_CAPTURE__POLICY_FILE=policy.yaml           redaction, capture mode and sampling per route
    PROVLINE_CAPTURE__REDACTION_KEY=...                 HMAC key for what the policy hashes and for the body
                                                        digests of redacted and hash-only captures
    PROVLINE_KAFKA__BOOTSTRAP=broker:9092               as for any emitter; the sidecar always drops
                                                        rather than waits (on_full=drop), one spool per worker
    PROVLINE_OTEL__ENDPOINT=http://collector:4318/v1/traces  optional: one OTLP span per recorded exchange

Build once at start-up and pass down; nothing here reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator

from provline.config import Section
from provline.producers.settings import PublishingSettings
from provline.sidecar.limits import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CLIENT_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
)
from provline.sidecar.model_version import DEFAULT_METADATA_TTL_S
from provline.sidecar.otel import OtelSettings
from provline.sidecar.payload import DEFAULT_MAX_FEATURES, DEFAULT_MAX_ROWS

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
# Replies up to this size (by Content-Length) are read whole and sent in one piece, the fastest path;
# larger ones, and those of unknown length, are streamed to the client as they arrive.
DEFAULT_STREAM_THRESHOLD_BYTES = 256 * 1024

CaptureMode = Literal["full", "redacted", "hash-only"]


class CaptureSettings(Section):
    """What of each exchanged body is recorded (section ``capture``); the digest always covers every byte."""

    policy_file: Path | None = Field(
        None, description="YAML capture policy: fields to drop, hash or mask, capture mode and sampling per route",
    )
    redaction_key: SecretStr | None = Field(
        None, description="HMAC key for what the policy hashes and for body digests where redaction applies "
        "(modes redacted and hash-only: hmac-sha256:<hex>); required by those modes and by hash rules",
    )
    mode: CaptureMode | None = Field(
        None, description="full, redacted or hash-only, where the policy names none; default: redacted with a "
        "policy, else full",
    )
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="share of predictions recorded, where the policy "
                                                                 "names none")
    max_capture_bytes: int = Field(DEFAULT_MAX_CAPTURE_BYTES, ge=0, description="body bytes stored in events")
    max_parse_bytes: int = Field(
        DEFAULT_MAX_PARSE_BYTES, ge=0, description="larger bodies are hashed but not parsed for features",
    )
    max_features: int = Field(DEFAULT_MAX_FEATURES, ge=0, description="feature (output) values kept per row")


class ProxySettings(Section):
    """How the sidecar proxies one model server (section ``sidecar``)."""

    upstream: HttpUrl = Field(description="model server base URL; a path prefix is kept, e.g. http://m:8000/v2")
    host: str = Field("0.0.0.0", description="listen address of the proxy and admin ports")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="proxy listen port")
    admin_port: int = Field(DEFAULT_ADMIN_PORT, ge=0, le=65535, description="/healthz, /readyz and /metrics port")
    workers: int = Field(1, ge=1, description="worker processes sharing the proxy port")
    endpoint: str | None = Field(
        None, description="endpoint name recorded in events; default: the request's canonical endpoint (its path, "
        "without a model version for KServe V2 and TF Serving)",
    )
    model_name: str | None = Field(None, description="recorded when nothing better is known")
    model_version: str | None = Field(
        None, description="recorded when the upstream names no version (X-Model-Version, KServe V2)",
    )
    mlflow_model: Path | None = Field(
        None, description="the MLflow model directory the upstream (`mlflow models serve -m`) was started with: "
        "its MLmodel's model_uuid is recorded on every exchange, and the processors trace it to the registered "
        "version whose ModelVersion names that uuid (provline mlflow import), even one imported later",
    )
    upstream_connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0, description="then 504")
    upstream_read_timeout_s: float = Field(
        DEFAULT_READ_TIMEOUT_S, gt=0, description="longest silence while waiting for upstream bytes; then 504",
    )
    upstream_max_connections: int = Field(DEFAULT_MAX_CONNECTIONS, gt=0, description="open at once, per worker")
    upstream_keepalive_s: float = Field(DEFAULT_KEEPALIVE_S, gt=0, description="idle upstream connections close")
    stream_threshold_bytes: int = Field(
        DEFAULT_STREAM_THRESHOLD_BYTES, ge=0, description="replies larger than this are streamed, not buffered",
    )
    max_header_bytes: int = Field(
        DEFAULT_MAX_HEADER_BYTES, ge=1024, description="request line and headers together; larger ones get 431 "
        "and the connection is closed, before the bytes are buffered",
    )
    header_timeout_s: float = Field(
        DEFAULT_HEADER_TIMEOUT_S, gt=0, description="request headers must arrive within this of the connection "
        "opening (or of the request's first byte, on a kept-alive connection); then 408 and the connection is closed",
    )
    idle_timeout_s: float = Field(
        DEFAULT_IDLE_TIMEOUT_S, gt=0, description="a kept-alive client connection idle this long is closed",
    )
    max_connections: int = Field(
        DEFAULT_MAX_CLIENT_CONNECTIONS, ge=1, description="client connections served at once, per worker; beyond "
        "them (or as many requests in flight) requests get 503",
    )
    max_rows: int = Field(
        DEFAULT_MAX_ROWS, ge=1, description="rows of a batch whose features (outputs) an event keeps; with "
        "PROVLINE_CAPTURE__MAX_FEATURES it bounds an event's size",
    )
    record_non_inference: bool = Field(
        False, description="record known health and metadata calls (KServe V2, TF Serving, MLflow) like "
        "predictions; by default they are relayed and counted only",
    )
    kserve_metadata: bool = Field(
        True, description="ask a KServe V2 server for a model's metadata: its version when needed, and the "
        "names of a 2-D tensor's columns",
    )
    metadata_ttl_s: float = Field(DEFAULT_METADATA_TTL_S, gt=0, description="how long model metadata is cached")
    follow_deployments: bool = Field(
        False, description="read Deployment events from the lineage topic to know each endpoint's model version",
    )
    log_format: Literal["json", "text"] = Field("json", description="log lines as JSON objects or as text")

    @field_validator("upstream")
    @classmethod
    def _plain_base_url(cls, value: HttpUrl) -> HttpUrl:
        if value.query or value.fragment:
            raise ValueError(
                f"upstream {value} has a query or fragment; give the model server's base URL only, "
                "e.g. PROVLINE_SIDECAR__UPSTREAM=http://127.0.0.1:8000"
            )
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> ProxySettings:
        if self.port and self.port == self.admin_port:
            raise ValueError(
                f"port and admin_port (PROVLINE_SIDECAR__PORT, PROVLINE_SIDECAR__ADMIN_PORT) are both {self.port}; "
                "the admin endpoints need their own port so they never shadow proxied paths"
            )
        return self


class SidecarSettings(PublishingSettings):
    """Settings of ``provline sidecar``."""

    service: ClassVar[str] = "sidecar"

    sidecar: ProxySettings
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    otel: OtelSettings = Field(default_factory=OtelSettings)


DEFAULT_INGEST_PORT = 8090
DEFAULT_INGEST_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_INGEST_MAX_CONNECTIONS = 128
DEFAULT_DURABLE_TIMEOUT_S = 5.0
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_INGEST_ENDPOINT = "{namespace}/{service}/{component}"
INGEST_ENDPOINT_FIELDS = ("namespace", "service", "component", "endpoint", "model")


class IngestServiceSettings(Section):
    """How ``provline ingest`` receives payload loggers' CloudEvents (section ``ingest``)."""

    host: str = Field("0.0.0.0", description="listen address")
    port: int = Field(DEFAULT_INGEST_PORT, ge=0, le=65535, description="where loggers send events; /healthz, "
                      "/readyz and /metrics are served on it too")
    max_body_bytes: int = Field(DEFAULT_INGEST_MAX_BODY_BYTES, ge=1, description="larger events get 413")
    max_connections: int = Field(
        DEFAULT_INGEST_MAX_CONNECTIONS, ge=1, description="logger connections served at once; beyond them 503. "
        "With max_body_bytes it bounds the memory events take before they are queued",
    )
    durable_timeout_s: float = Field(
        DEFAULT_DURABLE_TIMEOUT_S, gt=0, description="how long an event may wait to be fsynced into the spool "
        "before the logger is answered 503 (with Retry-After)",
    )
    retry_after_s: int = Field(DEFAULT_RETRY_AFTER_S, ge=0, description="Retry-After of a 503")
    endpoint: str = Field(
        DEFAULT_INGEST_ENDPOINT, description="the endpoint events record, a template of {namespace}, {service}, "
        "{component}, {endpoint} (default or canary) and {model}; name it in lineage.deploy(endpoint=...)",
    )
    model_version: str | None = Field(None, description="recorded when the reply names no model_version (KServe V2)")
    max_rows: int = Field(DEFAULT_MAX_ROWS, ge=1, description="rows of a batch whose features (outputs) an event keeps")
    log_format: Literal["json", "text"] = Field("json", description="log lines as JSON objects or as text")

    @field_validator("endpoint")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(INGEST_ENDPOINT_FIELDS, ""))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"endpoint template {value!r} cannot be filled ({exc}); use only "
                f"{', '.join('{' + f + '}' for f in INGEST_ENDPOINT_FIELDS)}, e.g. "
                f"PROVLINE_INGEST__ENDPOINT='{DEFAULT_INGEST_ENDPOINT}'"
            ) from exc
        return value


class IngestSettings(PublishingSettings):
    """Settings of ``provline ingest``: its own section, and the sidecar's ``capture`` and publishing sections."""

    service: ClassVar[str] = "ingest"

    ingest: IngestServiceSettings = Field(default_factory=IngestServiceSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
