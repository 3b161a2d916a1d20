"""Export recorded runs and model deployments as OpenLineage RunEvents, for Marquez or any OpenLineage consumer.

Pure conversion from provline events (as decoded, or as the JSON payloads the sink stores) to
OpenLineage objects of the official client (``openlineage-python``), serialised with its Serde:

    RunEvent STARTED/COMPLETED/FAILED   -> eventType START / COMPLETE / FAIL
    run id, parent run, error           -> run.runId (a UUID; other ids map to a stable UUIDv5),
                                           parent and errorMessage facets
    code (repo, commit, entrypoint)     -> job sourceCodeLocation facet
    hyperparameters, seeds, metrics     -> run executionParameters facet (name = value), and the
                                           ``mlTraining`` run facet (typed: MLTrainingRunFacet)
    evaluations of the run's models     -> run ``mlEvaluation`` facet (metrics, thresholds, result)
    environment                         -> run processing_engine facet
    provline run id, event id, hash     -> run ``provline`` facet (ProvlineRunFacet)
    inputs / outputs (dataset digests)  -> inputs / outputs with schema and version facets
    models registered by the run        -> outputs in namespace ``<namespace>.models`` with the
                                           ``mlModel`` dataset facet (MLModelDatasetFacet)

A model version's deployments (:func:`deployments_to_openlineage`) become one COMPLETE RunEvent per
endpoint (environment + endpoint) the version was ever in force on: the job ``endpoint:<env>:<endpoint>``
carries the ``endpointDeploymentChain`` facet (every deployment on that endpoint, previous -> current
version, action, time, reason, actor, approver), its input is the model version with ``mlModel`` and
``stageLifecycle`` (registered, approved, deployed, replaced, rolled back, retired) facets.

The facet keys follow where ML lineage is being taken in OpenLineage (OpenLineage/OpenLineage#4035:
ML facets on Job, Run and Dataset, no core change) and what SageMaker emits (``endpointDeploymentChain``
on endpoint jobs, ``stageLifecycle`` on model package datasets). Each custom facet's JSON schema is in
``schemas/openlineage/`` (installed with ``provline.schemas``); its ``_schemaURL`` points there.

Every event is checked before it leaves (:func:`checked_json`): its JSON is rebuilt through the client's
own classes (:func:`parse_run_event`, so their validators run) and must serialise to the same JSON.
"""

from __future__ import annotations

import json
import types
import typing
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import attr
from openlineage.client.generated.base import (
    BaseFacet,
    DatasetFacet,
    InputDataset,
    Job,
    JobFacet,
    OutputDataset,
    Run,
    RunEvent,
    RunFacet,
)
from openlineage.client.generated.base import EventType as OpenLineageEventType
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.execution_parameters_run import ExecutionParameter, ExecutionParametersRunFacet
from openlineage.client.generated.job_type_job import JobTypeJobFacet
from openlineage.client.generated.parent_run import Job as ParentJob
from openlineage.client.generated.parent_run import ParentRunFacet
from openlineage.client.generated.parent_run import Run as ParentRun
from openlineage.client.generated.processing_engine_run import ProcessingEngineRunFacet
from openlineage.client.generated.schema_dataset import SchemaDatasetFacet, SchemaDatasetFacetFields
from openlineage.client.generated.source_code_location_job import SourceCodeLocationJobFacet
from openlineage.client.serde import Serde

from provline.schemas.events import provline_version
from provline.sink.errors import OpenLineageModelError
from provline.sink.modelpage import RETIRE, with_previous_versions

PRODUCER_URI = "https://github.com/provline/provline"
SCHEMA_BASE = f"{PRODUCER_URI}/blob/main/schemas/openlineage"
PROVLINE_FACET_SCHEMA = f"{SCHEMA_BASE}/ProvlineRunFacet.json"
DEFAULT_NAMESPACE = "provline"
_RUN_UUID_NAMESPACE = uuid.UUID("6f1c0a52-2a34-4c6e-9a51-0d6c6a7f3e10")
_EVENT_TYPES = {"STARTED": OpenLineageEventType.START, "COMPLETED": OpenLineageEventType.COMPLETE,
                "FAILED": OpenLineageEventType.FAIL}


