"""One import of an MLflow tracking server into provline: read (:mod:`.client`), map (:mod:`.mapping`), emit.

    state = ImportState.load(path, key=ImportState.key_of(uri, "kafka:broker:9092/provline"))
    if state.empty:
        state.recover(sent_before(settings.kafka, topics.lineage, "provline-mlflow-import"))
    with MlflowReader(uri) as reader:
        report = MlflowImport(reader, emitter, state, experiments=["churn"]).run()
    if emitter.close():
        state.commit(report); state.save()

Every event has a stable id (:mod:`.mapping`), and what an earlier import delivered is not sent
again: a copy sent by a new producer session would replace the first in the store, and ``provline
verify`` would then find the first session truncated. The state file records which events were
delivered (they are skipped, and so are the artifact downloads of model versions already sent) and
which versions each alias pointed at (MLflow keeps no alias history; that is how a moved alias
becomes a PROMOTE naming the version it left). Without state for a destination,
:func:`sent_before` reads the same back from the lineage topic. The state is only written after
the emitter delivered everything, so a failed import is repeated whole next time.

Blocks on the tracking server; not thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provline.config import KafkaSettings
from provline.producers.emitter import Emitter
from provline.producers.mlflow_bridge import mapping
from provline.producers.mlflow_bridge.client import ArtifactsUnavailable, MlflowReader
from provline.producers.models import describe_artifact
from provline.schemas.errors import SchemaError
from provline.schemas.events import model_key
from provline.schemas.frames import events_in
from provline.schemas.serde import default_catalog

log = logging.getLogger("provline.mlflow")

STATE_VERSION = 1
TOPIC_READ_TIMEOUT_S = 120.0
REQUIREMENTS_FILE = "requirements.txt"
PYTHON_ENV_FILE = "python_env.yaml"
READY = "READY"


@dataclass
class ImportState:
    """What earlier imports from one tracking server to one set of topics delivered (see the module).

    ``sent``: event id -> kind; ``aliases``: model -> alias -> ``{"history", "event_time"}`` (the versions it
    pointed at, and when the last move was first seen);
    ``environments``: run id -> the environment read from its model's artifacts."""

    path: Path | None
    key: str
    sent: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    _others: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def key_of(tracking_uri: str, destination: str) -> str:
        """One state per tracking server and destination (broker and topic prefix): importing the same
        server into another cluster skips nothing."""
        return f"{tracking_uri.rstrip('/')} -> {destination}"

    @classmethod
    def load(cls, path: Path | None, *, key: str) -> ImportState:
        """The state at ``path`` for ``key`` (empty when the file or the key is not there); ``path``
        None keeps no state. ValueError naming the file when it is not a state file."""
        if path is None or not path.exists():
            return cls(path, key)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
                raise ValueError(f"version {document.get('version') if isinstance(document, dict) else None!r}")
            imports = dict(document.get("imports") or {})
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a provline mlflow import state file ({exc}); remove it or pass "
                             "another --state (the next import then sends everything again, with the same ids)"
                             ) from exc
        mine = imports.pop(key, None) or {}
        return cls(path, key, sent=dict(mine.get("sent") or {}), aliases=dict(mine.get("aliases") or {}),
                   environments=dict(mine.get("environments") or {}), _others=imports)

    def recover(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Take what earlier imports sent from their events (read back from the lineage topic)."""
        sent, aliases = mapping.known_from_events(events)
        self.sent.update(sent)
        for model, known in aliases.items():
            self.aliases.setdefault(model, {}).update(known)

    @property
    def empty(self) -> bool:
        return not self.sent and not self.aliases

    def save(self) -> None:
        """Write the state atomically (a temporary file renamed over the old one)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"version": STATE_VERSION, "imports": {**self._others, self.key: {
            "sent": self.sent, "aliases": self.aliases, "environments": self.environments}}}
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=1, sort_keys=True)
        os.replace(temporary, self.path)

    def commit(self, report: ImportReport) -> None:
        """Remember what ``report``'s import sent, once the emitter delivered it."""
        self.sent.update(report.sent_ids)
        for model, aliases in report.aliases.items():
            self.aliases.setdefault(model, {}).update(aliases)
        self.environments.update(report.environments)


