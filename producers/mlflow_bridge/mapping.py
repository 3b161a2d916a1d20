"""Pure mapping of MLflow REST entities (as JSON dicts) to provline event fields.

No I/O. Every function returns ``(kind, fields)`` where ``fields`` include a stable ``event_id``
(:func:`provline.schemas.events.stable_event_id` over the MLflow ids) and the ``event_time`` the
MLflow entity records, so the same MLflow state always maps to the same events. Everything
produced here is imported, not observed: the emitting producer is named :data:`PRODUCER_NAME`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from provline.schemas.events import stable_event_id

PRODUCER_NAME = "provline-mlflow-import"
RUN_STATES = {
    "RUNNING": "STARTED",
    "SCHEDULED": "STARTED",
    "FINISHED": "COMPLETED",
    "FAILED": "FAILED",
    "KILLED": "FAILED",
}
DATASET_PREFIX = "mlflow:"
Event = tuple[str, dict[str, Any]]


def _time(millis: Any) -> datetime:
    return datetime.fromtimestamp(int(millis or 0) / 1000, tz=UTC)


def _tags(entity: dict[str, Any]) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in entity.get("tags") or []}


def dataset_digest(dataset: dict[str, Any]) -> str:
    """The provline digest of an MLflow dataset: its MLflow digest, prefixed so it is never taken for a SHA-256."""
    return f"{DATASET_PREFIX}{dataset['name']}:{dataset['digest']}"


def parse_requirements(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements.txt (others get version ``""``); comments and options skipped."""
    packages: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        packages[name.strip().lower()] = version.strip()
    return packages


def environment(requirements: str | None, python_version: str | None) -> dict[str, Any] | None:
    """A RunEvent environment from the run's requirements.txt and python_env.yaml's python version."""
    if requirements is None and python_version is None:
        return None
    return {
        "python": python_version or "unknown",
        "packages": parse_requirements(requirements or ""),
        "packages_sha256": None,
        "os": None,
        "kernel": None,
        "cpu": None,
        "cpu_count": None,
        "memory_bytes": None,
        "gpus": [],
        "accelerator_drivers": {},
        "container_image": None,
        "container_digest": None,
        "env_vars": {},
    }


def dataset_event(run_id: str, dataset_input: dict[str, Any]) -> Event:
    """A run's ``inputs.dataset_inputs[]`` entry as a DatasetVersion."""
    dataset = dataset_input["dataset"]
    digest = dataset_digest(dataset)
    schema = json.loads(dataset.get("schema") or "{}").get("mlflow_colspec") or []
    profile = json.loads(dataset.get("profile") or "{}")
    source = dataset.get("source") or ""
    try:
        source_uri = str(json.loads(source).get("uri") or source)
    except (ValueError, AttributeError):
        source_uri = source
    return "DatasetVersion", {
        "event_id": stable_event_id("mlflow-dataset", digest, 0),
        "name": str(dataset["name"]),
        "digest": digest,
        "files": [],
        "sources": [source_uri] if source_uri else [],
        "license": None,
        "consent": None,
        "pii_tags": [],
        "collection_start": None,
        "collection_end": None,
        "columns": [
            {"name": str(c.get("name")), "type": str(c.get("type")), "nullable": not c.get("required", True)}
            for c in schema
        ],
        "schema_fingerprint": None,
        "row_count": profile.get("num_rows"),
        "quality_checks": [],
        "owner": None,
        "parents": [],
        "run_id": run_id,
        "profiles": [],
    }


