"""Which MLflow model the upstream serves, from the model directory ``mlflow models serve`` was started with.

MLflow's scoring server names no model or version in its replies (``/invocations`` answers
``{"predictions": [...]}``), but the model directory it loads holds an ``MLmodel`` file whose
``model_uuid`` is unique to that saved model, and which a registered version's ModelVersion event
carries (``mlflow_model_uuid``: recorded by ``provline mlflow import`` and by ``register_model``
of an MLflow model directory). Given the directory (``PROVLINE_SIDECAR__MLFLOW_MODEL``), the
sidecar records that uuid on every exchange; the processors resolve it to the registered version
(:meth:`provline.stream_processors.lineage.LineageIndex.mlflow_model`), whenever its ModelVersion
arrives, so a version imported after serving began still completes the traces served before.

The uuid, not the run id: several registered versions may come from one run (models logged
under several artifact paths, or retrained in one parent run), each with its own uuid.

Read once, at start-up; blocks on the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provline.producers.models import MLMODEL_FILE, read_mlmodel
from provline.sidecar.errors import StartupError


@dataclass(frozen=True)
class MlflowModel:
    """The MLflow model the upstream serves: its MLmodel's ``model_uuid`` and ``run_id`` (None when unnamed)."""

    model_uuid: str
    run_id: str | None = None


def read_mlflow_model(path: Path) -> MlflowModel:
    """The model of an MLflow model directory (or its MLmodel file); StartupError naming the fix when
    there is none, or it names no ``model_uuid`` (a model saved by MLflow before 1.26)."""
    mlmodel = path / MLMODEL_FILE if path.is_dir() else path
    setting = "PROVLINE_SIDECAR__MLFLOW_MODEL"
    if not mlmodel.is_file():
        raise StartupError(
            f"{setting}={path}: no {MLMODEL_FILE} file there; name the MLflow model directory "
            "`mlflow models serve -m` loads (the one holding MLmodel), or unset it"
        )
    facts = read_mlmodel(mlmodel)
    if facts is None:
        raise StartupError(f"{setting}={path}: {mlmodel} is not a readable MLmodel file (YAML mapping)")
    if not facts.model_uuid:
        raise StartupError(
            f"{setting}={path}: {mlmodel} names no model_uuid (MLflow writes one since 1.26); save the model "
            "again with a current MLflow, or name its version with PROVLINE_SIDECAR__MODEL_VERSION instead"
        )
    return MlflowModel(model_uuid=facts.model_uuid, run_id=facts.run_id)
