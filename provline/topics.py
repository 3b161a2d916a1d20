"""The topics every service needs: made sure of at start, never silently different from the settings.

Each service calls :func:`ensure_topics` for the topics it reads or writes before its clients start:
missing topics are created (``PROVLINE_TOPICS__CREATE``) with the partitions, replication factor,
``min.insync.replicas`` and retention of the settings; an existing topic is compared with them. A
partition count other than the settings' on a topic the processors co-partition is an error (their
tables would read the wrong partitions); other differences are logged as warnings and kept (an operator chose them).
:func:`keep_ensuring` does the same in a background thread until it succeeds, for the sidecar,
which must serve before Kafka answers. ``provline topics`` shows and creates them by hand.

:func:`wanted_topics` and :func:`differences` are pure; the rest talks to the brokers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from pydantic import Field

from provline.config import ConfigError, KafkaSettings, ProvlineSettings, TopicSettings
from provline.schemas.events import Topics

log = logging.getLogger("provline.topics")

DEFAULT_TIMEOUT_S = 10.0
RETRY_INTERVAL_S = 5.0
BROKER_DEFAULT = -1  # replication factor: the cluster's default.replication.factor (KIP-464)


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the settings want it; ``replication_factor`` -1 and a missing config key: the broker's default."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    copartitioned: bool = False  # the processors' tables follow this topic's partitions


@dataclass(frozen=True)
class TopicState:
    """A topic as the brokers have it (``partitions`` 0: it does not exist)."""

    name: str
    partitions: int = 0
    replication_factor: int = 0
    config: dict[str, str] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.partitions > 0


def wanted_topics(settings: TopicSettings, names: Iterable[str] | None = None) -> list[TopicSpec]:
    """The specs of provline's topics under ``settings.prefix`` (all of them, or those in ``names``)."""
    topics = Topics(settings.prefix)
    durability = {} if settings.min_insync_replicas is None else {
        "min.insync.replicas": str(settings.min_insync_replicas)}
    retention = {**durability, **({} if settings.retention_s is None else {
        "retention.ms": _retention_ms(settings.retention_s)})}
    specs = [
        TopicSpec(topics.lineage, settings.partitions, settings.replication_factor,
                  {**durability, "retention.ms": _retention_ms(settings.lineage_retention_s)}, copartitioned=True),
        TopicSpec(topics.inference, settings.partitions, settings.replication_factor, retention, copartitioned=True),
        TopicSpec(topics.traces, settings.partitions, settings.replication_factor, retention),
        TopicSpec(topics.drift, settings.partitions, settings.replication_factor, retention),
        TopicSpec(topics.dlq, settings.partitions, settings.replication_factor, retention),
    ]
    if names is None:
        return specs
    chosen = set(names)
    return [spec for spec in specs if spec.name in chosen]


def _retention_ms(seconds: float) -> str:
    return "-1" if seconds < 0 else str(int(seconds * 1000))


def differences(spec: TopicSpec, state: TopicState) -> list[str]:
    """How an existing topic differs from its spec, one sentence each (empty: as wanted)."""
    found = []
    if state.partitions != spec.partitions:
        found.append(f"{state.partitions} partitions, the settings say {spec.partitions} (PROVLINE_TOPICS__PARTITIONS)")
    if spec.replication_factor != BROKER_DEFAULT and state.replication_factor != spec.replication_factor:
        found.append(f"replication factor {state.replication_factor}, the settings say {spec.replication_factor} "
                     "(PROVLINE_TOPICS__REPLICATION_FACTOR)")
    for key, value in spec.config.items():
        if key in state.config and state.config[key] != value:
            if key == "min.insync.replicas":
                setting = "MIN_INSYNC_REPLICAS"
            elif spec.copartitioned and spec.name.endswith(".lineage.v1"):
                setting = "LINEAGE_RETENTION_S"
            else:
                setting = "RETENTION_S"
            found.append(f"{key}={state.config[key]}, the settings say {value} (PROVLINE_TOPICS__{setting})")
    return found


@dataclass(frozen=True)
class TopicReport:
    """What :func:`ensure_topics` found or did for one topic."""

    name: str
    status: str  # "created", "as wanted", "different" or "missing" (not created: PROVLINE_TOPICS__CREATE=false)
    details: list[str] = field(default_factory=list)


def _admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.librdkafka(log_level=0))


def describe(admin: AdminClient, names: list[str], *, timeout_s: float) -> dict[str, TopicState]:
    """The brokers' view of ``names`` (a missing topic: ``TopicState(name)``); KafkaException when no broker answers."""
    metadata = admin.list_topics(timeout=timeout_s)
    states = {name: TopicState(name) for name in names}
    present = [name for name in names if name in metadata.topics and not metadata.topics[name].error]
    if not present:
        return states
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in present]
    configs = {resource.name: future for resource, future in admin.describe_configs(resources).items()}
    for name in present:
        partitions = metadata.topics[name].partitions
        replicas = len(next(iter(partitions.values())).replicas) if partitions else 0
        try:
            entries = configs[name].result(timeout_s)
        except KafkaException as exc:  # e.g. not authorised to describe configs: compare what can be compared
            log.warning("could not read the configuration of topic %s: %s", name, exc)
            entries = {}
        states[name] = TopicState(name, len(partitions), replicas,
                                  {key: str(entry.value) for key, entry in entries.items()})
    return states


