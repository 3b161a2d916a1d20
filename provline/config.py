"""Configuration every provline service shares: the settings base class and the common sections.

Every setting is one environment variable, ``PROVLINE_<SECTION>__<NAME>``: the section says what
it configures (``kafka``, ``topics``, ``sidecar``, ``store``...), so a name means the same thing in
every service that reads it, and no two services can disagree about it. Durations are seconds
(names end in ``_s``), sizes are bytes (``_bytes``). Each deployable (a job, the sidecar, the
processors, ``provline serve``, the audit CLI) has one settings class that nests the sections it
reads; build it once at start-up and pass it down. ``provline config SERVICE`` prints every setting
of a service with its value and where the value came from.

A ``PROVLINE_`` variable that names no section, or names a setting a section does not have, is an
error when a service that reads that section starts (a misspelt variable never goes unnoticed);
variables of sections a service does not read are left to the services that do.
"""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

ENV_PREFIX = "PROVLINE_"
NESTED = "__"
# Every section any provline service reads; a variable outside them is misspelt or from an older provline.
SECTIONS = frozenset({
    "kafka", "topics", "signing", "emitter", "run", "capture", "sidecar", "ingest", "processors", "drift", "sink",
    "store", "api", "sql", "evidence", "client", "anchor", "feedback", "otel", "monitoring",
})
DEFAULT_TOPIC_PREFIX = "provline"
DEFAULT_TOPIC_PARTITIONS = 4
DEFAULT_SESSION_TIMEOUT_S = 45.0  # Kafka's own default for consumer groups


class Section(BaseModel):
    """One section of settings; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# librdkafka properties the typed fields set; the free-form ``client`` map may not set them too.
_TYPED_PROPERTIES = {
    "bootstrap.servers": "bootstrap", "security.protocol": "security_protocol", "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism", "sasl.username": "sasl_username", "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_ca_file", "ssl.certificate.location": "ssl_certificate_file",
    "ssl.key.location": "ssl_key_file", "ssl.key.password": "ssl_key_password",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname", "session.timeout.ms": "session_timeout_s",
}


class KafkaSettings(Section):
    """How every provline process reaches Kafka (section ``kafka``): one definition, translated once for
    librdkafka (:meth:`librdkafka`: jobs, sidecar, sink) and once for aiokafka (:meth:`ssl_context` and
    the SASL fields: the Faust processors)."""

    bootstrap: str | None = Field(None, description="comma-separated host:port list of the brokers")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: SaslMechanism | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = Field(None, description="the SASL user this service authenticates as")
    sasl_password: SecretStr | None = Field(None, description="that user's password")
    ssl_ca_file: Path | None = Field(None, description="PEM file of the CA(s) the brokers' certificates chain to")
    ssl_certificate_file: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_key_file: Path | None = Field(None, description="PEM private key of the client certificate")
    ssl_key_password: SecretStr | None = Field(None, description="password of ssl_key_file, if it is encrypted")
    ssl_check_hostname: bool = Field(True, description="check that a broker's certificate names its host")
    session_timeout_s: float = Field(
        DEFAULT_SESSION_TIMEOUT_S, ge=1, description="how long a consumer group waits for a vanished member",
    )
    client: dict[str, str] = Field(
        default_factory=dict,
        description="more librdkafka properties, as JSON, e.g. {\"socket.keepalive.enable\": \"true\"}",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password; "
                "set PROVLINE_KAFKA__SASL_MECHANISM, PROVLINE_KAFKA__SASL_USERNAME and PROVLINE_KAFKA__SASL_PASSWORD"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(
                f"SASL credentials are set but security_protocol is {self.security_protocol}; set "
                "PROVLINE_KAFKA__SECURITY_PROTOCOL to SASL_SSL (or SASL_PLAINTEXT), or remove the SASL settings"
            )
        tls_files = [self.ssl_ca_file, self.ssl_certificate_file, self.ssl_key_file]
        if not self.security_protocol.endswith("SSL") and any(tls_files):
            raise ValueError(
                f"TLS files are set but security_protocol is {self.security_protocol}; set "
                "PROVLINE_KAFKA__SECURITY_PROTOCOL to SSL or SASL_SSL, or remove the PROVLINE_KAFKA__SSL_* settings"
            )
        if (self.ssl_certificate_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_certificate_file and ssl_key_file go together; set both or neither")
        for path in (p for p in tls_files if p is not None):
            if not path.is_file():
                raise ValueError(f"TLS file {path} does not exist; check the PROVLINE_KAFKA__SSL_* settings")
        clashes = sorted(name for name in self.client if name in _TYPED_PROPERTIES)
        if clashes:
            fields = ", ".join(f"PROVLINE_KAFKA__{_TYPED_PROPERTIES[name].upper()}" for name in clashes)
            raise ValueError(
                f"PROVLINE_KAFKA__CLIENT sets {', '.join(clashes)}, which {fields} already set; use those instead"
            )
        return self

    def servers(self) -> list[str]:
        """The ``host:port`` entries of ``bootstrap``; ValueError naming the setting when there are none."""
        servers = [part.strip() for part in (self.bootstrap or "").split(",") if part.strip()]
        if not servers:
            raise ValueError("no Kafka broker configured; set PROVLINE_KAFKA__BOOTSTRAP=host:port[,host:port...]")
        return servers

    def librdkafka(self, **properties: Any) -> dict[str, Any]:
        """Properties for a confluent-kafka client: connection and security, then ``properties``, then ``client``."""
        config: dict[str, Any] = {"bootstrap.servers": ",".join(self.servers()),
                                  "security.protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value() if self.sasl_password else ""
        if self.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(self.ssl_ca_file)
        if self.ssl_certificate_file is not None and self.ssl_key_file is not None:
            config["ssl.certificate.location"] = str(self.ssl_certificate_file)
            config["ssl.key.location"] = str(self.ssl_key_file)
        if self.ssl_key_password is not None:
            config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        return {**config, **properties, **self.client}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for aiokafka (None without TLS): the same CA, client certificate and host check."""
        if not self.security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None)
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certificate_file is not None and self.ssl_key_file is not None:
            context.load_cert_chain(
                str(self.ssl_certificate_file), str(self.ssl_key_file),
                password=self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
            )
        return context


