"""Settings of processes that publish lineage events: jobs (:class:`JobSettings`) and, nested in its own
settings, the sidecar. Sections ``kafka``, ``topics``, ``signing`` (shared, :mod:`provline.config`),
``emitter`` and, for jobs, ``run``.

    PROVLINE_KAFKA__BOOTSTRAP=broker:9092      without it, provline records nothing (one warning)
    PROVLINE_EMITTER__SPOOL_DIR=/var/spool/x   events survive a crash or an outage here
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from provline.config import KafkaSettings, ProvlineSettings, Section, SigningSettings, TopicSettings
from provline.producers.capture import DEFAULT_ENV_ALLOW_LIST

DEFAULT_QUEUE_MAX_MESSAGES = 100_000
DEFAULT_MAX_IN_FLIGHT = 100_000
DEFAULT_LINGER_S = 0.005
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
DEFAULT_CLOSE_TIMEOUT_S = 10.0
DEFAULT_SEAL_INTERVAL_S = 60.0

Transport = Literal["kafka", "file", "memory", "console", "none"]


class EmitterSettings(Section):
    """How events are queued, spooled and delivered (section ``emitter``).

    ``transport``: ``kafka`` publishes to the brokers of section ``kafka``; ``file`` appends each
    message as a JSON line to ``file``; ``memory`` keeps them in the process (tests); ``console``
    prints one line per event; ``none`` records nothing. Unset: ``kafka`` when a bootstrap server is
    configured, otherwise ``none`` with one warning, so a job without a broker still runs.
    """

    transport: Transport | None = Field(None, description="kafka, file, memory, console or none; default: kafka "
                                                          "when PROVLINE_KAFKA__BOOTSTRAP is set, else none")
    file: Path | None = Field(None, description="where the file transport appends its JSON lines")
    producer_name: str | None = Field(None, description="the job or service name events carry; default: its own")
    queue_max_messages: int = Field(DEFAULT_QUEUE_MAX_MESSAGES, gt=0, description="in-memory queue bound")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, gt=0, description="messages sent and not yet acknowledged")
    linger_s: float = Field(DEFAULT_LINGER_S, ge=0, description="how long a message waits to fill a batch")
    spool_dir: Path | None = Field(
        None, description="durable spool; what is left undelivered is sent by the next process using it. "
        "Default: a private temporary directory (no replay across processes)",
    )
    spool_fsync: Literal["always", "interval", "never"] = Field("interval", description="always, interval or never")
    spool_max_bytes: int = Field(DEFAULT_SPOOL_MAX_BYTES, gt=0, description="the spool's bound on disk")
    on_full: Literal["block", "drop"] = Field(
        "block", description="when the queue is full (the spool cannot take events as fast as they come, or "
        "has reached spool_max_bytes): wait for room, or drop at once, count and record a delivery gap",
    )
    close_timeout_s: float = Field(
        DEFAULT_CLOSE_TIMEOUT_S, ge=0, description="how long closing waits for queued events to be delivered",
    )
    seal_interval_s: float = Field(
        DEFAULT_SEAL_INTERVAL_S, ge=0, description="how often, while events flow, the session seals its hash "
        "chain (a signed SessionSeal: count and head); 0: only the final seal at close",
    )

    @model_validator(mode="after")
    def _file_transport_has_a_file(self) -> EmitterSettings:
        if self.transport == "file" and self.file is None:
            raise ValueError("transport 'file' needs a file; set PROVLINE_EMITTER__FILE=/path/to/events.jsonl")
        return self


class RunSettings(Section):
    """What a recorded run captures about its environment (section ``run``)."""

    capture_env: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENV_ALLOW_LIST),
        description="environment variables a run records, as a JSON list; names that look like secrets never are",
    )
    owner: str | None = Field(None, description="who owns the job's runs (`provline runs --owner`); default: USER")


class PublishingSettings(ProvlineSettings):
    """Sections of any process that publishes events."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    emitter: EmitterSettings = Field(default_factory=EmitterSettings)

    def transport(self) -> Transport:
        """The transport in use: the configured one, else kafka when a broker is configured, else none."""
        if self.emitter.transport is not None:
            return self.emitter.transport
        return "kafka" if self.kafka.bootstrap else "none"


class JobSettings(PublishingSettings):
    """Settings of an ML job that records its lineage (``Lineage()``, ``provline run``, ``provline promote``)."""

    service: ClassVar[str] = "job"

    run: RunSettings = Field(default_factory=RunSettings)