def ensure_topics(kafka: KafkaSettings, settings: TopicSettings, *, service: str, names: Iterable[str] | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> list[TopicReport]:
    """Create the missing topics (unless ``settings.create`` is false) and compare the others with the settings.

    Raises ConfigError when a co-partitioned topic has another partition count than the settings,
    and KafkaException when no broker answers within ``timeout_s``. Differences that do not break
    anything are logged as warnings and reported.
    """
    specs = wanted_topics(settings, names)
    admin = _admin(kafka)
    states = describe(admin, [spec.name for spec in specs], timeout_s=timeout_s)
    missing = [spec for spec in specs if not states[spec.name].exists]
    created = _create(admin, missing, timeout_s=timeout_s) if settings.create else set()
    if created:
        states.update(_described_once_visible(admin, sorted(created), timeout_s=timeout_s))
    reports = []
    for spec in specs:
        state = states[spec.name]
        if not state.exists:
            reports.append(TopicReport(spec.name, "missing", ["PROVLINE_TOPICS__CREATE is false; create it with "
                                                              "`provline topics create` or your own tooling"]))
            log.warning("%s: topic %s does not exist; waiting for it (PROVLINE_TOPICS__CREATE is false)",
                        service, spec.name)
            continue
        found = differences(spec, state)
        if found and spec.copartitioned and state.partitions != spec.partitions:
            raise ConfigError(
                f"{service}: topic {spec.name} has {state.partitions} partitions, the settings say {spec.partitions}; "
                f"set PROVLINE_TOPICS__PARTITIONS={state.partitions} for every provline service (the processors' "
                "tables are partitioned like this topic)"
            )
        for detail in found:
            log.warning("%s: topic %s has %s; keeping the topic as it is", service, spec.name, detail)
        status = "created" if spec.name in created else ("different" if found else "as wanted")
        reports.append(TopicReport(spec.name, status, found))
    return reports


def _described_once_visible(admin: AdminClient, names: list[str], *, timeout_s: float) -> dict[str, TopicState]:
    """:func:`describe` of topics just created, once the brokers' metadata shows them (it lags the creation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = describe(admin, names, timeout_s=timeout_s)
        if all(state.exists for state in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def _create(admin: AdminClient, specs: list[TopicSpec], *, timeout_s: float) -> set[str]:
    if not specs:
        return set()
    new = [NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                    config=spec.config) for spec in specs]
    created = set()
    for name, future in admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            created.add(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":  # another service was first
                continue
            raise ConfigError(f"could not create topic {name}: {exc.args[0].str() if exc.args else exc}; check that "
                              "this service's Kafka user may create topics, or create them with `provline topics "
                              "create` and set PROVLINE_TOPICS__CREATE=false") from exc
    return created


def create_missing(kafka: KafkaSettings, specs: list[TopicSpec], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> set[str]:
    """Create those of ``specs`` that do not exist (a service's own topics beside provline's), once the
    brokers show them; returns the names created. KafkaException when no broker answers."""
    admin = _admin(kafka)
    states = describe(admin, [spec.name for spec in specs], timeout_s=timeout_s)
    created = _create(admin, [spec for spec in specs if not states[spec.name].exists], timeout_s=timeout_s)
    if created:
        _described_once_visible(admin, sorted(created), timeout_s=timeout_s)
    return created


def keep_ensuring(kafka: KafkaSettings, settings: TopicSettings, *, service: str, names: Iterable[str],
                  interval_s: float = RETRY_INTERVAL_S) -> threading.Thread:
    """:func:`ensure_topics` in a daemon thread, retried every ``interval_s`` until the brokers answer.

    For services that must not wait on Kafka (the sidecar): problems are logged, never raised.
    """
    wanted = list(names)

    def attempt() -> None:
        while True:
            try:
                ensure_topics(kafka, settings, service=service, names=wanted)
                return
            except KafkaException as exc:
                log.info("%s: topics not checked yet (%s); retrying in %.0f s", service, exc, interval_s)
            except ConfigError as exc:
                log.error("%s", exc)
                return
            threading.Event().wait(interval_s)

    thread = threading.Thread(target=attempt, name=f"{service}-topics", daemon=True)
    thread.start()
    return thread


def ensure_at_start(kafka: KafkaSettings, settings: TopicSettings, *, service: str,
                    names: Iterable[str] | None = None) -> None:
    """:func:`ensure_topics` for a service that needs Kafka: ConfigError stops it; brokers that do not
    answer yet are waited for in the background (:func:`keep_ensuring`) while the service starts."""
    wanted = [spec.name for spec in wanted_topics(settings, names)]
    try:
        ensure_topics(kafka, settings, service=service, names=wanted)
    except KafkaException as exc:
        log.warning("%s: could not check the topics yet (%s); retrying in the background", service, exc)
        keep_ensuring(kafka, settings, service=service, names=wanted)


class TopicAdminSettings(ProvlineSettings):
    """Settings of ``provline topics``: how to reach Kafka and which topics to manage."""

    service: ClassVar[str] = "topics"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)


def describe_all(kafka: KafkaSettings, settings: TopicSettings, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> list[tuple[TopicSpec, TopicState]]:
    """Every provline topic beside what the brokers have; KafkaException when no broker answers."""
    specs = wanted_topics(settings)
    states = describe(_admin(kafka), [spec.name for spec in specs], timeout_s=timeout_s)
    return [(spec, states[spec.name]) for spec in specs]