class TopicSettings(Section):
    """The topics provline reads and writes (section ``topics``)."""

    prefix: str = Field(DEFAULT_TOPIC_PREFIX, min_length=1, description="every topic is <prefix>.<name>.v1")
    partitions: int = Field(
        DEFAULT_TOPIC_PARTITIONS, ge=1,
        description="partitions of provline's topics when a service creates them; the inference and lineage "
        "topics must have exactly this many (the processors' tables are partitioned like them)",
    )
    replication_factor: int = Field(
        -1, ge=-1, description="replicas of each topic a service creates; -1: the cluster's default.replication.factor",
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="the topic config min.insync.replicas of each topic a service creates: replicas "
        "that must have a write before an acks=all producer is told it is stored; unset: the cluster's default",
    )
    retention_s: float | None = Field(
        None, ge=-1, description="retention of the inference, traces, drift and dead-letter topics a service "
        "creates; -1: forever; unset: the cluster's default",
    )
    lineage_retention_s: float = Field(
        -1, ge=-1, description="retention of the lineage topic; -1: forever (the processors rebuild what was "
        "deployed, trained and registered from it)",
    )
    create: bool = Field(
        True, description="services create missing topics at start; false: they only check them, for operators "
        "who manage topics themselves (`provline topics create`)",
    )
    metadata_refresh_s: float = Field(
        10.0, gt=0, description="how soon a consumer notices a topic created after it started",
    )

    @model_validator(mode="after")
    def _enough_replicas(self) -> Self:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor > 0:
            raise ValueError(
                f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor {self.replication_factor}: "
                "no write could ever be acknowledged; lower PROVLINE_TOPICS__MIN_INSYNC_REPLICAS or raise "
                "PROVLINE_TOPICS__REPLICATION_FACTOR"
            )
        return self


class SigningSettings(Section):
    """The key this process signs its events with (section ``signing``)."""

    key: SecretStr | None = Field(
        None, description="Ed25519 private key, PEM or base64 of its 32 bytes; unset: events are hashed, not signed",
    )


# ---------------------------------------------------------------- the settings base class


class AnchorSettings(Section):
    """Anchors: signed digests of every session's chain head, kept where the store cannot rewrite them
    (section ``anchor``). ``provline anchor`` publishes them to ``destination``; ``provline verify
    --anchor`` checks them, and ``provline serve`` reads them from there for each record's anchor status."""

    signing_key: SecretStr | None = Field(
        None, description="Ed25519 private key that signs anchors; only `provline anchor` uses it (keep it away from "
        "the store and its admins)",
    )
    public_keys: list[str] = Field(
        default_factory=list, description="Ed25519 public keys (PEM or base64) an anchor must be signed by, as JSON",
    )
    destination: str | None = Field(
        None, description="where `provline anchor` publishes, and `provline serve` reads anchors: a directory (a new "
        "file each time) or an http(s) URL",
    )


