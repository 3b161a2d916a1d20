"""Describe a model artifact as the fields of a ModelVersion event: digest, files, signature, MLflow facts.

A model is a file or a directory (an MLflow model, a TensorFlow SavedModel, a Hugging Face
snapshot). A file is digested as its SHA-256 (hex); a directory like a dataset, as the Merkle root
of its files (``sha256:<hex>``, :mod:`provline.producers.digest`). An MLflow model directory's
``MLmodel`` file gives the flavors, the signature's input and output names, and MLflow's run id,
model UUID and creation time.

Input and output names are the names a served model's features and outputs carry: the processors
use them to name the positional columns a model server reports (``input-0[3]``, ``predict``).

Pure functions over files; they block while the artifact is read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from provline.producers.digest import ProgressCallback, manifest, merkle_root
from provline.producers.values import plain

log = logging.getLogger("provline.models")

MLMODEL_FILE = "MLmodel"
PYFUNC_FLAVOR = "python_function"  # every MLflow model has it; the framework is another flavor
MLFLOW_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class MLModel:
    """What an MLflow ``MLmodel`` file says about a model."""

    flavors: tuple[str, ...] = ()
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    signature: dict[str, Any] | None = None  # inputs and outputs as MLflow writes them, parsed
    run_id: str | None = None
    model_uuid: str | None = None
    created: datetime | None = None

    @property
    def framework(self) -> str | None:
        """The first flavor that is not ``python_function`` (``sklearn``, ``pytorch``...)."""
        return next((flavor for flavor in self.flavors if flavor != PYFUNC_FLAVOR), None)


def spec_names(specs: Any) -> tuple[str, ...]:
    """The names of an MLflow signature's column or tensor specs, in order; () unless every spec is named.

    ``specs`` is the list MLflow writes as JSON text, e.g. ``[{"name": "sepal_length", "type": "double"}]``
    or ``[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]`` (unnamed).
    """
    if not isinstance(specs, list) or not specs:
        return ()
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in specs]
    if not all(isinstance(name, str) and name for name in names):
        return ()  # unnamed (positional) specs: the server's positional names stay
    return tuple(str(name) for name in names)


def _signature_part(signature: Mapping[str, Any], part: str, source: Path) -> Any:
    text = signature.get(part)
    if text is None:
        return None
    try:
        return json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        log.warning("%s: signature %s is not JSON (%s); recorded without %s names", source, part, exc, part)
        return None


def _created_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    for time_format in MLFLOW_TIME_FORMATS:
        try:
            return datetime.strptime(str(value), time_format).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def read_mlmodel(path: Path) -> MLModel | None:
    """The facts of an MLflow ``MLmodel`` file; None (with a warning) when it is not readable YAML.

    A broken MLmodel does not fail the registration: the artifact is still digested and recorded.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        log.warning("%s is not a readable MLmodel file (%s); the model is recorded without its MLflow facts",
                    path, exc)
        return None
    if not isinstance(document, dict):
        log.warning("%s is not an MLmodel mapping; the model is recorded without its MLflow facts", path)
        return None
    flavors = document.get("flavors")
    raw_signature = document.get("signature")
    signature = raw_signature if isinstance(raw_signature, dict) else {}
    inputs = _signature_part(signature, "inputs", path)
    outputs = _signature_part(signature, "outputs", path)
    created = document.get("utc_time_created")
    return MLModel(
        flavors=tuple(str(f) for f in flavors) if isinstance(flavors, dict) else (),
        input_names=spec_names(inputs), output_names=spec_names(outputs),
        signature={"inputs": inputs, "outputs": outputs} if inputs is not None or outputs is not None else None,
        run_id=str(document["run_id"]) if document.get("run_id") else None,
        model_uuid=str(document["model_uuid"]) if document.get("model_uuid") else None,
        created=_created_time(created) if created is not None else None,
    )