def facet_schema_url(name: str) -> str:
    """The ``_schemaURL`` of provline's facet class ``name``: its definition in ``schemas/openlineage/<name>.json``."""
    return f"{SCHEMA_BASE}/{name}.json#/$defs/{name}"


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, int):  # microseconds since the epoch
        return datetime.fromtimestamp(value / 1e6, UTC).isoformat()
    return str(value)


# OpenLineage facets are camelCase: N815 is off for the classes below.
@attr.define
class ProvlineRunFacet(RunFacet):
    """Where an exported run state comes from in provline: its own run id, and the event's id and hash."""

    runId: str  # noqa: N815
    eventId: str  # noqa: N815
    hash: str

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("ProvlineRunFacet")


@attr.define
class MLModelSignature:
    """The model's input and output names, in order (empty when the registration did not state them)."""

    inputs: list[str] = attr.field(factory=list)
    outputs: list[str] = attr.field(factory=list)


@attr.define
class MLModelDatasetFacet(DatasetFacet):
    """A registered model version: name, version, framework, artifact (URI and SHA-256), signature, when."""

    name: str
    version: str
    artifactUri: str  # noqa: N815
    artifactSha256: str  # noqa: N815
    framework: str | None = attr.field(default=None)
    flavors: list[str] = attr.field(factory=list)
    signature: MLModelSignature = attr.field(factory=MLModelSignature)
    registeredTime: str | None = attr.field(default=None)  # noqa: N815
    trainingRunId: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("MLModelDatasetFacet")


@attr.define
class MLTrainingRunFacet(RunFacet):
    """What a training run was given and what it measured, typed (executionParameters has them as text)."""

    hyperparameters: dict[str, str] = attr.field(factory=dict)
    seeds: dict[str, int] = attr.field(factory=dict)
    metrics: dict[str, float] = attr.field(factory=dict)
    stage: str | None = attr.field(default=None)
    durationMs: int | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("MLTrainingRunFacet")


@attr.define
class MLEvaluationMetric:
    name: str
    value: float
    threshold: float | None = attr.field(default=None)
    passed: bool | None = attr.field(default=None)
    ciLow: float | None = attr.field(default=None)  # noqa: N815
    ciHigh: float | None = attr.field(default=None)  # noqa: N815


@attr.define
class MLEvaluation:
    """One Evaluation event: a model version on a dataset or slice, its metrics and the overall result."""

    modelName: str  # noqa: N815
    modelVersion: str  # noqa: N815
    result: str  # PASS or FAIL
    time: str
    eventId: str  # noqa: N815
    metrics: list[MLEvaluationMetric] = attr.field(factory=list)
    tests: list[str] = attr.field(factory=list)
    dataset: str | None = attr.field(default=None)
    slice: str | None = attr.field(default=None)
    evaluationRunId: str | None = attr.field(default=None)  # noqa: N815


@attr.define
class MLEvaluationRunFacet(RunFacet):
    """The evaluations of the models a run registered (or that the run itself performed)."""

    evaluations: list[MLEvaluation]

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("MLEvaluationRunFacet")


@attr.define
class EndpointDeployment:
    """One Deployment event on an endpoint: which version it put in force (or took off) and which it replaced."""

    action: str  # DEPLOY, PROMOTE, ROLLBACK, HOTFIX or RETIRE
    modelName: str  # noqa: N815
    modelVersion: str  # noqa: N815
    time: str
    eventId: str  # noqa: N815
    previousVersion: str | None = attr.field(default=None)  # noqa: N815
    reason: str | None = attr.field(default=None)
    actor: str | None = attr.field(default=None)
    approvedBy: str | None = attr.field(default=None)  # noqa: N815
    approverRole: str | None = attr.field(default=None)  # noqa: N815


@attr.define
class EndpointDeploymentChainJobFacet(JobFacet):
    """Every deployment of a model on one endpoint, oldest first, and the version in force after the last."""

    endpoint: str
    environment: str
    modelName: str  # noqa: N815
    deployments: list[EndpointDeployment]
    currentVersion: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("EndpointDeploymentChainJobFacet")