def sent_before(kafka: KafkaSettings, topic: str, producer_name: str, *,
                timeout_s: float = TOPIC_READ_TIMEOUT_S) -> list[tuple[str, dict[str, Any]]]:
    """The events ``producer_name`` sent to ``topic`` that the brokers still hold, read from the start to
    the end each partition had when asked. Blocks; MlflowError when the topic cannot be read in time.

    Sending an event again from a new producer session would make the store's copy belong to that
    session, and ``provline verify`` would find the first session truncated: so an import with no
    state file learns from the topic what was already sent."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from provline.producers.mlflow_bridge.client import MlflowError

    catalog = default_catalog()
    consumer = Consumer(kafka.librdkafka(**{
        "group.id": f"provline-mlflow-import-{uuid.uuid4().hex}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "enable.partition.eof": False}))
    found: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return found  # no lineage topic yet: nothing was sent
        ends: dict[int, int] = {}
        starts = []
        for partition in described.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        consumer.assign(starts)
        while ends:
            if time.monotonic() > deadline:
                raise MlflowError(f"could not read {topic} to its end within {timeout_s:.0f} s to learn what earlier "
                                  "imports sent; import with the --state file of the last import")
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None and offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                try:
                    for raw in events_in(catalog, message.value()):
                        event = catalog.decode(raw)
                        if (event.value.get("producer") or {}).get("name") == producer_name:
                            found.append((event.record, event.value))
                except SchemaError:
                    continue  # not ours to judge: the sink sends it to the dead-letter topic
    except KafkaException as exc:
        raise MlflowError(f"could not read {topic} to learn what earlier imports sent: {exc}; check "
                          "PROVLINE_KAFKA__BOOTSTRAP, or import with the --state file of the last import") from exc
    finally:
        consumer.close()
    return found


@dataclass
class ImportReport:
    """What one import read, sent and skipped, per event kind, and what it could not do."""

    sent: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    read: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    sent_ids: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: list[AliasMove] = field(default_factory=list)


@dataclass(frozen=True)
class AliasMove:
    """A move of a held alias (``MlflowImport(hold_aliases=...)``) that was not emitted: its Deployment
    ``fields``, the alias's ``history`` with the move, when it was first seen, and the model's version
    creation times (what :func:`mapping.alias_rollback` needs)."""

    model_name: str
    alias: str
    fields: dict[str, Any]
    history: list[str]
    moved_at: datetime
    version_times: dict[str, int]


Progress = Callable[[str], None]


def _millis(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


class MlflowImport:
    """Reads runs, dataset inputs, registered model versions and aliases, and emits their events.

    ``experiments``: names (None: every experiment; model versions then only of runs in them);
    ``since``: only runs started and versions created at or after it (aliases are always read);
    ``progress`` is told what is being read, for a progress display; a new move of an alias in
    ``hold_aliases`` is not emitted but listed in the report's ``held``, for the caller to
    :meth:`release` (``provline mlflow follow``'s promotion guard decides first)."""

    def __init__(
        self, reader: MlflowReader, emitter: Emitter, state: ImportState, *, experiments: list[str] | None = None,
        since: datetime | None = None, progress: Progress | None = None, hold_aliases: set[str] | None = None,
    ) -> None:
        self.reader, self.emitter, self.state = reader, emitter, state
        self.experiment_names = list(experiments or [])
        self.since_millis = _millis(since)
        self.progress = progress or (lambda _: None)
        self.hold_aliases = set(hold_aliases or ())
        self.report = ImportReport()
        self._runs: dict[str, dict[str, Any] | None] = {}
        self._models: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, list[dict[str, Any]]] = {}

    def emit(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> bool:
        """Emit one more event in this import (skipped when already sent); True when sent."""
        return self._emit(kind, fields, event_time=event_time)

    def release(self, move: AliasMove, fields: dict[str, Any] | None = None) -> None:
        """Emit a held move's Deployment (``fields`` instead of the move's, with the same id) and remember it."""
        self._emit("Deployment", fields or move.fields, event_time=move.moved_at)
        self.remember_alias(move.model_name, move.alias, move.history, move.moved_at)

    def remember_alias(self, model_name: str, alias: str, history: list[str], moved_at: datetime) -> None:
        """Record where an alias pointed (its history), as the import does for every move it emits."""
        self.report.aliases.setdefault(model_name, {})[alias] = {"history": history,
                                                                 "event_time": moved_at.isoformat()}

    def _emit(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> bool:
        """Emit unless an earlier import delivered this event id (or this one sent it); True when sent."""
        event_id = str(fields["event_id"])
        if event_id in self.state.sent or event_id in self.report.sent_ids:
            self.report.skipped[kind] += 1
            return False
        self.emitter.emit(kind, fields, event_time=event_time)
        self.report.sent[kind] += 1
        self.report.sent_ids[event_id] = kind
        return True

    def run(self) -> ImportReport:
        """Import once; blocks on the tracking server. MlflowError when it cannot be read."""
        self.progress("experiments")
        experiments = self.reader.experiments(self.experiment_names or None)
        experiment_ids = [str(e["experiment_id"]) for e in experiments]
        self.report.read["experiments"] = len(experiments)
        self.progress("runs")
        for run in self.reader.runs(experiment_ids, since_millis=self.since_millis):
            self._runs[str(run["info"]["run_id"])] = run
            self.report.read["runs"] += 1
        versions = self._model_versions(set(experiment_ids))
        outputs: dict[str, list[str]] = {}
        for version, _ in versions:
            if version.get("run_id"):
                outputs.setdefault(str(version["run_id"]), []).append(model_key(version["name"], version["version"]))
        self.progress("runs and datasets")
        for run_id, found in self._runs.items():
            if found is not None and str(found["info"].get("experiment_id")) in experiment_ids:
                self._import_run(found, outputs.get(run_id, []))
        for version, described in versions:
            self._import_version(version, described)
        self._import_aliases({str(v["name"]) for v, _ in versions})
        return self.report

    def _run(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._runs:
            self._runs[run_id] = self.reader.run(run_id)
        return self._runs[run_id]

    def _model_versions(self, experiment_ids: set[str]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """The READY versions to import, each with the description of its artifacts (None when already
        sent, or when they could not be read: a problem is reported and the version imported without)."""
        self.progress("registered models")
        chosen = []
        for model in self.reader.registered_models():
            name = str(model["name"])
            self._models[name] = model
            self._versions[name] = list(self.reader.model_versions(name))
            for version in self._versions[name]:
                self.report.read["model versions"] += 1
                if version.get("status", READY) != READY:
                    continue
                if self.since_millis is not None and int(version.get("creation_timestamp") or 0) < self.since_millis:
                    continue
                source = self._run(str(version["run_id"])) if version.get("run_id") else None
                if self.experiment_names and (source is None or str(source["info"].get("experiment_id"))
                                              not in experiment_ids):
                    continue
                chosen.append(version)
        described: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for version in chosen:
            _, fields = mapping.model_version_event(version, datasets=[])
            if fields["event_id"] in self.state.sent:
                described.append((version, None))
                continue
            self.progress(f"artifacts of {model_key(version['name'], version['version'])}")
            described.append((version, self._describe(version)))
        return described

    def _describe(self, version: dict[str, Any]) -> dict[str, Any] | None:
        """Download a version's artifacts, describe them (provline's digest), and keep its run's environment."""
        name, number = str(version["name"]), str(version["version"])
        with tempfile.TemporaryDirectory(prefix="provline-mlflow-") as folder:
            root = Path(folder) / "model"
            try:
                uri = self.reader.download_uri(name, number)
                if not self.reader.download_artifacts(uri, root):
                    raise ArtifactsUnavailable(f"{uri} holds no files")
            except ArtifactsUnavailable as exc:
                self.report.problems.append(f"{model_key(name, number)}: artifacts not hashed: {exc}")
                return None
            described = describe_artifact(root)
            requirements = root / REQUIREMENTS_FILE
            python_env = root / PYTHON_ENV_FILE
            if version.get("run_id") and (requirements.is_file() or python_env.is_file()):
                self.report.environments[str(version["run_id"])] = {
                    "requirements": requirements.read_text(errors="replace") if requirements.is_file() else None,
                    "python": mapping.python_version(python_env.read_text(errors="replace"))
                    if python_env.is_file() else None,
                }
        described["artifact_uri"] = uri
        return described

    def _environment(self, run_id: str) -> dict[str, Any] | None:
        files = self.report.environments.get(run_id) or self.state.environments.get(run_id)
        return mapping.environment(files.get("requirements"), files.get("python")) if files else None

    def _datasets(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        return list((run.get("inputs") or {}).get("dataset_inputs") or [])

    def _import_run(self, run: dict[str, Any], outputs: list[str]) -> None:
        run_id = str(run["info"]["run_id"])
        for dataset_input in self._datasets(run):
            self.report.read["dataset inputs"] += 1
            self._emit(*mapping.dataset_event(run_id, dataset_input))
        kind, fields = mapping.run_event(run, env=self._environment(run_id), outputs=outputs)
        self._emit(kind, fields)

    def _import_version(self, version: dict[str, Any], described: dict[str, Any] | None) -> None:
        run = self._run(str(version["run_id"])) if version.get("run_id") else None
        datasets = [mapping.dataset_digest(d["dataset"]) for d in self._datasets(run)] if run else []
        kind, fields = mapping.model_version_event(version, datasets=datasets)
        if described is not None:
            fields = mapping.with_artifact(fields, described)
        elif fields["event_id"] not in self.state.sent:
            self.report.problems.append(f"{model_key(version['name'], version['version'])}: sent without "
                                        "an artifact digest")
        self._emit(kind, fields)
        model_id = mapping.logged_model_id(version)
        logged = self.reader.logged_model(model_id) if model_id else None
        if logged is not None:
            for evaluation in mapping.logged_model_evaluations(str(version["name"]), str(version["version"]), logged):
                self._emit(*evaluation)
        for decision in mapping.tag_decisions(version):
            self._emit(*decision)
        stage = mapping.stage_deployment(version)
        if stage is not None:
            self._emit(*stage)

    def _import_aliases(self, names: set[str]) -> None:
        now = datetime.now(UTC)
        for name in sorted(names):
            model = self._models[name]
            aliases = mapping.registered_aliases(model)
            if not aliases:
                continue
            self.progress(f"aliases of {name}")
            times = {str(v["version"]): int(v.get("creation_timestamp") or 0) for v in self._versions[name]}
            known = self.state.aliases.get(name, {})
            for alias, fields, history in mapping.alias_moves(name, aliases, known, version_times=times):
                seen = known.get(alias) or {}
                same = seen.get("history") == history
                # MLflow does not say when an alias moved: the first import that saw the move dates it
                moved_at = datetime.fromisoformat(seen["event_time"]) if same and seen.get("event_time") else now
                self.report.read["aliases"] += 1
                move = AliasMove(name, alias, fields, history, moved_at, times)
                if alias in self.hold_aliases and not same and fields["event_id"] not in self.state.sent:
                    self.report.held.append(move)  # neither emitted nor remembered until released
                    continue
                self.release(move)
