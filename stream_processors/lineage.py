"""The lineage index: which model served an endpoint when, and where that model came from.

Pure logic, no I/O. Lineage events are reduced to *entries*, JSON-able ``(key, value)`` pairs:

* ``deployment/<event_id>``  one Deployment event (never overwritten, so writers never conflict)
* ``model/<name>@<version>`` one ModelVersion: artifact, training run, datasets, feature sets
* ``run/<run_id>``           the code (repo, commit) of the latest RunEvent state that named code

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
RETIRE = "RETIRE"
LINEAGE_EVENT_KINDS = frozenset({"Deployment", "ModelVersion", "RunEvent", "DatasetVersion"})
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


@dataclass(frozen=True)
class ModelRecord:
    model_name: str
    version: str
    artifact_uri: str
    artifact_sha256: str
    run_id: str | None
    datasets: tuple[str, ...]
    feature_sets: tuple[str, ...]


@dataclass(frozen=True)
class CodeRecord:
    repo: str | None
    commit: str | None
    event_time_us: int


def entries_for_event(kind: str, value: Mapping[str, Any], *, current_code: CodeRecord | None = None) -> list[Entry]:
    """The entries a decoded lineage event contributes; ``[]`` for kinds the index does not use.

    ``current_code`` is what the index already knows of the event's run: a RunEvent without code,
    or older than what is known, leaves the run's code as it is.
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
        })]
    if kind == "ModelVersion":
        return [(MODEL_PREFIX + model_key(value["model_name"], value["version"]), {
            "model_name": value["model_name"],
            "version": value["version"],
            "artifact_uri": value["artifact_uri"],
            "artifact_sha256": value["artifact_sha256"],
            "run_id": value.get("run_id"),
            "datasets": list(value.get("datasets") or []),
            "feature_sets": list(value.get("feature_sets") or []),
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
        event_time_us = to_micros(value["event_time"])
        assert event_time_us is not None
        if current_code is not None and current_code.event_time_us > event_time_us:
            return []
        return [(RUN_PREFIX + str(value["run_id"]), {
            "repo": code.get("repo"), "commit": code.get("commit"), "event_time_us": event_time_us,
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
        self.changes = 0  # how many entries were applied: a cheap "did anything change" check

    def __len__(self) -> int:
        return len(self._deployments) + len(self._models) + len(self._code)

    def ingest(self, kind: str, value: Mapping[str, Any]) -> list[Entry]:
        """Apply a decoded lineage event; returns the entries to persist (possibly none)."""
        current = self._code.get(str(value["run_id"])) if kind == "RunEvent" else None
        entries = entries_for_event(kind, value, current_code=current)
        for key, entry in entries:
            self.apply(key, entry)
        return entries

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
            if value is None:
                self._models.pop(key[len(MODEL_PREFIX):], None)
            else:
                self._models[key[len(MODEL_PREFIX):]] = ModelRecord(
                    model_name=value["model_name"], version=value["version"],
                    artifact_uri=value["artifact_uri"], artifact_sha256=value["artifact_sha256"],
                    run_id=value.get("run_id"), datasets=tuple(value.get("datasets") or ()),
                    feature_sets=tuple(value.get("feature_sets") or ()),
                )
        elif key.startswith(RUN_PREFIX):
            if value is None:
                self._code.pop(key[len(RUN_PREFIX):], None)
            else:
                self._code[key[len(RUN_PREFIX):]] = CodeRecord(
                    repo=value.get("repo"), commit=value.get("commit"), event_time_us=int(value["event_time_us"])
                )

    def _apply_deployment(self, event_id: str, value: Mapping[str, Any] | None) -> None:
        old = self._deployments.pop(event_id, None)
        if old is not None:
            self._by_endpoint[old.endpoint].remove(old)
        if value is None:
            return
        record = DeploymentRecord(
            event_time_us=int(value["event_time_us"]), event_id=event_id, endpoint=value["endpoint"],
            model_name=value["model_name"], model_version=value["model_version"],
            environment=value["environment"], action=value["action"],
        )
        self._deployments[event_id] = record
        bisect.insort(self._by_endpoint.setdefault(record.endpoint, []), record)

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
        """The most recent non-RETIRE deployment of one model version to ``endpoint`` at or before ``at``."""
        at_us = to_micros(at)
        found: DeploymentRecord | None = None
        for record in self._by_endpoint.get(endpoint, ()):
            if at_us is not None and record.event_time_us > at_us:
                break
            if record.action != RETIRE and (record.model_name, record.model_version) == (model_name, model_version):
                found = record
        return found

    def model(self, model_name: str, version: str) -> ModelRecord | None:
        return self._models.get(model_key(model_name, version))

    def code(self, run_id: str) -> CodeRecord | None:
        return self._code.get(run_id)

    def profile(self, digest: str, column: str) -> dict[str, Any] | None:
        """The profile of ``column`` in dataset ``digest``, or None if unknown."""
        return self._profiles.get(digest, {}).get(column)

    def baseline_of(self, model_name: str, model_version: str, column: str) -> tuple[str, dict[str, Any]] | None:
        """:meth:`baseline` of a model version given by name; None when the version is unknown."""
        model = self.model(model_name, model_version)
        return self.baseline(model, column) if model is not None else None

    def baseline(self, model: ModelRecord, column: str) -> tuple[str, dict[str, Any]] | None:
        """The column profile of ``column`` in the model's training datasets, with its dataset digest.

        The first of ``model.datasets`` that profiles the column wins; None when none does (yet).
        """
        for digest in model.datasets:
            profile = self._profiles.get(digest, {}).get(column)
            if profile is not None:
                return digest, profile
        return None
