"""An MLflow model directory written by hand, as ``mlflow.sklearn.save_model`` lays it out (MLflow itself
is not installed): an ``MLmodel`` YAML file and the pickled model."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

RUN_ID = "8c1e7a4f2b9d4e0c9a6b3f5d1e2c7a90"
MODEL_UUID = "0f3c2b1a9e8d4c7b8a6f5e4d3c2b1a09"
CREATED = "2025-06-01 10:11:12.345678"
IRIS_COLUMNS = ("sepal_length", "sepal_width", "petal_length", "petal_width")

COLUMN_INPUTS = ("'[" + ", ".join(f'{{"type": "double", "name": "{name}", "required": true}}' for name in IRIS_COLUMNS)
                 + "]'")
TENSOR_INPUTS = """'[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]'"""
TENSOR_OUTPUTS = """'[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'"""

MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.sklearn
    model_path: model.pkl
    predict_fn: predict
    python_version: 3.11.7
  sklearn:
    code: null
    pickled_model: model.pkl
    serialization_format: cloudpickle
    sklearn_version: 1.5.0
mlflow_version: 2.14.1
model_size_bytes: {size}
model_uuid: {uuid}
run_id: {run_id}
signature:
  inputs: {inputs}
  outputs: {outputs}
  params: null
utc_time_created: '{created}'
"""


def write_mlflow_model(root: Path, model: Any, *, inputs: str = COLUMN_INPUTS, outputs: str = TENSOR_OUTPUTS) -> Path:
    """``root`` as an MLflow model directory holding ``model``; ``inputs``/``outputs`` are the signature's
    spec lists as MLflow writes them (JSON text in YAML quotes)."""
    root.mkdir(parents=True, exist_ok=True)
    pickled = pickle.dumps(model)
    (root / "model.pkl").write_bytes(pickled)
    (root / "requirements.txt").write_text("scikit-learn==1.5.0\n")
    (root / "MLmodel").write_text(MLMODEL.format(size=len(pickled), uuid=MODEL_UUID, run_id=RUN_ID, inputs=inputs,
                                                 outputs=outputs, created=CREATED))
    return root