def describe_artifact(path: Path, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """``artifact_sha256`` and ``artifact_files`` of a model file or directory, and the MLflow fields of
    an MLflow model directory (``flavors``, ``mlflow_*``, ``input_names``, ``output_names``, ``io_signature``).
    """
    if not path.exists():
        raise FileNotFoundError(f"model artifact {path} does not exist; pass the file or directory the job saved")
    files = manifest(path, progress=progress)
    if path.is_dir() and not files:
        raise ValueError(f"model directory {path} holds no files; register the model after it is saved")
    fields: dict[str, Any] = {
        "artifact_sha256": str(files[0]["sha256"]) if path.is_file() else merkle_root(files),
        "artifact_files": files,
    }
    mlmodel = read_mlmodel(path / MLMODEL_FILE) if (path / MLMODEL_FILE).is_file() else None
    if mlmodel is not None:
        fields.update(
            flavors=list(mlmodel.flavors), mlflow_run_id=mlmodel.run_id, mlflow_model_uuid=mlmodel.model_uuid,
            mlflow_created_time=mlmodel.created, input_names=list(mlmodel.input_names),
            output_names=list(mlmodel.output_names), framework=mlmodel.framework,
            io_signature=json.dumps(mlmodel.signature, sort_keys=True) if mlmodel.signature is not None else None,
        )
    return fields


def signature_names(signature: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """(input names, output names) of a ``signature={"inputs": [...], "outputs": [...]}`` argument."""
    unknown = set(signature) - {"inputs", "outputs"}
    if unknown:
        raise ValueError(f"signature has keys {sorted(unknown)}; it takes 'inputs' and 'outputs', lists of names")
    inputs, outputs = plain(list(signature.get("inputs") or [])), plain(list(signature.get("outputs") or []))
    for part, names in (("inputs", inputs), ("outputs", outputs)):
        if not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
            raise ValueError(f"signature {part} must be distinct non-empty names; got {names!r}")
    return inputs, outputs


def example_input_names(example: Any) -> list[str]:
    """The input names of an ``input_example``: the column names of a pandas DataFrame."""
    columns = getattr(example, "columns", None)
    if columns is None or not hasattr(example, "dtypes"):
        raise TypeError(
            f"input_example is a {type(example).__name__}; input names are read from a pandas DataFrame's "
            "columns: pass one, or signature={'inputs': [...]}"
        )
    return [str(name) for name in columns]


def prediction_table(predictions: Any, output_names: Sequence[str], *, model: str) -> pa.Table:
    """The model's predictions as a table whose columns carry the names the served outputs have.

    ``predictions`` is a pandas DataFrame, a named Series, a pyarrow Table, a mapping of output
    name to values, or an array: one column (1-D) named by the model's one output name, or several
    (2-D) named by its output names, or ``name[0]``, ``name[1]``... under a single output name,
    as a model server's vector output is named.
    """
    if isinstance(predictions, pa.Table):
        return predictions
    module = type(predictions).__module__.split(".", 1)[0]
    if module == "pandas" and hasattr(predictions, "columns"):
        return pa.Table.from_pandas(predictions, preserve_index=False)
    if module == "pandas" and getattr(predictions, "name", None) is not None:
        return pa.table({str(predictions.name): predictions.to_numpy()})
    if isinstance(predictions, Mapping):
        return pa.table({str(name): np.asarray(values) for name, values in predictions.items()})
    values = np.asarray(predictions.to_numpy() if module == "pandas" else predictions)
    names = list(output_names)
    if values.ndim == 1 and len(names) == 1:
        return pa.table({names[0]: values})
    if values.ndim == 2 and len(names) == values.shape[1]:
        return pa.table({name: values[:, i] for i, name in enumerate(names)})
    if values.ndim == 2 and len(names) == 1:
        return pa.table({f"{names[0]}[{i}]": values[:, i] for i in range(values.shape[1])})
    raise ValueError(
        f"predictions of {model} ({values.ndim}-D, {values.shape[-1] if values.ndim else 1} columns) cannot be "
        f"named from the model's output names {names}: pass {{output name: values}} with the name the model server "
        "gives the output (e.g. 'predict'), a named pandas Series or DataFrame, or signature={'outputs': [...]}"
    )