class ProvlineSettings(BaseSettings):
    """Base of every deployable's settings: ``PROVLINE_`` variables nested with ``__``, unknown ones refused.

    Subclasses declare one field per section they read; the field's name is the section's name.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, extra="forbid",
    )
    service: ClassVar[str] = ""  # how `provline config` names the deployable

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _RefuseUnknownVariables(settings_cls), env_settings

    @classmethod
    def sections(cls) -> dict[str, type[BaseModel]]:
        """Section name -> its model, in declaration order."""
        found = {}
        for name, info in cls.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                found[name] = info.annotation
        return found


class _RefuseUnknownVariables(PydanticBaseSettingsSource):
    """Contributes nothing; raises when a ``PROVLINE_`` variable is misspelt (see the module docstring)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        sections = self.settings_cls.sections()  # type: ignore[attr-defined]
        problems = [problem for name in sorted(os.environ) if (problem := unknown_variable(name, sections))]
        if problems:
            raise SettingsError("; ".join(problems))
        return {}


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def unknown_variable(name: str, sections: Mapping[str, type[BaseModel]]) -> str | None:
    """Why environment variable ``name`` is not a setting of these sections, or None when it is (or is not ours)."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX):
        return None
    section, _, rest = upper[len(ENV_PREFIX):].partition(NESTED)
    known = [variable_name(s, f) for s, model in sections.items() for f in _field_names(model)]
    if section.lower() not in SECTIONS or not rest:
        hint = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        return (f"{name} is not a provline setting; settings are named PROVLINE_<SECTION>__<NAME>"
                + (f"; did you mean {hint[0]}?" if hint else "; `provline config SERVICE` lists them"))
    model = sections.get(section.lower())
    if model is None:
        return None  # another service's section
    field, _, deeper = rest.partition(NESTED)
    info = model.model_fields.get(field.lower())
    if info is None:
        hint = difflib.get_close_matches(upper, [k for k in known if k.startswith(f"{ENV_PREFIX}{section}__")], n=1)
        return (f"{name} is not a setting of section {section.lower()}"
                + (f"; did you mean {hint[0]}?" if hint else f"; it has {', '.join(_field_names(model))}"))
    nested = info.annotation
    if deeper and isinstance(nested, type) and issubclass(nested, BaseModel):
        if deeper.partition(NESTED)[0].lower() not in nested.model_fields:
            return f"{name}: {field.lower()} has no setting {deeper.lower()}; it has {', '.join(_field_names(nested))}"
    return None


def variable_name(section: str, field: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}{NESTED}{field.upper()}"


class ConfigError(ValueError):
    """Settings that cannot work; the message names each environment variable at fault and the fix."""


SettingsT = TypeVar("SettingsT", bound=ProvlineSettings)


def load_settings(settings_cls: type[SettingsT], **values: Any) -> SettingsT:
    """``settings_cls`` from the environment (``values`` win over it); ConfigError naming the variables at fault."""
    try:
        return settings_cls(**values)
    except SettingsError as exc:
        raise ConfigError(f"{settings_cls.service or settings_cls.__name__} settings: {exc}") from exc
    except ValidationError as exc:
        problems = []
        sections = settings_cls.sections()
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            if len(location) == 1 and error["type"] == "missing" and location[0] in sections:
                required = [f for f, info in sections[location[0]].model_fields.items() if info.is_required()]
                problems += [f"{variable_name(location[0], f)}: Field required" for f in required]
                continue
            where = variable_name(location[0], "__".join(location[1:])) if len(location) > 1 else (
                f"{ENV_PREFIX}{location[0].upper()}" if location else "(settings)")
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" + (f" (got {error['input']!r})"
                                                          if error["type"] != "missing" and _short(error["input"])
                                                          else ""))
        raise ConfigError(f"{settings_cls.service or settings_cls.__name__} settings: " + "; ".join(problems)) from exc


def _short(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(str(value)) <= 80


# ---------------------------------------------------------------- describing settings (provline config)


@dataclass(frozen=True)
class SettingRow:
    variable: str
    value: str  # as text; secrets masked
    source: str  # "environment" or "default"
    description: str


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        return _text(value.model_dump())
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | frozenset | set):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


MASK = "********"


def is_secret(annotation: Any) -> bool:
    """Whether a field of this type holds a secret (a SecretStr, or a model or container holding one)."""
    if annotation is SecretStr:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(is_secret(info.annotation) for info in annotation.model_fields.values())
    return any(is_secret(argument) for argument in get_args(annotation))


def default_text(info: FieldInfo) -> str:
    """A field's default as documentation shows it."""
    if info.default_factory is not None:
        return _text(info.default_factory())  # type: ignore[call-arg]
    if info.is_required():
        return "(required)"
    return _text(info.default)


def describe(settings_cls: type[ProvlineSettings], environ: Mapping[str, str] | None = None) -> list[SettingRow]:
    """Every setting a deployable reads, with the value the environment gives it (secrets masked) or its
    default, and which of the two it is. Nothing is validated here: :func:`load_settings` does that."""
    environ = {name.upper(): value for name, value in (os.environ if environ is None else environ).items()}
    rows = []
    for variable, _section, _field, info in field_rows(settings_cls):
        nested = {name: value for name, value in environ.items() if name.startswith(variable + NESTED)}
        if variable in environ or nested:
            given = environ.get(variable) or ", ".join(f"{name[len(variable) + 2:].lower()}={value}"
                                                       for name, value in sorted(nested.items()))
            rows.append(SettingRow(variable, MASK if is_secret(info.annotation) else given, "environment",
                                   info.description or ""))
        else:
            rows.append(SettingRow(variable, default_text(info), "default", info.description or ""))
    return rows


def field_rows(settings_cls: type[ProvlineSettings]) -> Iterator[tuple[str, str, str, FieldInfo]]:
    """(variable, section, field, info) of every setting a deployable reads, in declaration order."""
    for section, model in settings_cls.sections().items():
        for field, info in model.model_fields.items():
            yield variable_name(section, field), section, field, info
