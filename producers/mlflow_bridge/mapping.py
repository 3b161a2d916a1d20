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

import yaml

from provline.schemas.events import model_key, stable_event_id

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


def python_version(python_env_yaml: str) -> str | None:
    """The ``python:`` version of an MLflow model's python_env.yaml; None when it names none or is not YAML."""
    try:
        document = yaml.safe_load(python_env_yaml)
    except yaml.YAMLError:
        return None
    version = document.get("python") if isinstance(document, dict) else None
    return str(version) if version else None


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
    visit: int = 0,
) -> Event:
    """An alias that now points at ``version`` as a Deployment (PROMOTE when it moved, DEPLOY when new).

    The id depends on the model, alias, version, ``at_millis`` (the version's creation time) and
    ``visit``: how many times before the alias pointed at this version (so a rollback to a version
    it left is a new event). Not on ``previous_version``, which an import that keeps no state does
    not know: such an import gives the id an earlier import gave the same move."""
    subject = f"{model_name}/{alias}/{version}" + (f"#{visit}" if visit else "")
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


# What an artifact description (:func:`provline.producers.models.describe_artifact` of the downloaded
# model directory) contributes to a ModelVersion: provline's own digest and the MLmodel facts.
ARTIFACT_FIELDS = (
    "artifact_uri", "artifact_sha256", "artifact_files", "flavors", "framework", "mlflow_run_id", "mlflow_model_uuid",
    "mlflow_created_time", "input_names", "output_names", "io_signature",
)


def with_artifact(fields: dict[str, Any], described: dict[str, Any]) -> dict[str, Any]:
    """ModelVersion ``fields`` completed by the description of its downloaded artifacts; the event id stays.

    A fact the artifacts do not have (no MLmodel: no flavors, say) keeps the registry's value."""
    merged = dict(fields)
    for name in ARTIFACT_FIELDS:
        value = described.get(name)
        if value is not None and value != [] and value != "":
            merged[name] = value
    if not merged.get("mlflow_run_id"):
        merged["mlflow_run_id"] = fields.get("run_id")
    return merged


def registered_aliases(model: dict[str, Any]) -> dict[str, str]:
    """A registered model's (``registered-models/search`` entry) aliases: alias -> version."""
    return {str(a["alias"]): str(a["version"]) for a in model.get("aliases") or [] if a.get("alias")}


def alias_endpoint(model_name: str, alias: str) -> str:
    """The URI clients load an aliased model by: the Deployment's endpoint."""
    return f"models:/{model_name}@{alias}"


