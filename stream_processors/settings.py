"""Settings of ``provline processors``: sections ``processors`` (the join), ``drift`` and the shared
``kafka`` and ``topics``.

Build it once (``load_settings(ProcessorSettings)``) where the process starts and pass it down;
nothing in this package builds settings at import time.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, model_validator

from provline.config import KafkaSettings, ProvlineSettings, Section, SigningSettings, TopicSettings
from provline.stream_processors.drift import (
    DEFAULT_DISTANCE_THRESHOLD,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_P_VALUE,
    Thresholds,
)

DEFAULT_APP_ID = "provline-processors"
DEFAULT_DATA_DIR = ".provline/processors"
DEFAULT_WEB_PORT = 6066
DEFAULT_METRICS_PORT = 9466
DEFAULT_LINEAGE_WAIT_S = 10.0
DEFAULT_PENDING_TTL_S = 60.0
DEFAULT_DEDUP_RETENTION_S = 300.0
DEFAULT_FEEDBACK_RETENTION_S = 86_400.0  # labels a day late still join; docs/operations.md sizes its memory
DEFAULT_BATCH_SIZE = 1000
DEFAULT_BATCH_WITHIN_S = 0.05
DEFAULT_DRIFT_WINDOW_S = 600.0
DEFAULT_DRIFT_LATENESS_S = 90.0
DEFAULT_REBALANCE_LIMIT_S = 300.0  # librdkafka's default delivery timeout: a flush in a revoke may take that long


class WorkerSettings(Section):
    """One processors worker and its join (section ``processors``)."""

    app_id: str = Field(
        DEFAULT_APP_ID, min_length=1,
        description="Faust app id: consumer group and prefix of the changelog topics; workers with one id share "
        "the partitions",
    )
    data_dir: str = Field(DEFAULT_DATA_DIR, min_length=1, description="Faust's local state directory")
    web_port: int = Field(DEFAULT_WEB_PORT, ge=0, le=65535, description="Faust web server (health); 0: any free port")
    metrics_port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535, description="Prometheus /metrics; 0: any free port")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, description="events per agent batch (stream.take)")
    batch_within_s: float = Field(DEFAULT_BATCH_WITHIN_S, gt=0, description="longest wait to fill a batch")
    lineage_wait_s: float = Field(
        DEFAULT_LINEAGE_WAIT_S, gt=0,
        description="how long a joined trace waits for its lineage before it is emitted incomplete",
    )
    pending_ttl_s: float = Field(
        DEFAULT_PENDING_TTL_S, gt=0,
        description="how long a lone request or response waits for its other half before a partial trace",
    )
    dedup_retention_s: float = Field(
        DEFAULT_DEDUP_RETENTION_S, gt=0,
        description="how long an emitted prediction is remembered so duplicated halves yield no second trace",
    )

    feedback_retention_s: float = Field(
        DEFAULT_FEEDBACK_RETENTION_S, ge=0,
        description="how long a done prediction keeps its trace's fields so that a label arriving later yields a "
        "labelled revision (memory: docs/operations.md); 0: only for the dedup retention",
    )
    rebalance_limit_s: float = Field(
        DEFAULT_REBALANCE_LIMIT_S, gt=0,
        description="a worker in one rebalance for longer than this (table recovery not counted) exits with code 1 "
        "so that its supervisor restarts it: Faust can hang in a rebalance for good",
    )

    @model_validator(mode="after")
    def _check_waits(self) -> Self:
        if self.dedup_retention_s < self.pending_ttl_s:
            raise ValueError(
                f"dedup_retention_s {self.dedup_retention_s} is shorter than pending_ttl_s {self.pending_ttl_s}: a "
                "half arriving after its partial trace would make a second one; raise "
                "PROVLINE_PROCESSORS__DEDUP_RETENTION_S or lower PROVLINE_PROCESSORS__PENDING_TTL_S"
            )
        return self


class DriftSettings(Section):
    """Drift of inputs and outputs against the training data (section ``drift``)."""

    window_s: float = Field(DEFAULT_DRIFT_WINDOW_S, gt=0, description="tumbling windows, in event time")
    lateness_s: float = Field(
        DEFAULT_DRIFT_LATENESS_S, ge=0,
        description="wall-clock wait after a window's end before it closes; later values are dropped and counted",
    )
    psi_threshold: float = Field(DEFAULT_DISTANCE_THRESHOLD, gt=0, description="population stability index")
    jensen_shannon_threshold: float = Field(DEFAULT_DISTANCE_THRESHOLD, gt=0, description="Jensen-Shannon distance")
    wasserstein_threshold: float = Field(
        DEFAULT_DISTANCE_THRESHOLD, gt=0, description="of the distance divided by the baseline's std",
    )
    ks_p_value: float = Field(DEFAULT_P_VALUE, gt=0, lt=1, description="Kolmogorov-Smirnov: breached below it")
    chi_squared_p_value: float = Field(DEFAULT_P_VALUE, gt=0, lt=1, description="chi-squared: breached below it")
    min_samples: int = Field(
        DEFAULT_MIN_SAMPLES, ge=1,
        description="a feature's values in a window below which its metrics are reported but never breached",
    )
    output_columns: dict[str, str] = Field(
        default_factory=dict,
        description="model output name -> the training data's label column it is compared with when the model "
        "recorded no profile of its own predictions, as JSON; default: the same name",
    )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            psi=self.psi_threshold, jensen_shannon=self.jensen_shannon_threshold,
            wasserstein=self.wasserstein_threshold, ks_p_value=self.ks_p_value,
            chi_squared_p_value=self.chi_squared_p_value, min_samples=self.min_samples,
        )


class ProcessorSettings(ProvlineSettings):
    """Settings of ``provline processors`` (one Faust worker).

    ``topics.partitions`` must equal the partition count of the inference and lineage topics:
    Faust refuses a table whose changelog has a different count from its source topic.
    """

    service: ClassVar[str] = "processors"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    processors: WorkerSettings = Field(default_factory=WorkerSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
