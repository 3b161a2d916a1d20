"""The API ML jobs call to record their lineage.

    lineage = Lineage(producer_name="train-churn")        # settings from PROVLINE_* variables
    with lineage.run("train", stage="training", params={"C": 1.0}, seed=7) as run:
        digest = run.use_dataset("data/train.csv", name="churn-train")
        ...
        run.register_model("model.pkl", name="churn", version="3")
    lineage.deploy("churn", "3", endpoint="/predict", environment="production")
    lineage.feedback(prediction_id="0192...", label="churned", source="crm")   # ground truth, later
    lineage.close()

Every call emits its event at once, without waiting on the broker; ``close`` flushes. Every call
takes NumPy and pandas values where plain ones are meant (``np.float64`` metrics, ``np.bool_``,
``pd.Timestamp``, arrays and Series for lists; see :mod:`provline.producers.values`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from provline.config import load_settings
from provline.producers.capture import code_reference, code_version, environment, seed_everything
from provline.producers.datasets import describe, digest_progress
from provline.producers.emitter import Emitter, build_emitter
from provline.producers.feedback import DEFAULT_SOURCE, feedback_fields
from provline.producers.models import describe_artifact, example_input_names, prediction_table, signature_names
from provline.producers.settings import JobSettings
from provline.producers.values import optional_number, plain_arguments
from provline.schemas.events import model_key


def _json_values(params: dict[str, Any] | None) -> dict[str, str]:
    return {name: json.dumps(value, sort_keys=True, default=str) for name, value in (params or {}).items()}


Metric = float | tuple[float, float, float]  # value, or (value, ci_low, ci_high)
OWNER_VARIABLE = "PROVLINE_RUN__OWNER"


class CommandFailed(Exception):
    """Recorded as the error of a wrapped command that exited with a non-zero code."""


class Run:
    """One pipeline run; created by :meth:`Lineage.run`. Not thread-safe."""

    def __init__(
        self, lineage: Lineage, name: str, *, stage: str | None, params: dict[str, Any] | None,
        seed: int | None, parent_run_id: str | None, argv: list[str] | None = None,
    ) -> None:
        self.lineage = lineage
        self.run_id = str(uuid.uuid4())
        self.name = name
        self.stage = stage
        self.parent_run_id = parent_run_id
        self.hyperparameters = _json_values(params)
        seed_value = optional_number(seed)  # NaN or pd.NA: no seed
        self.seeds: dict[str, int] = {"seed": int(seed_value)} if seed_value is not None else {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.feature_sets: list[str] = []
        self.metrics: dict[str, float] = {}
        self.exit_code: int | None = None  # set by command wrappers; non-zero makes the run FAILED
        self.code = code_version(argv=argv)
        self.environment = environment(lineage.settings.run.capture_env)
        if lineage.settings.run.owner:  # recorded with the run's variables, as the variable that set it
            self.environment["env_vars"][OWNER_VARIABLE] = lineage.settings.run.owner
        self._started = time.monotonic()

    def _emit_state(self, state: str, *, error: BaseException | None = None) -> dict[str, Any]:
        finished = state != "STARTED"
        return self.lineage.emitter.emit("RunEvent", {
            "run_id": self.run_id, "name": self.name, "state": state, "stage": self.stage,
            "parent_run_id": self.parent_run_id, "inputs": self.inputs, "outputs": self.outputs,
            "code": self.code, "environment": self.environment,
            "hyperparameters": self.hyperparameters, "seeds": self.seeds, "metrics": self.metrics,
            "error": {"type": type(error).__name__, "message": str(error)} if error else None,
            "exit_code": self.exit_code,
            "duration_ms": int((time.monotonic() - self._started) * 1000) if finished else None,
        })

    @plain_arguments()
    def seed_everything(self, seed: int) -> list[str]:
        """Seed random, NumPy and PyTorch (where installed) and record the seed."""
        self.seeds["seed"] = seed
        return seed_everything(seed)

    @plain_arguments("data")
    def use_dataset(
        self, data: str | Path | Any, *, name: str, license: str | None = None, consent: str | None = None,
        pii: list[str] | None = None, owner: str | None = None, parents: list[str] | None = None,
        quality_checks: list[dict[str, Any]] | None = None, collection_start: datetime | None = None,
        collection_end: datetime | None = None,
    ) -> str:
        """Record a dataset this run reads: a file, a directory, a pandas DataFrame or a pyarrow
        Table. Emits DatasetVersion with digest, schema, row count and column profiles; returns
        the digest. Blocks while the data is read (a progress bar shows on large files).
        ``collection_start``/``collection_end`` bound when the data was collected (naive means UTC)."""
        details = _dataset_details(license, consent, pii, owner, parents, quality_checks,
                                   collection_start, collection_end)
        digest = self.lineage._dataset(data, name=name, details=details)
        self.inputs.append(digest)
        return digest

    @plain_arguments("data")
    def produce_dataset(
        self, data: str | Path | Any, *, name: str, license: str | None = None, consent: str | None = None,
        pii: list[str] | None = None, owner: str | None = None, parents: list[str] | None = None,
        quality_checks: list[dict[str, Any]] | None = None, collection_start: datetime | None = None,
        collection_end: datetime | None = None,
    ) -> str:
        """Record a dataset this run writes (see :meth:`use_dataset`); returns its digest."""
        details = _dataset_details(license, consent, pii, owner, parents or list(self.inputs), quality_checks,
                                   collection_start, collection_end)
        digest = self.lineage._dataset(data, name=name, details={**details, "run_id": self.run_id})
        self.outputs.append(digest)
        return digest

    @plain_arguments()
    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name] = float(value)

    @plain_arguments()
    def log_feature_set(
        self, name: str, features: list[dict[str, Any]], *, input_datasets: list[str] | None = None,
    ) -> str:
        """Record a feature set: each feature is ``{"name", "dtype", "code", "parameters"}`` where
        ``code`` is the transformation function (its repo, commit, path and symbol are captured)
        or a mapping with those keys. Returns the feature set digest."""
        records = [{
            "name": feature["name"], "dtype": str(feature.get("dtype", "unknown")),
            "code": code_reference(feature["code"]) if feature.get("code") is not None else
            {"repo": None, "commit": None, "path": None, "symbol": None},
            "parameters": _json_values(feature.get("parameters")),
        } for feature in features]
        datasets = list(input_datasets if input_datasets is not None else self.inputs)
        digest = "sha256:" + hashlib.sha256(
            json.dumps({"name": name, "features": records, "inputs": datasets}, sort_keys=True).encode()
        ).hexdigest()
        self.lineage.emitter.emit("FeatureSetVersion", {
            "name": name, "digest": digest, "features": records, "input_datasets": datasets, "run_id": self.run_id,
        })
        self.feature_sets.append(digest)
        return digest

    @plain_arguments("input_example", "predictions")
    def register_model(
        self, artifact_path: str | Path, *, name: str, version: str, framework: str | None = None,
        artifact_uri: str | None = None, io_signature: dict[str, Any] | None = None,
        signature: Mapping[str, Sequence[str]] | None = None, input_example: Any = None, predictions: Any = None,
        served_versions: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Record a model artifact trained by this run, with the datasets and feature sets it used.

        ``artifact_path`` is a file or a directory (digested like a dataset: the Merkle root of its
        files); an MLflow model directory's ``MLmodel`` gives flavors, signature and MLflow ids.
        Input and output names come from ``signature={"inputs": [...], "outputs": [...]}``, else
        the MLmodel signature, else (inputs only) the columns of a DataFrame ``input_example``.
        ``predictions`` (the model's own predictions on its evaluation data, see
        :func:`provline.producers.models.prediction_table`) are profiled as a DatasetVersion, the
        baseline the processors measure output drift against. ``served_versions`` are the version
        strings the model server reports for this version, e.g. ``["v1"]``. Blocks while the
        artifact is read.
        """
        path = Path(artifact_path)
        with digest_progress(path, f"model {name}@{version}") as progress:
            described = describe_artifact(path, progress=progress)
        inputs, outputs = list(described.pop("input_names", [])), list(described.pop("output_names", []))
        if signature is not None:
            inputs, outputs = signature_names(signature)
        elif input_example is not None and not inputs:
            inputs = example_input_names(input_example)
        mlflow_framework, mlflow_signature = described.pop("framework", None), described.pop("io_signature", None)
        predictions_dataset = (
            self._predictions(predictions, outputs, name=name, version=version, parents=[])
            if predictions is not None else None
        )
        event = self.lineage.emitter.emit("ModelVersion", {
            **described,
            "model_name": name, "version": version,
            "artifact_uri": artifact_uri or path.resolve().as_uri(),
            "framework": framework or mlflow_framework, "run_id": self.run_id,
            "datasets": [d for d in self.inputs if d.startswith("sha256:")],
            "feature_sets": list(self.feature_sets),
            "io_signature": json.dumps(io_signature, sort_keys=True) if io_signature is not None else mlflow_signature,
            "input_names": inputs, "output_names": outputs, "served_versions": list(served_versions),
            "predictions_dataset": predictions_dataset,
        })
        self.lineage._output_names[model_key(name, version)] = tuple(outputs)
        self.outputs.append(model_key(name, version))
        return event

    def _predictions(self, predictions: Any, output_names: Sequence[str], *, name: str, version: str,
                     parents: list[str]) -> str:
        """Record a model's predictions as a dataset this run produced; returns its digest."""
        digest = self.lineage._predictions(predictions, output_names, name=name, version=version, parents=parents,
                                           run_id=self.run_id)
        self.outputs.append(digest)
        return digest


