"""Configuration of the stream processors: one pydantic-settings object, env prefix ``PROVLINE_``.

Build it once (``ProcessorSettings()``) where the process starts and pass it down; nothing in
this package builds settings at import time.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC_PREFIX = "provline"
DEFAULT_APP_ID = "provline-processors"
DEFAULT_TOPIC_PARTITIONS = 4
DEFAULT_DATA_DIR = ".provline/processors"
DEFAULT_WEB_PORT = 6066
DEFAULT_LINEAGE_WAIT_SECONDS = 10.0


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

    def bootstrap_servers(self) -> list[str]:
        """``kafka_bootstrap`` split into its host:port entries."""
        servers = [part.strip() for part in self.kafka_bootstrap.split(",") if part.strip()]
        if not servers:
            raise ValueError(
                f"kafka_bootstrap {self.kafka_bootstrap!r} names no broker; "
                "set PROVLINE_KAFKA_BOOTSTRAP to host:port[,host:port...]"
            )
        return servers