@attr.define
class StageTransition:
    stage: str
    stageStatus: str  # noqa: N815
    time: str
    eventId: str  # noqa: N815
    stageDescription: str | None = attr.field(default=None)  # noqa: N815
    actor: str | None = attr.field(default=None)


@attr.define
class StageLifecycleDatasetFacet(DatasetFacet):
    """A model version's stage now (the last transition) and every transition that led there, oldest first."""

    stage: str
    stageStatus: str  # noqa: N815
    transitions: list[StageTransition]
    stageDescription: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("StageLifecycleDatasetFacet")


# Facet key -> class, per kind of facet: what the exporter writes, and what parse_run_event rebuilds.
FACET_CLASSES: dict[type[BaseFacet], dict[str, type[BaseFacet]]] = {
    RunFacet: {"provline": ProvlineRunFacet, "parent": ParentRunFacet, "errorMessage": ErrorMessageRunFacet,
               "executionParameters": ExecutionParametersRunFacet, "processing_engine": ProcessingEngineRunFacet,
               "mlTraining": MLTrainingRunFacet, "mlEvaluation": MLEvaluationRunFacet},
    JobFacet: {"sourceCodeLocation": SourceCodeLocationJobFacet, "jobType": JobTypeJobFacet,
               "endpointDeploymentChain": EndpointDeploymentChainJobFacet},
    DatasetFacet: {"version": DatasetVersionDatasetFacet, "schema": SchemaDatasetFacet, "mlModel": MLModelDatasetFacet,
                   "stageLifecycle": StageLifecycleDatasetFacet},
}
# provline's own facet classes (each with a schemas/openlineage/<class>.json).
CUSTOM_FACETS = (ProvlineRunFacet, MLModelDatasetFacet, MLTrainingRunFacet, MLEvaluationRunFacet,
                 EndpointDeploymentChainJobFacet, StageLifecycleDatasetFacet)


def parse_run_event(data: Mapping[str, Any]) -> RunEvent:
    """The client's :class:`RunEvent` for an event's JSON (as parsed), every object built by the client's
    own classes (their validators run: UUID run ids, ISO times, URIs), each facet by the class its key
    names in :data:`FACET_CLASSES`. Raises :class:`OpenLineageModelError` naming the JSON path of a
    field the model has not, a value of the wrong type, an unknown facet key or a ``_schemaURL`` that is
    not its class's."""
    event = _structure(data, RunEvent, "$")
    assert isinstance(event, RunEvent)
    return event


def checked_json(event: RunEvent) -> dict[str, Any]:
    """``event`` as JSON (a dict), after checking that the client's model rebuilds it exactly:
    serialised with the client's Serde, parsed back by :func:`parse_run_event`, serialised again."""
    data = json.loads(Serde.to_json(event))
    again = json.loads(Serde.to_json(parse_run_event(data)))
    if again != data:
        raise OpenLineageModelError(f"the OpenLineage event of job {event.job.name!r} does not survive a round trip "
                                    "through the openlineage-python model; a facet class loses or changes a field")
    return data


