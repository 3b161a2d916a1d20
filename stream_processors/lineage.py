"""The lineage index: which model served an endpoint when, and where that model came from.

Pure logic, no I/O. Lineage events are reduced to *entries*, JSON-able ``(key, value)`` pairs:

* ``deployment/<event_id>``        one Deployment event (never overwritten, so writers never conflict)
* ``model/<name>@<version>``       one ModelVersion: artifact, training run, datasets, feature sets,
  signature names, the version strings the model server reports for it and its MLflow model uuid
* ``run/<run_id>``                 the code (repo, commit) of the latest RunEvent state that named code
* ``dataset/<digest>``             the column profiles of a DatasetVersion (drift baselines)
* ``predictions/<name>@<version>`` the dataset profiling the model's own predictions, from the latest
  ModelVersion or Evaluation that recorded one (the baseline of output drift)

A model server may report another version string than the one registered (MLServer's ``v1`` for
MLflow's ``1``): a ModelVersion or Deployment declares it in ``served_versions``, and
:meth:`LineageIndex.model` resolves either string to the registered version. A server that reports
nothing (``mlflow models serve``) is named by the MLflow model uuid the sidecar read from its model
directory: :meth:`LineageIndex.mlflow_model` resolves it to the version whose ModelVersion names it.

The Faust shell stores the entries in a changelog-backed table and mirrors every entry it sees
(its own writes and other workers' changelog records) into a :class:`LineageIndex` with
:meth:`LineageIndex.apply`, which is idempotent. :meth:`LineageIndex.ingest` turns a decoded event
into entries and applies them. Not thread-safe; one index per event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from provline.schemas.events import model_key

DEPLOYMENT_PREFIX = "deployment/"
MODEL_PREFIX = "model/"
RUN_PREFIX = "run/"
DATASET_PREFIX = "dataset/"
PREDICTIONS_PREFIX = "predictions/"
LATEST_WINS_PREFIXES = (RUN_PREFIX, PREDICTIONS_PREFIX)  # an older event never replaces what is known
RETIRE = "RETIRE"
LINEAGE_EVENT_KINDS = frozenset({"Deployment", "ModelVersion", "RunEvent", "DatasetVersion", "Evaluation"})
_PROFILE_FIELDS = (
    "column", "kind", "count", "null_count", "quantiles", "bin_edges", "bin_counts", "categories", "mean", "std",
)

Entry = tuple[str, dict[str, Any] | None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime | int | None) -> int | None:
    """UTC microseconds since the epoch of a decoded ``timestamp-micros`` (naive means UTC)."""
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, order=True)
class DeploymentRecord:
    # field order is the sort order: by time, ties broken by the time-ordered UUIDv7 event id
    event_time_us: int
    event_id: str
    endpoint: str
    model_name: str
    model_version: str
    environment: str
    action: str
    served_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRecord:
    model_name: str
    version: str  # the registered version, also when it was looked up by a served version
    artifact_uri: str
    artifact_sha256: str
    run_id: str | None
    datasets: tuple[str, ...]
    feature_sets: tuple[str, ...]
    input_names: tuple[str, ...] = ()  # the signature's names, in order; () when unknown
    output_names: tuple[str, ...] = ()
    served_versions: tuple[str, ...] = ()
    event_time_us: int = 0
    mlflow_model_uuid: str | None = None


@dataclass(frozen=True)
class CodeRecord:
    repo: str | None
    commit: str | None
    event_time_us: int


@dataclass(frozen=True)
class PredictionsRecord:
    digest: str  # the DatasetVersion profiling a model version's predictions
    event_time_us: int


def entries_for_event(kind: str, value: Mapping[str, Any]) -> list[Entry]:
    """The entries a decoded lineage event contributes; ``[]`` for kinds the index does not use.

    Entries under :data:`LATEST_WINS_PREFIXES` carry ``event_time_us``; :meth:`LineageIndex.ingest`
    drops one older than what it already knows.
    """
    if kind == "Deployment":
        return [(DEPLOYMENT_PREFIX + str(value["event_id"]), {
            "event_id": value["event_id"],
            "event_time_us": to_micros(value["event_time"]),
            "endpoint": value["endpoint"],
            "model_name": value["model_name"],
            "model_version": value["model_version"],
            "environment": value["environment"],
            "action": value["action"],
            "served_versions": list(value.get("served_versions") or []),
        })]
    if kind == "ModelVersion":
        key = model_key(value["model_name"], value["version"])
        event_time_us = to_micros(value.get("event_time")) or 0
        entries: list[Entry] = [(MODEL_PREFIX + key, {
            "model_name": value["model_name"],
            "version": value["version"],
            "artifact_uri": value["artifact_uri"],
            "artifact_sha256": value["artifact_sha256"],
            "run_id": value.get("run_id"),
            "datasets": list(value.get("datasets") or []),
            "feature_sets": list(value.get("feature_sets") or []),
            "input_names": list(value.get("input_names") or []),
            "output_names": list(value.get("output_names") or []),
            "served_versions": list(value.get("served_versions") or []),
            "event_time_us": event_time_us,
            "mlflow_model_uuid": value.get("mlflow_model_uuid"),
        })]
        if value.get("predictions_dataset"):
            entries.append((PREDICTIONS_PREFIX + key, {"digest": value["predictions_dataset"],
                                                       "event_time_us": event_time_us}))
        return entries
    if kind == "Evaluation":
        if not value.get("predictions_dataset"):
            return []
        return [(PREDICTIONS_PREFIX + model_key(value["model_name"], value["model_version"]), {
            "digest": value["predictions_dataset"], "event_time_us": to_micros(value.get("event_time")) or 0,
        })]
    if kind == "DatasetVersion":
        profiles = [{name: profile.get(name) for name in _PROFILE_FIELDS} for profile in value.get("profiles") or []]
        if not profiles:
            return []
        return [(DATASET_PREFIX + str(value["digest"]), {"name": value.get("name"), "profiles": profiles})]
    if kind == "RunEvent":
        code = value.get("code")
        if not code or (code.get("repo") is None and code.get("commit") is None):
            return []
        return [(RUN_PREFIX + str(value["run_id"]), {
            "repo": code.get("repo"), "commit": code.get("commit"), "event_time_us": to_micros(value["event_time"]),
        })]
    return []


class LineageIndex:
    """Deployments per endpoint over time, model versions and run code, queryable by time."""

    def __init__(self) -> None:
        self._deployments: dict[str, DeploymentRecord] = {}
        self._by_endpoint: dict[str, list[DeploymentRecord]] = {}
        self._models: dict[str, ModelRecord] = {}
        self._code: dict[str, CodeRecord] = {}
        self._profiles: dict[str, dict[str, dict[str, Any]]] = {}  # dataset digest -> column -> profile
        self._predictions: dict[str, PredictionsRecord] = {}  # name@version -> its predictions' dataset
        # name@served version -> {entry key declaring it: (event time, registered version)}
        self._served: dict[str, dict[str, tuple[int, str]]] = {}
        self._mlflow_models: dict[str, set[str]] = {}  # MLflow model uuid -> name@version of the versions naming it
        self.changes = 0  # how many entries were applied: a cheap "did anything change" check

    def __len__(self) -> int:
        return len(self._deployments) + len(self._models) + len(self._code) + len(self._predictions)

    def ingest(self, kind: str, value: Mapping[str, Any]) -> list[Entry]:
        """Apply a decoded lineage event; returns the entries to persist (possibly none)."""
        entries = [(key, entry) for key, entry in entries_for_event(kind, value) if not self._knows_newer(key, entry)]
        for key, entry in entries:
            self.apply(key, entry)
        return entries

    def _knows_newer(self, key: str, entry: Mapping[str, Any] | None) -> bool:
        if entry is None or not key.startswith(LATEST_WINS_PREFIXES):
            return False
        known: CodeRecord | PredictionsRecord | None = (
            self._code.get(key[len(RUN_PREFIX):]) if key.startswith(RUN_PREFIX)
            else self._predictions.get(key[len(PREDICTIONS_PREFIX):])
        )
        return known is not None and known.event_time_us > int(entry["event_time_us"])

    def apply(self, key: str, value: Mapping[str, Any] | None) -> None:
        """Set (or, with ``None``, delete) one entry. Idempotent; unknown key prefixes are ignored."""
        self.changes += 1
        if key.startswith(DATASET_PREFIX):
            digest = key[len(DATASET_PREFIX):]
            if value is None:
                self._profiles.pop(digest, None)
            else:
                self._profiles[digest] = {str(p["column"]): dict(p) for p in value.get("profiles") or []}
        elif key.startswith(DEPLOYMENT_PREFIX):
            self._apply_deployment(key[len(DEPLOYMENT_PREFIX):], value)
        elif key.startswith(MODEL_PREFIX):
            self._apply_model(key, value)
        elif key.startswith(PREDICTIONS_PREFIX):
            if value is None:
                self._predictions.pop(key[len(PREDICTIONS_PREFIX):], None)
            else:
                self._predictions[key[len(PREDICTIONS_PREFIX):]] = PredictionsRecord(
                    digest=str(value["digest"]), event_time_us=int(value["event_time_us"]))
        elif key.startswith(RUN_PREFIX):
            if value is None:
                self._code.pop(key[len(RUN_PREFIX):], None)
            else:
                self._code[key[len(RUN_PREFIX):]] = CodeRecord(
                    repo=value.get("repo"), commit=value.get("commit"), event_time_us=int(value["event_time_us"])
                )

    def _apply_model(self, key: str, value: Mapping[str, Any] | None) -> None:
        name_version = key[len(MODEL_PREFIX):]
        old = self._models.pop(name_version, None)
        if old is not None:
            self._withdraw(key, old.model_name, old.served_versions)
            if old.mlflow_model_uuid:
                named = self._mlflow_models.get(old.mlflow_model_uuid, set())
                named.discard(name_version)
                if not named:
                    self._mlflow_models.pop(old.mlflow_model_uuid, None)
        if value is None:
            return
        record = ModelRecord(
            model_name=value["model_name"], version=value["version"],
            artifact_uri=value["artifact_uri"], artifact_sha256=value["artifact_sha256"],
            run_id=value.get("run_id"), datasets=tuple(value.get("datasets") or ()),
            feature_sets=tuple(value.get("feature_sets") or ()),
            input_names=tuple(value.get("input_names") or ()), output_names=tuple(value.get("output_names") or ()),
            served_versions=tuple(value.get("served_versions") or ()),
            event_time_us=int(value.get("event_time_us") or 0),
            mlflow_model_uuid=value.get("mlflow_model_uuid") or None,
        )
        self._models[name_version] = record
        if record.mlflow_model_uuid:
            self._mlflow_models.setdefault(record.mlflow_model_uuid, set()).add(name_version)
        self._declare(key, record.model_name, record.version, record.served_versions, record.event_time_us)

    def _apply_deployment(self, event_id: str, value: Mapping[str, Any] | None) -> None:
        key = DEPLOYMENT_PREFIX + event_id
        old = self._deployments.pop(event_id, None)
        if old is not None:
            self._by_endpoint[old.endpoint].remove(old)
            self._withdraw(key, old.model_name, old.served_versions)
        if value is None:
            return
        record = DeploymentRecord(
            event_time_us=int(value["event_time_us"]), event_id=event_id, endpoint=value["endpoint"],
            model_name=value["model_name"], model_version=value["model_version"],
            environment=value["environment"], action=value["action"],
            served_versions=tuple(value.get("served_versions") or ()),
        )
        self._deployments[event_id] = record
        bisect.insort(self._by_endpoint.setdefault(record.endpoint, []), record)
        self._declare(key, record.model_name, record.model_version, record.served_versions, record.event_time_us)

    def _declare(self, source: str, model_name: str, registered: str, served: tuple[str, ...],
                 event_time_us: int) -> None:
        for version in served:
            if version != registered:
                self._served.setdefault(model_key(model_name, version), {})[source] = (event_time_us, registered)

    def _withdraw(self, source: str, model_name: str, served: tuple[str, ...]) -> None:
        for version in served:
            declared = self._served.get(model_key(model_name, version))
            if declared is not None:
                declared.pop(source, None)
                if not declared:
                    del self._served[model_key(model_name, version)]

    def registered_version(self, model_name: str, version: str) -> str:
        """The registered version that ``version`` names: itself when it is registered or declared by no one,
        else the version whose latest ModelVersion or Deployment declared it in ``served_versions``."""
        if model_key(model_name, version) in self._models:
            return version
        declared = self._served.get(model_key(model_name, version))
        return max(declared.values())[1] if declared else version

    def deployment_at(self, endpoint: str, at: datetime | int) -> DeploymentRecord | None:
        """The deployment serving ``endpoint`` at ``at`` (inclusive), or None if none or retired.

        Replays the endpoint's history up to ``at``: every action but RETIRE puts its version on
        the endpoint; RETIRE takes its version off if that is the one serving.
        """
        at_us = to_micros(at)
        serving: DeploymentRecord | None = None
        for record in self._by_endpoint.get(endpoint, ()):
            if at_us is not None and record.event_time_us > at_us:
                break
            if record.action != RETIRE:
                serving = record
            elif serving is not None and (serving.model_name, serving.model_version) == (
                record.model_name, record.model_version
            ):
                serving = None
        return serving

    def last_deployment_of(
        self, endpoint: str, model_name: str, model_version: str, at: datetime | int
    ) -> DeploymentRecord | None:
        """The most recent non-RETIRE deployment of one model version to ``endpoint`` at or before ``at``;
        ``model_version`` may be a served version (see :meth:`registered_version`)."""
        at_us = to_micros(at)
        versions = {model_version, self.registered_version(model_name, model_version)}
        found: DeploymentRecord | None = None
        for record in self._by_endpoint.get(endpoint, ()):
            if at_us is not None and record.event_time_us > at_us:
                break
            if record.action != RETIRE and record.model_name == model_name and record.model_version in versions:
                found = record
        return found

    def model(self, model_name: str, version: str) -> ModelRecord | None:
        """The registered model version named by ``version``, a registered or a served version string.

        The record's ``version`` is always the registered one.
        """
        return self._models.get(model_key(model_name, self.registered_version(model_name, version)))

    def mlflow_model(self, model_uuid: str, *, endpoint: str, at: datetime | int) -> ModelRecord | None:
        """The registered model version whose ModelVersion names MLflow model ``model_uuid``; None until one does.

        One saved model may be registered more than once (under two names, or twice from one run's
        artifacts): then the one deployed to ``endpoint`` at ``at`` wins, else the first registered
        (by event time, then name and version), so the answer never depends on the order events were read.
        """
        named = self._mlflow_models.get(model_uuid)
        if not named:
            return None
        candidates = [self._models[key] for key in named]
        if len(candidates) == 1:
            return candidates[0]
        deployed = self.deployment_at(endpoint, at)
        if deployed is not None:
            registered = self.registered_version(deployed.model_name, deployed.model_version)
            for candidate in candidates:
                if (candidate.model_name, candidate.version) == (deployed.model_name, registered):
                    return candidate
        return min(candidates, key=lambda c: (c.event_time_us, c.model_name, c.version))

    def code(self, run_id: str) -> CodeRecord | None:
        return self._code.get(run_id)

    def profile(self, digest: str, column: str) -> dict[str, Any] | None:
        """The profile of ``column`` in dataset ``digest``, or None if unknown."""
        return self._profiles.get(digest, {}).get(column)

    def baseline_of(self, model_name: str, model_version: str, column: str, *, output: bool = False,
                    label_column: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """The baseline of ``column`` of a model version given by name: ``(dataset digest, profile)``.

        Inputs (``output=False``) are compared with the model's training data (:meth:`baseline`).
        Outputs are compared with the profile of the model's own predictions on its evaluation data
        when a ModelVersion or Evaluation recorded one, and only when none did, with the training
        data's ``label_column`` (default: the column of the output's name). None when the version or
        the column is unknown.
        """
        model = self.model(model_name, model_version)
        if model is None:
            return None
        predictions = self._predictions.get(model_key(model.model_name, model.version)) if output else None
        if predictions is not None:
            profile = self.profile(predictions.digest, column)
            return (predictions.digest, profile) if profile is not None else None
        return self.baseline(model, (label_column or column) if output else column)

    def baseline(self, model: ModelRecord, column: str) -> tuple[str, dict[str, Any]] | None:
        """The column profile of ``column`` in the model's training datasets, with its dataset digest.

        The first of ``model.datasets`` that profiles the column wins; None when none does (yet).
        """
        for digest in model.datasets:
            profile = self._profiles.get(digest, {}).get(column)
            if profile is not None:
                return digest, profile
        return None
