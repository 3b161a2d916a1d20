"""The one way to configure provline: PROVLINE_<SECTION>__<NAME>, one definition per variable, typos refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from deploy.local.kafka.tls import CertificateAuthority
from provline.cli import settings_classes
from provline.config import (
    SECTIONS,
    ConfigError,
    KafkaSettings,
    describe,
    field_rows,
    load_settings,
    unknown_variable,
)
from provline.docs import with_table
from provline.producers.settings import JobSettings
from provline.sink.settings import ServeSettings

REPO = Path(__file__).resolve().parents[2]


def test_every_section_is_known_and_every_variable_has_one_definition() -> None:
    definitions: dict[str, type[BaseModel]] = {}
    for cls in settings_classes().values():
        for section, model in cls.sections().items():
            assert definitions.setdefault(section, model) is model, f"section {section} has two definitions"
    assert set(definitions) == SECTIONS


def test_every_setting_says_what_it_does() -> None:
    undocumented = [variable for cls in settings_classes().values() for variable, _, _, info in field_rows(cls)
                    if not info.description]
    assert undocumented == []


def test_units_follow_one_convention() -> None:
    for cls in settings_classes().values():
        for section, model in cls.sections().items():
            for name in model.model_fields:
                assert not re.search(r"_(ms|seconds|secs|kbytes|kb|mb)$", name), f"{section}.{name}: use _s or _bytes"


def test_a_misspelt_or_renamed_variable_is_an_error_naming_the_right_one(monkeypatch: pytest.MonkeyPatch) -> None:
    sections = JobSettings.sections()
    assert "did you mean PROVLINE_KAFKA__BOOTSTRAP" in unknown_variable("PROVLINE_KAFKA_BOOTSTRAP", sections)
    assert "did you mean PROVLINE_EMITTER__LINGER_S" in unknown_variable("PROVLINE_EMITTER__LINGER_MS", sections)
    assert "not a setting of section kafka" in unknown_variable("PROVLINE_KAFKA__BOOTSTRAP_SERVERS", sections)
    assert unknown_variable("PROVLINE_SINK__BATCH_MAX_EVENTS", sections) is None  # another service's section
    assert unknown_variable("PROVLINE_KAFKA__CLIENT__SOCKET_TIMEOUT_MS", sections) is None  # a free-form map
    assert unknown_variable("HOME", sections) is None
    monkeypatch.setenv("PROVLINE_EMITTER__SPOOL_DIRECTORY", "/tmp/x")
    with pytest.raises(ConfigError, match="PROVLINE_EMITTER__SPOOL_DIRECTORY is not a setting of section emitter; "
                                          "did you mean PROVLINE_EMITTER__SPOOL_DIR"):
        load_settings(JobSettings)


def test_nested_settings_of_a_model_are_checked_too() -> None:
    sections = ServeSettings.sections()
    assert unknown_variable("PROVLINE_API__TOKENS__ANN__TOKEN", sections) is None  # a map of grants
    assert unknown_variable("PROVLINE_STORE__URL", sections) is None


def test_kafka_security_settings_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs sasl_mechanism, sasl_username and sasl_password"):
        KafkaSettings(bootstrap="b:1", security_protocol="SASL_SSL", sasl_username="u")
    with pytest.raises(ValidationError, match="SASL credentials are set but security_protocol is PLAINTEXT"):
        KafkaSettings(bootstrap="b:1", sasl_username="u", sasl_password="p", sasl_mechanism="PLAIN")
    with pytest.raises(ValidationError, match="TLS files are set but security_protocol is PLAINTEXT"):
        KafkaSettings(bootstrap="b:1", ssl_ca_file=tmp_path / "ca.pem")
    with pytest.raises(ValidationError, match="does not exist"):
        KafkaSettings(bootstrap="b:1", security_protocol="SSL", ssl_ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="PROVLINE_KAFKA__SASL_USERNAME already set"):
        KafkaSettings(bootstrap="b:1", client={"sasl.username": "x"})


def test_kafka_settings_translate_for_librdkafka_and_aiokafka(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path).path
    kafka = KafkaSettings(bootstrap="a:9093, b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                          sasl_username="svc", sasl_password="s3cret", ssl_ca_file=ca,
                          client={"socket.keepalive.enable": "true"})
    config = kafka.librdkafka(**{"acks": "all"})
    assert config == {
        "bootstrap.servers": "a:9093,b:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc", "sasl.password": "s3cret", "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https", "acks": "all", "socket.keepalive.enable": "true",
    }
    context = kafka.ssl_context()
    assert context is not None and context.check_hostname
    assert KafkaSettings(bootstrap="a:1").ssl_context() is None
    assert "s3cret" not in repr(kafka)


def test_describe_masks_secrets_and_names_each_value_source() -> None:
    environ = {"PROVLINE_API__TOKENS": '{"ann": {"token": "' + "t" * 20 + '", "role": "admin"}}',
               "PROVLINE_STORE__URL": "chdb:///data", "PROVLINE_KAFKA__SASL_PASSWORD": "hunter2"}
    rows = {row.variable: row for row in describe(ServeSettings, environ)}
    assert (rows["PROVLINE_STORE__URL"].value, rows["PROVLINE_STORE__URL"].source) == ("chdb:///data", "environment")
    assert rows["PROVLINE_API__TOKENS"].value == "********"
    assert rows["PROVLINE_KAFKA__SASL_PASSWORD"].value == "********"
    assert (rows["PROVLINE_SINK__BATCH_MAX_EVENTS"].value, rows["PROVLINE_SINK__BATCH_MAX_EVENTS"].source) == (
        "20000", "default")
    assert all("t" * 20 not in row.value and "hunter2" not in row.value for row in rows.values())


def test_the_readme_settings_table_is_current() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert with_table(readme) == readme, "the README's settings table is stale: run `make docs`"