def _structure(value: Any, hint: Any, path: str) -> Any:  # noqa: C901 - one case per kind of type hint
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if len(options) < len(args):
                return None
            raise OpenLineageModelError(f"{path}: null where the model wants {hint}")
        errors = []
        for option in options:
            try:
                return _structure(value, option, path)
            except OpenLineageModelError as exc:
                errors.append(str(exc))
        raise OpenLineageModelError("; ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise OpenLineageModelError(f"{path}: {type(value).__name__} where the model wants a list")
        return [_structure(item, args[0], f"{path}[{n}]") for n, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise OpenLineageModelError(f"{path}: {type(value).__name__} where the model wants an object")
        facet_kind = args[1] if isinstance(args[1], type) and issubclass(args[1], BaseFacet) else None
        out = {}
        for key, item in value.items():
            item_hint = args[1]
            if facet_kind is not None:
                item_hint = FACET_CLASSES.get(facet_kind, {}).get(key)
                if item_hint is None:
                    raise OpenLineageModelError(f"{path}.{key}: no {facet_kind.__name__} class is known for this key")
            out[key] = _structure(item, item_hint, f"{path}.{key}")
        return out
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError as exc:
            raise OpenLineageModelError(f"{path}: {value!r} is not a {hint.__name__}") from exc
    if isinstance(hint, type) and attr.has(hint):
        return _structure_attrs(value, hint, path)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (str, bool):
        ok = isinstance(value, hint)
    else:
        raise OpenLineageModelError(f"{path}: the model's type {hint!r} is not one this parser knows")
    if not ok:
        raise OpenLineageModelError(f"{path}: {value!r} is not a {hint.__name__}")
    return value


def _structure_attrs(value: Any, cls: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise OpenLineageModelError(f"{path}: {type(value).__name__} where {cls.__name__} wants an object")
    fields = attr.fields(cls)
    unknown = set(value) - {f.name for f in fields}
    if unknown:
        raise OpenLineageModelError(f"{path}: {cls.__name__} has no field {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    kwargs = {f.alias: _structure(value[f.name], hints[f.name], f"{path}.{f.name}")
              for f in fields if f.init and f.name in value}
    try:
        built = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise OpenLineageModelError(f"{path}: {cls.__name__} refuses it: {exc}") from exc
    if "_schemaURL" in value and value["_schemaURL"] != built._schemaURL:
        raise OpenLineageModelError(f"{path}._schemaURL: {value['_schemaURL']!r} is not {cls.__name__}'s "
                                    f"({built._schemaURL})")
    return built


def run_uuid(run_id: str) -> str:
    """OpenLineage run ids are UUIDs: ``run_id`` itself when it is one, else a UUIDv5 derived from it."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(_RUN_UUID_NAMESPACE, run_id))


def _code_facet(code: dict[str, Any] | None) -> dict[str, Any]:
    if not code or not code.get("repo"):
        return {}
    repo = str(code["repo"])
    url = repo if "://" in repo or repo.startswith("git@") else f"file://{repo}"
    return {"sourceCodeLocation": SourceCodeLocationJobFacet(
        type="git", url=url, repoUrl=url, version=code.get("commit"), branch=code.get("branch"),
        path=code.get("entrypoint"), producer=PRODUCER_URI,
    )}


def _parameters(run: dict[str, Any]) -> list[ExecutionParameter]:
    parameters = [ExecutionParameter(key=name, value=value, description="hyperparameter (JSON)")
                  for name, value in sorted((run.get("hyperparameters") or {}).items())]
    parameters += [ExecutionParameter(key=f"seed.{name}", value=str(value), description="random seed")
                   for name, value in sorted((run.get("seeds") or {}).items())]
    parameters += [ExecutionParameter(key=f"metric.{name}", value=repr(value), description="metric")
                   for name, value in sorted((run.get("metrics") or {}).items())]
    return parameters


def _dataset_facets(digest: str, dataset: dict[str, Any] | None) -> dict[str, Any]:
    facets: dict[str, Any] = {"version": DatasetVersionDatasetFacet(datasetVersion=digest, producer=PRODUCER_URI)}
    if dataset and dataset.get("columns"):
        facets["schema"] = SchemaDatasetFacet(
            fields=[SchemaDatasetFacetFields(name=c["name"], type=c["type"]) for c in dataset["columns"]],
            producer=PRODUCER_URI,
        )
    return facets


def _model_facet(model: Mapping[str, Any]) -> MLModelDatasetFacet:
    flavors = [str(f) for f in model.get("flavors") or []]
    return MLModelDatasetFacet(
        name=str(model["model_name"]), version=str(model["version"]), artifactUri=str(model["artifact_uri"]),
        artifactSha256=str(model["artifact_sha256"]), framework=model.get("framework"), flavors=flavors,
        signature=MLModelSignature(inputs=[str(n) for n in model.get("input_names") or []],
                                   outputs=[str(n) for n in model.get("output_names") or []]),
        registeredTime=_iso(model["event_time"]) if model.get("event_time") is not None else None,
        trainingRunId=model.get("run_id"), producer=PRODUCER_URI,
    )


def _model_dataset_facets(model: Mapping[str, Any]) -> dict[str, Any]:
    return {"version": DatasetVersionDatasetFacet(datasetVersion=str(model["version"]), producer=PRODUCER_URI),
            "mlModel": _model_facet(model)}


def _training_facet(state: Mapping[str, Any]) -> MLTrainingRunFacet | None:
    hyperparameters = {str(k): str(v) for k, v in (state.get("hyperparameters") or {}).items()}
    seeds = {str(k): int(v) for k, v in (state.get("seeds") or {}).items()}
    metrics = {str(k): float(v) for k, v in (state.get("metrics") or {}).items()}
    if not (hyperparameters or seeds or metrics):
        return None
    return MLTrainingRunFacet(hyperparameters=hyperparameters, seeds=seeds, metrics=metrics, stage=state.get("stage"),
                              durationMs=state.get("duration_ms"), producer=PRODUCER_URI)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _evaluation(evaluation: Mapping[str, Any]) -> MLEvaluation:
    metrics = [MLEvaluationMetric(name=str(m["name"]), value=float(m["value"]),
                                  threshold=_float(m.get("threshold")), passed=m.get("passed"),
                                  ciLow=_float(m.get("ci_low")), ciHigh=_float(m.get("ci_high")))
               for m in evaluation.get("metrics") or []]
    return MLEvaluation(
        modelName=str(evaluation["model_name"]), modelVersion=str(evaluation["model_version"]),
        result="PASS" if evaluation.get("passed") else "FAIL", time=_iso(evaluation["event_time"]),
        eventId=str(evaluation.get("event_id", "")), metrics=metrics,
        tests=[str(t) for t in evaluation.get("tests") or []],
        dataset=evaluation.get("dataset"), slice=evaluation.get("slice"), evaluationRunId=evaluation.get("run_id"),
    )


def run_to_openlineage(
    run_states: list[dict[str, Any]], *, datasets: dict[str, dict[str, Any]] | None = None,
    models: list[dict[str, Any]] | None = None, evaluations: list[dict[str, Any]] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> list[dict[str, Any]]:
    """OpenLineage RunEvents (as JSON-able dicts, each checked by :func:`checked_json`) for one run's
    RunEvent states.

    ``datasets`` maps digest -> DatasetVersion (for names and schemas); ``models`` are the
    ModelVersion events of models the run registered; ``evaluations`` the Evaluation events of those
    models (or performed by the run), shown on the COMPLETE event.
    """
    datasets = datasets or {}
    exported = []
    for state in sorted(run_states, key=lambda s: _iso(s["event_time"])):
        run_facets: dict[str, Any] = {"provline": ProvlineRunFacet(
            runId=str(state["run_id"]), eventId=str(state.get("event_id", "")), hash=str(state.get("hash", "")),
            producer=PRODUCER_URI)}
        if state.get("parent_run_id"):
            run_facets["parent"] = ParentRunFacet(
                run=ParentRun(runId=run_uuid(state["parent_run_id"])),
                job=ParentJob(namespace=namespace, name="parent"), producer=PRODUCER_URI,
            )
        if state.get("error"):
            run_facets["errorMessage"] = ErrorMessageRunFacet(
                message=f"{state['error']['type']}: {state['error']['message']}", programmingLanguage="python",
                producer=PRODUCER_URI,
            )
        if parameters := _parameters(state):
            run_facets["executionParameters"] = ExecutionParametersRunFacet(parameters=parameters,
                                                                            producer=PRODUCER_URI)
        if training := _training_facet(state):
            run_facets["mlTraining"] = training
        environment = state.get("environment") or {}
        if environment.get("python"):
            run_facets["processing_engine"] = ProcessingEngineRunFacet(
                version=environment["python"], name="python",
                openlineageAdapterVersion=provline_version(),
                producer=PRODUCER_URI,
            )
        job_facets = {**_code_facet(state.get("code")), "jobType": JobTypeJobFacet(
            processingType="BATCH", integration="PROVLINE", jobType=(state.get("stage") or "RUN").upper(),
            producer=PRODUCER_URI)}
        inputs = [InputDataset(namespace=namespace, name=(datasets.get(d) or {}).get("name", d),
                               facets=_dataset_facets(d, datasets.get(d)))
                  for d in state.get("inputs") or [] if d.startswith("sha256:")]
        outputs = [OutputDataset(namespace=namespace, name=(datasets.get(d) or {}).get("name", d),
                                 facets=_dataset_facets(d, datasets.get(d)))
                   for d in state.get("outputs") or [] if d.startswith("sha256:")]
        if state["state"] == "COMPLETED":
            outputs += [OutputDataset(namespace=f"{namespace}.models", name=m["model_name"],
                                      facets=_model_dataset_facets(m)) for m in models or []]
            if evaluations:
                ordered = sorted(evaluations, key=lambda e: (_iso(e["event_time"]), str(e.get("event_id", ""))))
                run_facets["mlEvaluation"] = MLEvaluationRunFacet(evaluations=[_evaluation(e) for e in ordered],
                                                                  producer=PRODUCER_URI)
        event = RunEvent(
            eventType=_EVENT_TYPES[state["state"]], eventTime=_iso(state["event_time"]),
            run=Run(runId=run_uuid(state["run_id"]), facets=run_facets),
            job=Job(namespace=namespace, name=state["name"], facets=job_facets),
            inputs=inputs, outputs=outputs, producer=PRODUCER_URI,
        )
        exported.append(checked_json(event))
    return exported


# What a Deployment event does to its version's stage (the environment is the stage).
_DEPLOYED_STATUS = {"DEPLOY": "Deployed", "PROMOTE": "Deployed", "HOTFIX": "Deployed", "ROLLBACK": "Deployed",
                    RETIRE: "Retired"}


def _actor(event: Mapping[str, Any]) -> str | None:
    producer = event.get("producer") or {}
    if not producer.get("name"):
        return None
    return f"{producer['name']}@{producer['host']}" if producer.get("host") else str(producer["name"])


def _timeline(deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model's Deployment events in time order, each with the version it replaced (stated or derived)."""
    ordered = sorted(deployments, key=lambda d: (_iso(d["event_time"]), str(d.get("event_id", ""))))
    shaped = [{"environment": d["environment"], "endpoint": d["endpoint"], "action": d["action"],
               "version": str(d["model_version"]), "previous_version": d.get("previous_version"), "event": d}
              for d in ordered]
    return with_previous_versions(shaped)


def _approval(decisions: list[dict[str, Any]], environment: str, before: str) -> Mapping[str, Any] | None:
    """The newest approval into ``environment`` (a transition ending ``->environment``) recorded before ``before``."""
    approvals = [d for d in decisions if d.get("outcome") == "APPROVED" and _iso(d["event_time"]) <= before
                 and str(d.get("transition", "")).split("->")[-1].strip() == environment]
    return max(approvals, key=lambda d: _iso(d["event_time"])) if approvals else None


def stage_lifecycle(model: Mapping[str, Any], decisions: list[dict[str, Any]],
                    deployments: list[dict[str, Any]]) -> StageLifecycleDatasetFacet:
    """A model version's stage transitions (pure): registered; each approval or rejection into a stage;
    each deployment of it (the environment is the stage); each deployment that replaced it, rolled it
    back or retired it. ``decisions`` are its Decision events, ``deployments`` all its model's."""
    version = str(model["version"])
    transitions = [StageTransition(stage="registered", stageStatus="Registered", time=_iso(model["event_time"]),
                                   eventId=str(model.get("event_id", "")), actor=_actor(model),
                                   stageDescription=f"artifact {model['artifact_uri']}")]
    for decision in decisions:
        stage = str(decision.get("transition", "")).split("->")[-1].strip() or "unknown"
        outcome = "Approved" if decision.get("outcome") == "APPROVED" else "Rejected"
        actor = f"{decision['actor']} ({decision['role']})" if decision.get("role") else decision.get("actor")
        transitions.append(StageTransition(stage=stage, stageStatus=outcome, time=_iso(decision["event_time"]),
                                           eventId=str(decision.get("event_id", "")), actor=actor,
                                           stageDescription=decision.get("rationale")))
    for entry in _timeline(deployments):
        event = entry["event"]
        where = f"on {entry['endpoint']}"
        if entry["version"] == version:
            status = _DEPLOYED_STATUS.get(entry["action"], "Deployed")
            description = f"{entry['action']} {where}" + (f": {event['reason']}" if event.get("reason") else "")
        elif entry["previous_version"] == version:
            status = "RolledBack" if entry["action"] == "ROLLBACK" else "Replaced"
            description = f"{entry['action']} of version {entry['version']} {where}" + (
                f": {event['reason']}" if event.get("reason") else "")
        else:
            continue
        transitions.append(StageTransition(stage=str(entry["environment"]), stageStatus=status,
                                           time=_iso(event["event_time"]), eventId=str(event.get("event_id", "")),
                                           actor=_actor(event), stageDescription=description))
    transitions.sort(key=lambda t: (t.time, t.eventId))
    last = transitions[-1]
    return StageLifecycleDatasetFacet(stage=last.stage, stageStatus=last.stageStatus,
                                      stageDescription=last.stageDescription, transitions=transitions,
                                      producer=PRODUCER_URI)


def deployments_to_openlineage(
    model: dict[str, Any], *, deployments: list[dict[str, Any]], decisions: list[dict[str, Any]] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> list[dict[str, Any]]:
    """OpenLineage RunEvents (JSON-able dicts, checked) for a model version's deployments: one COMPLETE
    event per endpoint (environment + endpoint) the version was put on or taken off, at that endpoint's
    newest deployment. ``model`` is the version's ModelVersion event, ``deployments`` every Deployment
    event of its model (any version: the chain shows what it replaced and what replaced it),
    ``decisions`` the version's Decision events."""
    decisions = decisions or []
    version = str(model["version"])
    timeline = _timeline(deployments)
    places = sorted({(e["environment"], e["endpoint"]) for e in timeline
                     if version in (e["version"], e["previous_version"])})
    lifecycle = stage_lifecycle(model, decisions, deployments)
    exported = []
    for environment, endpoint in places:
        at_place = [e for e in timeline if (e["environment"], e["endpoint"]) == (environment, endpoint)]
        chain, in_force = [], None
        for entry in at_place:
            event = entry["event"]
            approval = _approval(decisions, environment, _iso(event["event_time"])) if entry["version"] == version \
                else None
            chain.append(EndpointDeployment(
                action=entry["action"], modelName=str(event["model_name"]), modelVersion=entry["version"],
                time=_iso(event["event_time"]), eventId=str(event.get("event_id", "")),
                previousVersion=entry["previous_version"], reason=event.get("reason"), actor=_actor(event),
                approvedBy=approval.get("actor") if approval else None,
                approverRole=approval.get("role") if approval else None,
            ))
            if entry["action"] == RETIRE:
                in_force = None if in_force == entry["version"] else in_force
            else:
                in_force = entry["version"]
        last = at_place[-1]
        place_id = f"deployment:{model['model_name']}@{version}:{environment}:{endpoint}"
        run = Run(runId=run_uuid(f"{place_id}:{last['event'].get('event_id', '')}"), facets={
            "provline": ProvlineRunFacet(runId=place_id, eventId=str(last["event"].get("event_id", "")),
                                         hash=str(last["event"].get("hash", "")), producer=PRODUCER_URI)})
        job = Job(namespace=namespace, name=f"endpoint:{environment}:{endpoint}", facets={
            "endpointDeploymentChain": EndpointDeploymentChainJobFacet(
                endpoint=endpoint, environment=environment, modelName=str(model["model_name"]), deployments=chain,
                currentVersion=in_force, producer=PRODUCER_URI),
            "jobType": JobTypeJobFacet(processingType="STREAMING", integration="PROVLINE", jobType="ENDPOINT",
                                       producer=PRODUCER_URI)})
        model_input = InputDataset(namespace=f"{namespace}.models", name=str(model["model_name"]),
                                   facets={**_model_dataset_facets(model), "stageLifecycle": lifecycle})
        exported.append(checked_json(RunEvent(
            eventType=OpenLineageEventType.COMPLETE, eventTime=_iso(last["event"]["event_time"]), run=run, job=job,
            inputs=[model_input], outputs=[], producer=PRODUCER_URI)))
    return exported
