"""Configuration of ``provline serve`` (sink writer + audit API)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLICKHOUSE_URL = "chdb://.provline/clickhouse"
DEFAULT_BATCH_MAX_EVENTS = 5000
DEFAULT_BATCH_MAX_SECONDS = 0.5
DEFAULT_API_PORT = 8700


class SinkSettings(BaseSettings):
    """Settings from ``PROVLINE_*`` environment variables (nested with ``__``); unknown keys are errors.

    ``clickhouse_url`` is ``chdb://<path>[?database=<db>]`` for the embedded chDB store on disk
    (relative paths are relative to the working directory) or
    ``http(s)://user:password@host:port/<database>`` for a ClickHouse server.
    """

    model_config = SettingsConfigDict(env_prefix="PROVLINE_", env_nested_delimiter="__", extra="forbid")

    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    topic_prefix: str = "provline"
    clickhouse_url: str = DEFAULT_CLICKHOUSE_URL
    consumer_group: str = "provline-sink"
    batch_max_events: int = Field(default=DEFAULT_BATCH_MAX_EVENTS, ge=1)
    batch_max_seconds: float = Field(default=DEFAULT_BATCH_MAX_SECONDS, gt=0)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535)
