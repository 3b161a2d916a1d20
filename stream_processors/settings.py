"""Configuration of the stream processors: one pydantic-settings object, env prefix ``PROVLINE_``.

Build it once (``ProcessorSettings()``) where the process starts and pass it down; nothing in
this package builds settings at import time.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from provline.stream_processors.drift import DEFAULT_DISTANCE_THRESHOLD, DEFAULT_P_VALUE, Thresholds

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC_PREFIX = "provline"
DEFAULT_APP_ID = "provline-processors"
DEFAULT_TOPIC_PARTITIONS = 4
DEFAULT_DATA_DIR = ".provline/processors"
DEFAULT_WEB_PORT = 6066
DEFAULT_LINEAGE_WAIT_SECONDS = 10.0
DEFAULT_PENDING_TTL_SECONDS = 60.0
DEFAULT_DEDUP_RETENTION_SECONDS = 300.0
DEFAULT_BATCH_SIZE = 1000
DEFAULT_BATCH_WITHIN_SECONDS = 0.05
DEFAULT_DRIFT_WINDOW_SECONDS = 600.0
DEFAULT_DRIFT_LATENESS_SECONDS = 90.0
DEFAULT_METRICS_PORT = 9466
DEFAULT_SESSION_TIMEOUT_SECONDS = 60.0


class ProcessorSettings(BaseSettings):
    """Settings of ``provline processors`` (the Faust worker).

    ``topic_partitions`` must equal the partition count of the inference and lineage topics:
    Faust refuses a table whose changelog has a different count from its source topic.
    """

    model_config = SettingsConfigDict(env_prefix="PROVLINE_", env_nested_delimiter="__", extra="forbid")

    kafka_bootstrap: str = Field(
        default=DEFAULT_KAFKA_BOOTSTRAP, min_length=1, description="comma-separated host:port list"
    )
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, min_length=1)
    app_id: str = Field(
        default=DEFAULT_APP_ID, min_length=1,
        description="Faust app id: consumer group and prefix of the changelog topics",
    )
    topic_partitions: int = Field(default=DEFAULT_TOPIC_PARTITIONS, ge=1)
    data_dir: str = Field(default=DEFAULT_DATA_DIR, min_length=1)
    web_port: int = Field(default=DEFAULT_WEB_PORT, ge=1, le=65535, description="Faust web server (health)")
    lineage_wait_seconds: float = Field(
        default=DEFAULT_LINEAGE_WAIT_SECONDS, gt=0,
        description="how long a joined trace waits for its lineage before it is emitted incomplete",
    )

    pending_ttl_seconds: float = Field(
        default=DEFAULT_PENDING_TTL_SECONDS, gt=0,
        description="how long a lone request or response waits for its other half before a partial trace",
    )
    dedup_retention_seconds: float = Field(
        default=DEFAULT_DEDUP_RETENTION_SECONDS, gt=0,
        description="how long an emitted prediction is remembered so duplicated halves yield no second trace",
    )
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, description="events per agent batch (stream.take)")
    batch_within_seconds: float = Field(
        default=DEFAULT_BATCH_WITHIN_SECONDS, gt=0, description="longest wait to fill a batch"
    )
    drift_window_seconds: float = Field(
        default=DEFAULT_DRIFT_WINDOW_SECONDS, gt=0, description="size of the tumbling drift windows (event time)"
    )
    drift_lateness_seconds: float = Field(
        default=DEFAULT_DRIFT_LATENESS_SECONDS, ge=0,
        description="wall-clock wait after a window's end before it closes; later values are dropped and counted",
    )
    drift_psi_threshold: float = Field(default=DEFAULT_DISTANCE_THRESHOLD, gt=0)
    drift_jensen_shannon_threshold: float = Field(default=DEFAULT_DISTANCE_THRESHOLD, gt=0)
    drift_wasserstein_threshold: float = Field(
        default=DEFAULT_DISTANCE_THRESHOLD, gt=0, description="of the distance divided by the baseline's std"
    )
    drift_ks_p_value: float = Field(default=DEFAULT_P_VALUE, gt=0, lt=1)
    drift_chi_squared_p_value: float = Field(default=DEFAULT_P_VALUE, gt=0, lt=1)
    drift_output_columns: dict[str, str] = Field(
        default_factory=dict,
        description="model output name -> training column it is compared with; by default the same name",
    )
    session_timeout_seconds: float = Field(
        default=DEFAULT_SESSION_TIMEOUT_SECONDS, gt=0,
        description="how long the group waits for a vanished worker before its partitions move",
    )
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORT, ge=0, le=65535, description="Prometheus /metrics port; 0 turns it off"
    )

    @model_validator(mode="after")
    def _check_waits(self) -> Self:
        if self.dedup_retention_seconds < self.pending_ttl_seconds:
            raise ValueError(
                f"dedup_retention_seconds {self.dedup_retention_seconds} is shorter than pending_ttl_seconds "
                f"{self.pending_ttl_seconds}: a half arriving after its partial trace would make a second one; "
                "raise PROVLINE_DEDUP_RETENTION_SECONDS or lower PROVLINE_PENDING_TTL_SECONDS"
            )
        return self

    def thresholds(self) -> Thresholds:
        return Thresholds(
            psi=self.drift_psi_threshold, jensen_shannon=self.drift_jensen_shannon_threshold,
            wasserstein=self.drift_wasserstein_threshold, ks_p_value=self.drift_ks_p_value,
            chi_squared_p_value=self.drift_chi_squared_p_value,
        )

    def bootstrap_servers(self) -> list[str]:
        """``kafka_bootstrap`` split into its host:port entries."""
        servers = [part.strip() for part in self.kafka_bootstrap.split(",") if part.strip()]
        if not servers:
            raise ValueError(
                f"kafka_bootstrap {self.kafka_bootstrap!r} names no broker; "
                "set PROVLINE_KAFKA_BOOTSTRAP to host:port[,host:port...]"
            )
        return servers
