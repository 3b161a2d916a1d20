"""Export a recorded run as OpenLineage RunEvents, for Marquez or any OpenLineage consumer.

Pure conversion from provline events (as decoded, or as the JSON payloads the sink stores) to
OpenLineage objects of the official client (``openlineage-python``), serialised with its Serde:

    RunEvent STARTED/COMPLETED/FAILED   -> eventType START / COMPLETE / FAIL
    run id, parent run, error           -> run.runId (a UUID; other ids map to a stable UUIDv5),
                                           parent and errorMessage facets
    code (repo, commit, entrypoint)     -> job sourceCodeLocation facet
    hyperparameters, seeds, metrics     -> run executionParameters facet (name = value)
    environment                         -> run processing_engine facet
    provline run id, event id, hash     -> run ``provline`` facet (ProvlineRunFacet)
    inputs / outputs (dataset digests)  -> inputs / outputs with schema and version facets
    models registered by the run        -> outputs in namespace ``<namespace>.models``
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import attr
from openlineage.client.generated.base import EventType as OpenLineageEventType
from openlineage.client.generated.base import InputDataset, Job, OutputDataset, Run, RunEvent, RunFacet
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

PRODUCER_URI = "https://github.com/provline/provline"
PROVLINE_FACET_SCHEMA = f"{PRODUCER_URI}/blob/main/schemas/openlineage/ProvlineRunFacet.json"
DEFAULT_NAMESPACE = "provline"
_RUN_UUID_NAMESPACE = uuid.UUID("6f1c0a52-2a34-4c6e-9a51-0d6c6a7f3e10")
_EVENT_TYPES = {"STARTED": OpenLineageEventType.START, "COMPLETED": OpenLineageEventType.COMPLETE,
                "FAILED": OpenLineageEventType.FAIL}


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, int):  # microseconds since the epoch
        return datetime.fromtimestamp(value / 1e6, UTC).isoformat()
    return str(value)


@attr.define
class ProvlineRunFacet(RunFacet):
    """Where an exported run state comes from in provline: its own run id, and the event's id and hash."""

    runId: str  # noqa: N815 - OpenLineage facets are camelCase
    eventId: str  # noqa: N815
    hash: str

    @staticmethod
    def _get_schema() -> str:
        return PROVLINE_FACET_SCHEMA


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


def run_to_openlineage(
    run_states: list[dict[str, Any]], *, datasets: dict[str, dict[str, Any]] | None = None,
    models: list[dict[str, Any]] | None = None, namespace: str = DEFAULT_NAMESPACE,
) -> list[dict[str, Any]]:
    """OpenLineage RunEvents (as JSON-able dicts) for one run's RunEvent states.

    ``datasets`` maps digest -> DatasetVersion (for names and schemas); ``models`` are the
    ModelVersion events of models the run registered.
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
            outputs += [OutputDataset(namespace=f"{namespace}.models", name=m["model_name"], facets={
                "version": DatasetVersionDatasetFacet(datasetVersion=m["version"], producer=PRODUCER_URI)})
                for m in models or []]
        event = RunEvent(
            eventType=_EVENT_TYPES[state["state"]], eventTime=_iso(state["event_time"]),
            run=Run(runId=run_uuid(state["run_id"]), facets=run_facets),
            job=Job(namespace=namespace, name=state["name"], facets=job_facets),
            inputs=inputs, outputs=outputs, producer=PRODUCER_URI,
        )
        exported.append(json.loads(Serde.to_json(event)))
    return exported
