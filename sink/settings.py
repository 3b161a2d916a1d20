"""Settings of ``provline serve`` (sink writer + audit API) and of the store commands: sections ``sink``
(the writer), ``store`` (ClickHouse), ``api`` (the audit API), ``sql`` (the API's read-only SQL),
``evidence`` (bundles and verification), ``feedback`` (ground truth sent to serve), the shared ``kafka``
and ``topics``, and ``emitter`` and ``signing`` for the Feedback serve publishes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from provline.config import AnchorSettings, KafkaSettings, ProvlineSettings, Section, SigningSettings, TopicSettings
from provline.producers.settings import EmitterSettings, PublishingSettings

DEFAULT_CLICKHOUSE_URL = "chdb://.provline/clickhouse"
DEFAULT_BATCH_MAX_EVENTS = 20_000  # bench/sink.py: 20k-event inserts reach ~1.7x the rows/s of 5k ones
DEFAULT_BATCH_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_BATCH_MAX_S = 0.5
DEFAULT_PREFETCH_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_INSERT_THREADS = 2
DEFAULT_API_PORT = 8700
DEFAULT_CONSUMER_GROUP = "provline-sink"
# Limits of one statement of /v1/sql (sink/sandbox.py). One thread, so that ingestion and lookups keep
# the other cores; 10 s and 1 GiB bound the heavy scans an audit needs without letting one starve the sink.
DEFAULT_SQL_MAX_EXECUTION_S = 10.0
DEFAULT_SQL_MAX_MEMORY_BYTES = 1024 * 1024 * 1024
DEFAULT_SQL_MAX_ROWS_READ = 1_000_000_000
DEFAULT_SQL_MAX_RESULT_ROWS = 100_000
DEFAULT_SQL_MAX_RESULT_BYTES = 64 * 1024 * 1024
DEFAULT_SQL_MAX_THREADS = 1
# Statements are inspected with EXPLAIN under the same limits: below these, ordinary statements could not be.
MIN_SQL_RESULT_ROWS = 1000
MIN_SQL_RESULT_BYTES = 64 * 1024

DEFAULT_FEEDBACK_MAX_BATCH = 1000
DEFAULT_FEEDBACK_RESOLVE_INTERVAL_S = 5.0
DEFAULT_FEEDBACK_RESOLVE_RETENTION_S = 7 * 86_400.0

Role = Literal["viewer", "auditor", "admin", "feedback_writer"]
_CLUSTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class SinkSettings(Section):
    """The Kafka -> ClickHouse writer (section ``sink``)."""

    consumer_group: str = Field(DEFAULT_CONSUMER_GROUP, min_length=1, description="Kafka consumer group")
    consumer_instance_id: str | None = Field(
        None, description="Kafka static membership: a sink restarted with the same id (e.g. the pod name) gets its "
        "partitions back at once instead of waiting out the dead member's session timeout",
    )
    batch_max_events: int = Field(DEFAULT_BATCH_MAX_EVENTS, ge=1, description="events per insert, at most")
    batch_max_bytes: int = Field(DEFAULT_BATCH_MAX_BYTES, ge=1024, description="bytes per insert, at most")
    batch_max_s: float = Field(DEFAULT_BATCH_MAX_S, gt=0, description="longest wait to fill a batch")
    insert_threads: int = Field(
        DEFAULT_INSERT_THREADS, ge=1, le=16,
        description="store connections inserting a batch's event tables in parallel (one core each in ClickHouse)",
    )
    prefetch_max_bytes: int = Field(
        DEFAULT_PREFETCH_MAX_BYTES, ge=1024 * 1024,
        description="librdkafka's prefetch queue per partition: bounds the memory held while inserts are slow",
    )


class StoreSettings(Section):
    """Where events are stored (section ``store``)."""

    url: str = Field(
        DEFAULT_CLICKHOUSE_URL, description="chdb://<path>[?database=<db>] for the embedded store, or "
        "http(s)://user:password@host:port/<database> for a ClickHouse server",
    )
    cluster: str | None = Field(None, description="run the DDL ON CLUSTER with Replicated engines")
    retention_days: dict[str, int] = Field(
        default_factory=dict, description='days each table keeps its rows, as JSON, e.g. {"inference_requests": 90}',
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


class ApiGrant(BaseModel):
    """One bearer token of the audit API and the role it is granted."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr = Field(min_length=16)
    role: Role


