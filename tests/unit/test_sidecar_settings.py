from __future__ import annotations

import pytest
from pydantic import ValidationError

from provline.config import ConfigError, load_settings
from provline.producers.settings import DEFAULT_LINGER_S
from provline.sidecar.proxy import SIDECAR_LINGER_S, worker_settings
from provline.sidecar.settings import DEFAULT_MAX_CAPTURE_BYTES, SidecarSettings


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_SIDECAR__UPSTREAM", "http://model:8000/v2")
    monkeypatch.setenv("PROVLINE_SIDECAR__PORT", "8081")
    monkeypatch.setenv("PROVLINE_SIDECAR__MODEL_VERSION", "3")
    monkeypatch.setenv("PROVLINE_KAFKA__BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("PROVLINE_TOPICS__PREFIX", "prod")
    settings = load_settings(SidecarSettings)
    assert str(settings.sidecar.upstream) == "http://model:8000/v2"
    assert settings.sidecar.port == 8081 and settings.sidecar.model_version == "3"
    assert settings.capture.max_capture_bytes == DEFAULT_MAX_CAPTURE_BYTES and settings.sidecar.endpoint is None
    assert settings.kafka.bootstrap == "broker:9092" and settings.topics.prefix == "prod"
    assert settings.transport() == "kafka"


def test_command_line_values_merge_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_SIDECAR__UPSTREAM", "http://model:8000")
    monkeypatch.setenv("PROVLINE_SIDECAR__WORKERS", "3")
    settings = load_settings(SidecarSettings, sidecar={"port": 1234})
    assert (settings.sidecar.port, settings.sidecar.workers) == (1234, 3)


def test_upstream_is_required_and_named_by_its_variable() -> None:
    with pytest.raises(ConfigError, match="PROVLINE_SIDECAR__UPSTREAM: Field required"):
        load_settings(SidecarSettings)


def test_misspelt_keyword_is_an_error() -> None:
    with pytest.raises(ValidationError, match="upstrem"):
        SidecarSettings(sidecar={"upstream": "http://m", "upstrem": "http://m"})


def test_misspelt_variable_is_an_error_with_the_right_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_SIDECAR__UPSTREAM", "http://m")
    monkeypatch.setenv("PROVLINE_SIDECAR__ADMINPORT", "9999")
    with pytest.raises(ConfigError, match="did you mean PROVLINE_SIDECAR__ADMIN_PORT"):
        load_settings(SidecarSettings)


def test_upstream_with_a_query_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="base URL only"):
        SidecarSettings(sidecar={"upstream": "http://m:8000/?x=1"})


def test_proxy_and_admin_ports_must_differ() -> None:
    with pytest.raises(ValidationError, match="PROVLINE_SIDECAR__ADMIN_PORT"):
        SidecarSettings(sidecar={"upstream": "http://m", "port": 9000, "admin_port": 9000})


def test_the_sidecar_emitter_batches_longer_than_a_job_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_SIDECAR__UPSTREAM", "http://m")
    monkeypatch.setenv("PROVLINE_EMITTER__SPOOL_DIR", "/tmp/spool")
    worker = worker_settings(load_settings(SidecarSettings), 1).emitter
    assert worker.linger_s == SIDECAR_LINGER_S > DEFAULT_LINGER_S
    assert (worker.on_full, str(worker.spool_dir)) == ("drop", "/tmp/spool/worker-1")
    monkeypatch.setenv("PROVLINE_EMITTER__LINGER_S", str(DEFAULT_LINGER_S))  # the job's default, set on purpose
    assert worker_settings(load_settings(SidecarSettings), 0).emitter.linger_s == DEFAULT_LINGER_S
    given = SidecarSettings(sidecar={"upstream": "http://m"}, emitter={"linger_s": 0.2})
    assert worker_settings(given, 0).emitter.linger_s == 0.2