def alias_moves(
    model_name: str,
    aliases: dict[str, str],
    known: dict[str, dict[str, Any]],
    *,
    version_times: dict[str, int],
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """The Deployment of each alias as it stands now, given what earlier imports saw (``known``: alias ->
    ``{"history": [versions it pointed at, oldest first]}``, empty on a first import).

    An alias still at the version seen last gives that import's event again (same id); one that
    moved gives a PROMOTE naming the version it left; one not seen before a DEPLOY. MLflow keeps no
    alias history: moves between two imports are seen as one, and those before the first import
    not at all. Returns ``(alias, fields, history)``, ``history`` being what to remember.
    """
    moves = []
    for alias, version in sorted(aliases.items()):
        history = [str(v) for v in (known.get(alias) or {}).get("history") or []]
        if not history or history[-1] != version:
            history = [*history, version]
        visit = history.count(version) - 1
        previous = history[-2] if len(history) > 1 else None
        _, fields = alias_deployment(
            model_name, alias, version, previous_version=previous, endpoint=alias_endpoint(model_name, alias),
            environment=alias, at_millis=int(version_times.get(version) or 0), visit=visit,
        )
        moves.append((alias, fields, history))
    return moves


LEGACY_STAGES = ("Staging", "Production", "Archived")


def stage_deployment(version: dict[str, Any]) -> Event | None:
    """A model version in a (deprecated) MLflow stage as a Deployment into that stage; None outside one.

    Archived is a RETIRE. The id depends on the version, its stage and the time MLflow last updated it."""
    stage = str(version.get("current_stage") or "None")
    if stage not in LEGACY_STAGES:
        return None
    name, number = str(version["name"]), str(version["version"])
    updated = int(version.get("last_updated_timestamp") or version.get("creation_timestamp") or 0)
    return "Deployment", {
        "event_id": stable_event_id("mlflow-stage", f"{model_key(name, number)}/{stage}", updated * 1000),
        "event_time": _time(updated),
        "model_name": name,
        "model_version": number,
        "environment": stage.lower(),
        "endpoint": f"models:/{name}/{stage}",
        "action": "RETIRE" if stage == "Archived" else "PROMOTE",
        "reason": f"MLflow stage {stage!r}",
        "previous_version": None,
        "served_versions": [],
    }


LOGGED_MODEL_PREFIX = "models:/m-"
EVALUATION_TEST = "mlflow logged-model metrics"


def logged_model_id(version: dict[str, Any]) -> str | None:
    """The MLflow 3 LoggedModel a registered version was made from (its ``model_id``, or a
    ``models:/m-...`` source); None for a version registered from a run's artifacts."""
    if version.get("model_id"):
        return str(version["model_id"])
    source = str(version.get("source") or "")
    return source.removeprefix("models:/") if source.startswith(LOGGED_MODEL_PREFIX) else None


def logged_model_evaluations(model_name: str, version: str, logged_model: dict[str, Any]) -> list[Event]:
    """An MLflow 3 LoggedModel's metrics (``logged-models/get``'s ``model``) as one Evaluation of the
    registered version per dataset they were measured on (the last value of each metric).

    MLflow records no thresholds: no metric fails one, so the evaluation passes, as
    ``Lineage.evaluate`` without thresholds does; ``tests`` says where it came from. The id depends
    on the version, the dataset and the values, so metrics logged later give a new Evaluation."""
    info = logged_model.get("info") or {}
    latest: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for metric in (logged_model.get("data") or {}).get("metrics") or []:
        group = latest.setdefault((str(metric.get("dataset_name") or ""), str(metric.get("dataset_digest") or "")), {})
        seen = group.get(str(metric["key"]))
        order = (int(metric.get("step") or 0), int(metric.get("timestamp") or 0))
        if seen is None or order >= (int(seen.get("step") or 0), int(seen.get("timestamp") or 0)):
            group[str(metric["key"])] = metric
    events: list[Event] = []
    for (name, digest), metrics in sorted(latest.items()):
        dataset = dataset_digest({"name": name, "digest": digest}) if name and digest else None
        rows = [{"name": key, "value": float(m["value"]), "ci_low": None, "ci_high": None, "threshold": None,
                 "passed": None} for key, m in sorted(metrics.items())]
        measured = max(int(m.get("timestamp") or 0) for m in metrics.values())
        values = json.dumps([[row["name"], row["value"]] for row in rows])
        run_id = next((str(m["run_id"]) for m in metrics.values() if m.get("run_id")), info.get("source_run_id"))
        events.append(("Evaluation", {
            "event_id": stable_event_id("mlflow-evaluation", f"{model_key(model_name, version)}/{dataset}/{values}",
                                        measured * 1000),
            "event_time": _time(measured),
            "model_name": model_name,
            "model_version": version,
            "dataset": dataset,
            "slice": None,
            "metrics": rows,
            "passed": True,
            "tests": [EVALUATION_TEST],
            "run_id": run_id,
            "predictions_dataset": None,
        }))
    return events


DECISION_TAGS = {"provline.approval.": "APPROVED", "provline.rejection.": "REJECTED"}
DECISION_TRANSITION_FROM = "registered"


def tag_decisions(version: dict[str, Any]) -> list[Event]:
    """Model-version tags ``provline.approval.<environment>.<role> = <actor>`` (or ``provline.rejection.``)
    as Decisions on ``model:<name>@<version>`` moving ``registered-><environment>``: the approvals a
    promotion policy asks for, given in MLflow's UI or client. Other tags are not mapped.

    MLflow does not date tags: the id depends on the version's creation time and the tag."""
    name, number = str(version["name"]), str(version["version"])
    subject = f"model:{model_key(name, number)}"
    events: list[Event] = []
    for key, actor in sorted(_tags(version).items()):
        prefix = next((p for p in DECISION_TAGS if key.startswith(p)), None)
        environment, _, role = key.removeprefix(prefix or "").partition(".")
        if prefix is None or not environment or not role or not actor.strip():
            continue
        outcome = DECISION_TAGS[prefix]
        events.append(("Decision", {
            "event_id": stable_event_id("mlflow-decision", f"{subject}/{environment}/{role}/{outcome}/{actor}",
                                        int(version.get("creation_timestamp") or 0) * 1000),
            "subject": subject,
            "transition": f"{DECISION_TRANSITION_FROM}->{environment}",
            "outcome": outcome,
            "actor": actor.strip(),
            "role": role,
            "rationale": f"MLflow model-version tag {key!r}",
            "alternatives": [],
            "risk_refs": [],
        }))
    return events


ALIAS_ENDPOINT_PREFIX = "models:/"


def known_from_events(events: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """What earlier imports sent, from their events as read back from the lineage topic: (event id ->
    kind, model -> alias -> ``{"history", "event_time"}``), the state :func:`alias_moves` takes.

    An alias's history is the versions of its Deployments (endpoint ``models:/<name>@<alias>``) in
    the order they were sent (their ``event_time``, the import that first saw each move)."""
    sent: dict[str, str] = {}
    moves: dict[tuple[str, str], list[tuple[datetime, str, str]]] = {}
    for kind, value in events:
        if kind == "SessionSeal":
            continue
        sent[str(value["event_id"])] = kind
        endpoint = str(value.get("endpoint") or "") if kind == "Deployment" else ""
        name, at, alias = endpoint.removeprefix(ALIAS_ENDPOINT_PREFIX).rpartition("@")
        if endpoint.startswith(ALIAS_ENDPOINT_PREFIX) and at and name == value.get("model_name"):
            moves.setdefault((name, alias), []).append(
                (value["event_time"], str(value["event_id"]), str(value["model_version"])))
    aliases: dict[str, dict[str, Any]] = {}
    for (name, alias), seen in sorted(moves.items()):
        first: dict[str, tuple[datetime, str, str]] = {}
        for move in seen:  # the same move sent twice (same id) counts once, when it was first sent
            if move[1] not in first or move[0] < first[move[1]][0]:
                first[move[1]] = move
        ordered = sorted(first.values())
        history = [version for _, _, version in ordered]
        aliases.setdefault(name, {})[alias] = {"history": history, "event_time": ordered[-1][0].isoformat()}
    return sent, aliases


GUARD_ROLE = "promotion-guard"  # no policy requires this role, so a guard's rejection never stands for an approval
GUARD_ACTOR = "provline mlflow follow"
GUARD_REASON = "rejected by the promotion guard"


def guard_rejection(deployment: dict[str, Any], *, environment: str, missing: list[str]) -> Event:
    """The Decision that rejects an alias move (``deployment``, from :func:`alias_moves`) the promotion
    policy for ``environment`` refuses: REJECTED on ``model:<name>@<version>``, transition
    ``registered-><environment>`` (as approvals by tag), role :data:`GUARD_ROLE`, what is missing as
    rationale. Its id derives from the move's, so checking the same move again gives the same Decision."""
    subject = f"model:{model_key(deployment['model_name'], deployment['model_version'])}"
    return "Decision", {
        "event_id": stable_event_id("mlflow-guard", str(deployment["event_id"]), _id_millis(deployment) * 1000),
        "subject": subject,
        "transition": f"{DECISION_TRANSITION_FROM}->{environment}",
        "outcome": "REJECTED",
        "actor": GUARD_ACTOR,
        "role": GUARD_ROLE,
        "rationale": f"{deployment['reason']} moved to {deployment['model_version']} "
                     f"(from {deployment['previous_version'] or 'nothing'}; Deployment {deployment['event_id']}); "
                     f"the promotion policy for {environment} is not met: " + "; ".join(missing),
        "alternatives": [deployment["previous_version"]] if deployment.get("previous_version") else [],
        "risk_refs": [],
    }


def _id_millis(fields: dict[str, Any]) -> int:
    """The milliseconds a stable event id was made with (its first 48 bits)."""
    return int(str(fields["event_id"]).replace("-", "")[:12], 16)


def rejected_deployment(deployment: dict[str, Any], decision: dict[str, Any], *, environment: str) -> dict[str, Any]:
    """A rejected move's Deployment as recorded: still the PROMOTE (or DEPLOY) it was, since clients
    loading the alias were served that version, with a reason that names the rejecting Decision.
    The id stays the move's, so an import that sees the same move sends nothing new."""
    return {**deployment, "reason": f"{deployment['reason']}; {GUARD_REASON} for {environment} "
                                    f"(Decision {decision['event_id']})"}


def alias_rollback(
    model_name: str, alias: str, history: list[str], *, version_times: dict[str, int], reason: str,
) -> tuple[dict[str, Any], list[str]]:
    """The ROLLBACK of an alias moved back to the version it left (``history[-2]``), and the history to
    remember. It has the id :func:`alias_moves` gives the alias standing at that version again, so
    the next import, which finds it there, sends nothing."""
    if len(history) < 2:
        raise ValueError(f"alias {alias!r} of {model_name} has no earlier version to move back to")
    [(_, fields, moved)] = alias_moves(model_name, {alias: history[-2]}, {alias: {"history": history}},
                                       version_times=version_times)
    return {**fields, "action": "ROLLBACK", "reason": reason}, moved