def run_event(run: dict[str, Any], *, env: dict[str, Any] | None = None, outputs: list[str] | None = None) -> Event:
    """An MLflow run (``GET runs/get``'s ``run``) as the RunEvent of its current state."""
    info, data = run["info"], run.get("data") or {}
    tags = _tags(data)
    state = RUN_STATES.get(str(info.get("status")), "STARTED")
    inputs = [dataset_digest(d["dataset"]) for d in (run.get("inputs") or {}).get("dataset_inputs") or []]
    start, end = info.get("start_time"), info.get("end_time")
    return "RunEvent", {
        "event_id": stable_event_id("mlflow-run", f"{info['run_id']}/{state}", int(start or 0) * 1000),
        "event_time": _time(end if end and state != "STARTED" else start),
        "run_id": str(info["run_id"]),
        "name": str(info.get("run_name") or info["run_id"]),
        "state": state,
        "stage": tags.get("provline.stage", "training"),
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "inputs": inputs,
        "outputs": list(outputs or []),
        "code": {
            "repo": tags.get("mlflow.source.git.repoURL"),
            "commit": tags.get("mlflow.source.git.commit"),
            "branch": tags.get("mlflow.source.git.branch"),
            "dirty": False,
            "diff_sha256": None,
            "entrypoint": tags.get("mlflow.source.name"),
            "argv": [],
        },
        "environment": env,
        "hyperparameters": {str(p["key"]): str(p.get("value", "")) for p in data.get("params") or []},
        "seeds": {},
        "metrics": {str(m["key"]): float(m["value"]) for m in data.get("metrics") or []},
        "error": {"type": "MLflowRunStatus", "message": str(info.get("status"))} if state == "FAILED" else None,
        "exit_code": None,
        "duration_ms": int(end) - int(start) if start and end else None,
    }


def model_version_event(
    version: dict[str, Any],
    *,
    datasets: list[str],
    artifact_sha256: str | None = None,
    mlmodel: dict[str, Any] | None = None,
) -> Event:
    """A registered model version (``GET model-versions/get``'s ``model_version``) as a ModelVersion.

    ``mlmodel`` is the parsed MLmodel file of its artifacts (flavors, model uuid, signature);
    ``artifact_sha256`` the digest of the downloaded artifacts, computed by the importer."""
    mlmodel = mlmodel or {}
    signature = mlmodel.get("signature") or {}

    def names(part: str) -> list[str]:
        return [str(c.get("name")) for c in json.loads(signature.get(part) or "[]") if c.get("name")]

    name, number = str(version["name"]), str(version["version"])
    return "ModelVersion", {
        "event_id": stable_event_id(
            "mlflow-model-version", f"{name}@{number}", int(version.get("creation_timestamp") or 0) * 1000
        ),
        "event_time": _time(version.get("creation_timestamp")),
        "model_name": name,
        "version": number,
        "artifact_uri": str(version.get("source") or ""),
        "artifact_sha256": artifact_sha256 or "",  # "" until the importer has hashed the artifacts
        "framework": next(iter(mlmodel.get("flavors") or {}), None),
        "run_id": version.get("run_id"),
        "feature_sets": [],
        "datasets": list(datasets),
        "io_signature": json.dumps(signature, sort_keys=True) if signature else None,
        "served_versions": [],
        "input_names": names("inputs"),
        "output_names": names("outputs"),
        "artifact_files": [],
        "flavors": sorted(mlmodel.get("flavors") or {}),
        "mlflow_run_id": version.get("run_id"),
        "mlflow_model_uuid": mlmodel.get("model_uuid"),
        "mlflow_created_time": _time(version.get("creation_timestamp")),
        "predictions_dataset": None,
    }


def alias_deployment(
    model_name: str,
    alias: str,
    version: str,
    *,
    previous_version: str | None,
    endpoint: str,
    environment: str,
    at_millis: int,
) -> Event:
    """An alias that now points at ``version`` as a Deployment (PROMOTE when it moved, DEPLOY when new)."""
    subject = f"{model_name}/{alias}/{version}/after={previous_version}"
    return "Deployment", {
        "event_id": stable_event_id("mlflow-alias", subject, at_millis * 1000),
        "model_name": model_name,
        "model_version": version,
        "environment": environment,
        "endpoint": endpoint,
        "action": "PROMOTE" if previous_version else "DEPLOY",
        "reason": f"MLflow alias {alias!r}",
        "previous_version": previous_version,
        "served_versions": [],
    }