def _dataset_details(
    license: str | None, consent: str | None, pii: list[str] | None, owner: str | None,
    parents: list[str] | None, quality_checks: list[dict[str, Any]] | None,
    collection_start: datetime | None = None, collection_end: datetime | None = None,
) -> dict[str, Any]:
    return {
        "license": license, "consent": consent, "pii_tags": list(pii or []), "owner": owner,
        "parents": list(parents or []), "collection_start": collection_start, "collection_end": collection_end,
        "quality_checks": [{"name": c["name"], "passed": bool(c["passed"]), "detail": c.get("detail")}
                           for c in quality_checks or []],
    }


class Lineage:
    """Entry point of the producers library; thread-safe through its emitter."""

    def __init__(
        self, emitter: Emitter | None = None, *, settings: JobSettings | None = None,
        producer_name: str = "provline-job",
    ) -> None:
        """Settings from ``PROVLINE_*`` variables unless given; ConfigurationError when they cannot work."""
        self.settings = settings or load_settings(JobSettings)
        self.emitter = emitter or build_emitter(self.settings, producer_name=producer_name)
        self._active: list[Run] = []
        self._output_names: dict[str, tuple[str, ...]] = {}  # of the models registered here, for evaluate

    def _dataset(self, data: str | Path | Any, *, name: str, details: dict[str, Any]) -> str:
        with digest_progress(data, name) as progress:
            fields = describe(data, name=name, progress=progress)
        self.emitter.emit("DatasetVersion", {"name": name, **fields, **details})
        return str(fields["digest"])

    def _predictions(self, predictions: Any, output_names: Sequence[str], *, name: str, version: str,
                     parents: list[str], run_id: str | None) -> str:
        """Profile a model's predictions as a DatasetVersion named ``<name>@<version> predictions``."""
        table = prediction_table(predictions, output_names, model=model_key(name, version))
        details = {**_dataset_details(None, None, None, None, parents, None), "run_id": run_id}
        return self._dataset(table, name=f"{model_key(name, version)} predictions", details=details)

    @contextmanager
    @plain_arguments()
    def run(
        self, name: str, *, stage: str | None = None, params: dict[str, Any] | None = None,
        seed: int | None = None, argv: list[str] | None = None,
    ) -> Iterator[Run]:
        """Emit RunEvent STARTED now and COMPLETED or FAILED at exit; exceptions are re-raised.

        ``argv`` is the command the run stands for (default: this process's ``sys.argv``).
        """
        parent = self._active[-1].run_id if self._active else None
        run = Run(self, name, stage=stage, params=params, seed=seed, parent_run_id=parent, argv=argv)
        run._emit_state("STARTED")
        self._active.append(run)
        try:
            yield run
        except BaseException as error:
            run._emit_state("FAILED", error=error)
            raise
        else:
            if run.exit_code:
                run._emit_state("FAILED", error=CommandFailed(f"command exited with code {run.exit_code}"))
            else:
                run._emit_state("COMPLETED")
        finally:
            self._active.pop()

    @plain_arguments("predictions")
    def evaluate(
        self, model_name: str, version: str, *, metrics: dict[str, Metric],
        minimums: dict[str, float] | None = None, maximums: dict[str, float] | None = None,
        dataset: str | None = None, slice: str | None = None, tests: list[str] | None = None,
        predictions: Any = None,
    ) -> dict[str, Any]:
        """Record an evaluation. A metric passes when it is at least its minimum (or at most its
        maximum); the evaluation passes when every metric with a threshold passes.

        ``predictions`` are the model's predictions on the evaluation data (``dataset``): they are
        profiled as a DatasetVersion, the baseline the processors measure output drift against
        (see :meth:`Run.register_model` for their forms; an unnamed array takes the output names
        of a model registered through this Lineage)."""
        rows = [evaluate_metric(name, value, (minimums or {}).get(name), (maximums or {}).get(name))
                for name, value in metrics.items()]
        run = self._active[-1] if self._active else None
        predictions_dataset = None
        if predictions is not None:
            output_names = self._output_names.get(model_key(model_name, version), ())
            parents = [dataset] if dataset else []
            predictions_dataset = (
                run._predictions(predictions, output_names, name=model_name, version=version, parents=parents)
                if run is not None else
                self._predictions(predictions, output_names, name=model_name, version=version, parents=parents,
                                  run_id=None)
            )
        return self.emitter.emit("Evaluation", {
            "model_name": model_name, "model_version": version, "dataset": dataset, "slice": slice,
            "metrics": rows, "passed": all(row["passed"] is not False for row in rows),
            "tests": list(tests or []), "run_id": run.run_id if run is not None else None,
            "predictions_dataset": predictions_dataset,
        })

    @plain_arguments()
    def decide(
        self, subject: str, *, transition: str, approved: bool, actor: str, role: str,
        rationale: str | None = None, alternatives: list[str] | None = None, risk_refs: list[str] | None = None,
    ) -> dict[str, Any]:
        """Record an approval or rejection of ``subject`` (e.g. ``model:churn@3``) moving ``transition``."""
        return self.emitter.emit("Decision", {
            "subject": subject, "transition": transition, "outcome": "APPROVED" if approved else "REJECTED",
            "actor": actor, "role": role, "rationale": rationale, "alternatives": list(alternatives or []),
            "risk_refs": list(risk_refs or []),
        })

    @plain_arguments()
    def deploy(
        self, model_name: str, version: str, *, endpoint: str, environment: str = "production",
        action: str = "DEPLOY", reason: str | None = None, previous_version: str | None = None,
        served_versions: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Record that ``model_name@version`` now serves ``endpoint`` (or was rolled back, retired...).

        ``served_versions`` are the version strings the model server reports for it (e.g. ``["v1"]``
        from MLServer for a registered ``"1"``), so traces naming them resolve to this version."""
        return self.emitter.emit("Deployment", {
            "model_name": model_name, "model_version": version, "environment": environment,
            "endpoint": endpoint, "action": action.upper(), "reason": reason, "previous_version": previous_version,
            "served_versions": list(served_versions),
        })

    @plain_arguments()
    def feedback(
        self, *, prediction_id: str | None = None, client_request_id: str | None = None, label: str | None = None,
        outcome: float | None = None, source: str = DEFAULT_SOURCE, observed_time: datetime | None = None,
    ) -> dict[str, Any]:
        """Record the ground truth of one prediction: a Feedback event; returns it. Never waits on the broker.

        Name the prediction by exactly one of ``prediction_id`` (the sidecar's ``X-Prediction-ID``)
        and ``client_request_id`` (the id the client sent: a KServe V2 request ``id``, ``x-request-id``);
        give ``label`` and/or ``outcome``; ``source`` says where the truth came from; ``observed_time``
        (naive means UTC) defaults to now. A Feedback by prediction id is keyed by it and joins onto
        the trace; one by client request id is resolved to prediction ids by ``provline serve``
        (:mod:`provline.sink.feedback`), which publishes a Feedback per prediction it names. Raises
        :class:`~provline.producers.feedback.InvalidFeedbackError` (a ValueError) naming what is wrong.
        """
        return self.emitter.emit("Feedback", feedback_fields(
            prediction_id=prediction_id, client_request_id=client_request_id, label=label, outcome=outcome,
            source=source, observed_time=observed_time,
        ))

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what was recorded, waiting at most ``timeout`` seconds (default: the configured
        ``PROVLINE_EMITTER__CLOSE_TIMEOUT_S``); True when everything was delivered."""
        return self.emitter.close(timeout)

    def __enter__(self) -> Lineage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_metric(name: str, value: Metric, minimum: float | None, maximum: float | None) -> dict[str, Any]:
    """One Evaluation metric row; ``passed`` is None when the metric has no threshold.

    A missing (None or NaN) confidence bound or threshold counts as not given.
    """
    point, low, high = (value, None, None) if isinstance(value, int | float) else value
    low, high = optional_number(low), optional_number(high)
    minimum, maximum = optional_number(minimum), optional_number(maximum)
    passed = None
    if minimum is not None:
        passed = point >= minimum
    if maximum is not None:
        passed = (passed is not False) and point <= maximum
    return {"name": name, "value": float(point), "ci_low": low, "ci_high": high,
            "threshold": minimum if minimum is not None else maximum, "passed": passed}