class ApiSettings(Section):
    """The audit API (section ``api``); without tokens every ``/v1`` request is refused."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(DEFAULT_API_PORT, ge=0, le=65535, description="listen port")
    tokens: dict[str, ApiGrant] = Field(
        default_factory=dict,
        description='reader name -> token and role (viewer, auditor or admin; or feedback_writer, which may only '
        'POST /v1/feedback), as JSON, e.g. {"alice": {"token": "...", "role": "auditor"}}',
    )

    @model_validator(mode="after")
    def _distinct_tokens(self) -> ApiSettings:
        seen: dict[str, str] = {}
        for name, grant in self.tokens.items():
            secret = grant.token.get_secret_value()
            if secret in seen:
                raise ValueError(f"tokens {seen[secret]!r} and {name!r} share one token; give each reader its own")
            seen[secret] = name
        return self


class SqlSettings(Section):
    """Read-only SQL of the audit API (section ``sql``): the limits every statement runs under, enforced by the
    engine, and, for a ClickHouse server, the read-only users statements run as (README: "SQL over the API")."""

    max_execution_s: float = Field(
        DEFAULT_SQL_MAX_EXECUTION_S, gt=0, le=3600,
        description="seconds one statement may run; the engine stops it then",
    )
    max_memory_bytes: int = Field(
        DEFAULT_SQL_MAX_MEMORY_BYTES, ge=16 * 1024 * 1024, description="memory one statement may use in the engine",
    )
    max_rows_read: int = Field(DEFAULT_SQL_MAX_ROWS_READ, ge=1, description="rows one statement may read from tables")
    max_result_rows: int = Field(
        DEFAULT_SQL_MAX_RESULT_ROWS, ge=MIN_SQL_RESULT_ROWS,
        description="rows one answer may have (statements are inspected with EXPLAIN under this limit too)",
    )
    max_result_bytes: int = Field(
        DEFAULT_SQL_MAX_RESULT_BYTES, ge=MIN_SQL_RESULT_BYTES,
        description="bytes one answer may have, in the engine and as JSON (EXPLAIN output counts too)",
    )
    max_threads: int = Field(
        DEFAULT_SQL_MAX_THREADS, ge=1, le=64,
        description="engine threads per statement; 1 leaves the other cores to ingestion and lookups",
    )
    auditor_url: SecretStr | None = Field(
        None, description="with a ClickHouse server: http(s)://user:password@host:port/<database> of the read-only "
        "user auditors' SQL runs as (`provline sql-grants` prints its profile and grants)",
    )
    admin_url: SecretStr | None = Field(
        None, description="with a ClickHouse server: the read-only user admins' SQL runs as (may read access_log)",
    )


class EvidenceSettings(Section):
    """Keys for evidence bundles and for verifying stored events (section ``evidence``)."""

    signing_key: SecretStr | None = Field(
        None, description="Ed25519 private key (PEM or base64 of 32 bytes) that signs evidence bundles",
    )
    trusted_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description='producer name -> its Ed25519 public keys (PEM or base64), as JSON, e.g. {"sidecar": ["..."], '
        '"stream_processors": ["..."]}; set: `verify` requires every event signed by a key trusted for its producer',
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_load(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from provline.sink.verify import Trust

        Trust.from_config(value)  # a key that cannot be read is an error at start, naming its producer
        return value


class FeedbackSettings(Section):
    """Ground truth sent to serve (section ``feedback``): ``POST /v1/feedback`` and the resolution of
    Feedback that names a prediction by the client's request id (:mod:`provline.sink.feedback`)."""

    max_batch: int = Field(
        DEFAULT_FEEDBACK_MAX_BATCH, ge=1, le=100_000, description="feedback items one POST /v1/feedback may carry",
    )
    resolve_interval_s: float = Field(
        DEFAULT_FEEDBACK_RESOLVE_INTERVAL_S, gt=0,
        description="how often stored Feedback naming only a client request id is resolved against the traces",
    )
    resolve_retention_s: float = Field(
        DEFAULT_FEEDBACK_RESOLVE_RETENTION_S, gt=0,
        description="how long such Feedback is retried while no stored trace carries its request id",
    )


DEFAULT_PERFORMANCE_WINDOW_S = 3600.0
DEFAULT_MONITOR_INTERVAL_S = 60.0
DEFAULT_ALERT_RETRIES = 3


class AlertReceiver(BaseModel):
    """Where alerts go: ``webhook`` (generic JSON), ``slack`` (Slack-compatible ``{"text"}``) or
    ``alertmanager`` (its base URL; alerts are posted to ``/api/v2/alerts``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["webhook", "slack", "alertmanager"]
    url: str = Field(pattern=r"^https?://")


class MonitoringSettings(Section):
    """Model performance and alerts, computed by ``provline serve`` (section ``monitoring``)."""

    policy: Path | None = Field(None, description="the monitoring policy file (YAML): per model the prediction "
                                "and score fields, the task and alert thresholds (docs/operations.md)")
    window_s: float = Field(DEFAULT_PERFORMANCE_WINDOW_S, gt=0,
                            description="window of prediction time performance is computed over (3600: hourly)")
    interval_s: float = Field(DEFAULT_MONITOR_INTERVAL_S, gt=0,
                              description="seconds between two rounds of performance computation and alert rules")
    receivers: list[AlertReceiver] = Field(default_factory=list, description='alert receivers, as JSON, e.g. '
                                           '[{"kind": "slack", "url": "https://hooks.slack.com/..."}]')
    retries: int = Field(DEFAULT_ALERT_RETRIES, ge=0, description="retries of a failed delivery per round")
    generator_url: str = Field("", description="the generatorURL of Alertmanager alerts (a link to your console)")

    @field_validator("policy")
    @classmethod
    def _policy_loads(cls, value: Path | None) -> Path | None:
        from provline.sink.monitoring import MonitoringPolicy

        MonitoringPolicy.load(value)  # a wrong policy file is an error at start, naming its line and key
        return value


class ServeSettings(ProvlineSettings):
    """Settings of ``provline serve`` and of the commands that open the store themselves (``migrate``)."""

    service: ClassVar[str] = "serve"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
    anchor: AnchorSettings = Field(default_factory=AnchorSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    emitter: EmitterSettings = Field(default_factory=EmitterSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)

    def publishing(self) -> PublishingSettings:
        """The settings serve publishes Feedback with (already validated, so not re-read from the environment).

        Every append to the spool is fsynced and a full queue refuses at once: ``POST /v1/feedback``
        answers "accepted" only once its events are on disk, and 503 rather than waiting for room."""
        emitter = self.emitter.model_copy(update={"spool_fsync": "always", "on_full": "drop"})
        return PublishingSettings.model_construct(
            kafka=self.kafka, topics=self.topics, signing=self.signing, emitter=emitter,
        )
