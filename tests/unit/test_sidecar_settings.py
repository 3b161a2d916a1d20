from __future__ import annotations

import pytest
from pydantic import ValidationError

from provline.sidecar.settings import DEFAULT_MAX_CAPTURE_BYTES, SidecarSettings


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_UPSTREAM", "http://model:8000/v2")
    monkeypatch.setenv("PROVLINE_SIDECAR_PORT", "8081")
    monkeypatch.setenv("PROVLINE_MODEL_VERSION", "3")
    monkeypatch.setenv("PROVLINE_KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("PROVLINE_TOPIC_PREFIX", "prod")
    settings = SidecarSettings()
    assert str(settings.upstream) == "http://model:8000/v2"
    assert settings.port == 8081 and settings.model_version == "3"
    assert settings.max_capture_bytes == DEFAULT_MAX_CAPTURE_BYTES and settings.endpoint is None
    assert settings.emitter.kafka_bootstrap == "broker:9092" and settings.emitter.topic_prefix == "prod"
    assert settings.emitter.resolved_transport() == "kafka"


def test_upstream_is_required() -> None:
    with pytest.raises(ValidationError, match="upstream"):
        SidecarSettings()


def test_misspelt_keyword_is_an_error() -> None:
    with pytest.raises(ValidationError, match="upstrem"):
        SidecarSettings(upstream="http://m", upstrem="http://m")


def test_upstream_with_a_query_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="base URL only"):
        SidecarSettings(upstream="http://m:8000/?x=1")


def test_proxy_and_admin_ports_must_differ() -> None:
    with pytest.raises(ValidationError, match="PROVLINE_SIDECAR_ADMIN_PORT"):
        SidecarSettings(upstream="http://m", port=9000, admin_port=9000)
