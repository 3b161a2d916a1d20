"""register_model takes model directories, reads MLflow's MLmodel, and records signature names (issue 14, item 3)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from provline.producers.digest import manifest, merkle_root
from provline.producers.models import prediction_table, spec_names
from tests.helpers import decoded, memory_lineage
from tests.mlflow_model import IRIS_COLUMNS, MODEL_UUID, RUN_ID, TENSOR_INPUTS, write_mlflow_model


def register(artifact: Path, **kwargs: object) -> tuple[dict, dict]:
    """(ModelVersion, final RunEvent) of a run that registers ``artifact``."""
    lineage = memory_lineage()
    with lineage.run("train") as run:
        run.register_model(artifact, name="iris", version="1", **kwargs)
    events = decoded(lineage.emitter)
    [model] = [v for kind, v in events if kind == "ModelVersion"]
    return model, events[-1][1]


def test_a_model_directory_is_digested_like_a_dataset(tmp_path: Path) -> None:
    saved = tmp_path / "saved_model"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph" * 100)
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00\x01" * 1000)
    (saved / "variables" / "variables.index").write_bytes(b"index")
    model, completed = register(saved, framework="tensorflow")
    assert completed["state"] == "COMPLETED"
    assert model["artifact_sha256"] == merkle_root(manifest(saved))
    assert model["artifact_sha256"].startswith("sha256:")
    assert {f["path"]: f["size"] for f in model["artifact_files"]} == {
        "saved_model.pb": 500, "variables/variables.data-00000-of-00001": 2000, "variables/variables.index": 5}
    assert model["framework"] == "tensorflow" and model["flavors"] == [] and model["input_names"] == []


def test_a_model_file_keeps_its_plain_sha256_and_is_listed(tmp_path: Path) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    model, _ = register(artifact)
    [entry] = manifest(artifact)
    assert model["artifact_sha256"] == entry["sha256"] and model["artifact_files"] == [entry]


def test_a_missing_or_empty_artifact_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    lineage = memory_lineage()
    with pytest.raises(FileNotFoundError, match="model artifact .*nope does not exist"), lineage.run("train") as run:
        run.register_model(tmp_path / "nope", name="iris", version="1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"), lineage.run("train") as run:
        run.register_model(tmp_path / "empty", name="iris", version="1")
    assert [v["state"] for kind, v in decoded(lineage.emitter) if kind == "RunEvent"][-1] == "FAILED"


def test_an_mlflow_model_directory_gives_flavors_signature_and_ids(tmp_path: Path) -> None:
    directory = write_mlflow_model(tmp_path / "model", {"weights": [1, 2, 3]})
    model, completed = register(directory)
    assert completed["state"] == "COMPLETED"
    assert model["artifact_sha256"] == merkle_root(manifest(directory))
    assert sorted(f["path"] for f in model["artifact_files"]) == ["MLmodel", "model.pkl", "requirements.txt"]
    assert model["flavors"] == ["python_function", "sklearn"] and model["framework"] == "sklearn"
    assert (model["mlflow_run_id"], model["mlflow_model_uuid"]) == (RUN_ID, MODEL_UUID)
    assert model["mlflow_created_time"] == datetime(2025, 6, 1, 10, 11, 12, 345678, tzinfo=UTC)
    assert model["input_names"] == list(IRIS_COLUMNS)
    assert model["output_names"] == []  # an unnamed tensor: the server's positional name stays
    signature = json.loads(model["io_signature"])
    assert signature["inputs"][0] == {"type": "double", "name": "sepal_length", "required": True}
    assert signature["outputs"][0]["tensor-spec"] == {"dtype": "int64", "shape": [-1]}


def test_tensor_specs_have_no_names_and_an_explicit_signature_wins(tmp_path: Path) -> None:
    directory = write_mlflow_model(tmp_path / "model", {"w": 1}, inputs=TENSOR_INPUTS)
    model, _ = register(directory)
    assert model["input_names"] == [] and model["output_names"] == []
    model, _ = register(directory, signature={"inputs": np.array(IRIS_COLUMNS), "outputs": ["species"]},
                        framework="scikit-learn")
    assert model["input_names"] == list(IRIS_COLUMNS) and model["output_names"] == ["species"]
    assert model["framework"] == "scikit-learn"


def test_input_names_come_from_a_dataframe_input_example(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"pickle")
    example = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=list(IRIS_COLUMNS))
    model, _ = register(artifact, input_example=example)
    assert model["input_names"] == list(IRIS_COLUMNS)
    with pytest.raises(TypeError, match="pandas DataFrame's columns"), memory_lineage().run("t") as run:
        run.register_model(artifact, name="iris", version="1", input_example=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="takes 'inputs' and 'outputs'"), memory_lineage().run("t") as run:
        run.register_model(artifact, name="iris", version="1", signature={"input": ["a"]})


def test_a_broken_mlmodel_is_a_warning_not_a_failed_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.pkl").write_bytes(b"pickle")
    (directory / "MLmodel").write_text("flavors: [unclosed\n")
    with caplog.at_level(logging.WARNING, logger="provline.models"):
        model, completed = register(directory)
    assert completed["state"] == "COMPLETED" and model["flavors"] == []
    assert "not a readable MLmodel file" in caplog.text


@pytest.mark.parametrize(("specs", "names"), [
    ([{"name": "a", "type": "double"}, {"name": "b", "type": "long"}], ("a", "b")),
    ([{"type": "double"}], ()),  # an unnamed column spec
    ([{"name": "a", "type": "double"}, {"type": "long"}], ()),  # partly named: positional
    ([{"name": "x", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}], ("x",)),
    (None, ()), ("not a list", ()),
])
def test_spec_names(specs: object, names: tuple[str, ...]) -> None:
    assert spec_names(specs) == names


def test_prediction_tables_are_named_as_served_outputs() -> None:
    assert prediction_table(np.array([1.0, 2.0]), ["predict"], model="m@1").column_names == ["predict"]
    assert prediction_table(np.ones((3, 2)), ["a", "b"], model="m@1").column_names == ["a", "b"]
    assert prediction_table(np.ones((3, 2)), ["proba"], model="m@1").column_names == ["proba[0]", "proba[1]"]
    assert prediction_table(pd.Series([1, 2], name="score"), [], model="m@1").column_names == ["score"]
    assert prediction_table({"predict": [1, 2]}, [], model="m@1").column_names == ["predict"]
    assert prediction_table(pd.DataFrame({"y": [1.0]}), [], model="m@1").column_names == ["y"]
    with pytest.raises(ValueError, match=r"predictions of m@1 .* pass \{output name: values\}"):
        prediction_table(np.array([1.0, 2.0]), [], model="m@1")


def test_predictions_are_profiled_as_the_output_baseline(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"pickle")
    lineage = memory_lineage()
    with lineage.run("train") as run:
        evaluation_data = run.use_dataset(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), name="holdout")
        run.register_model(artifact, name="iris", version="1", signature={"outputs": ["predict"]},
                           predictions=np.array([0.5, 1.5, 2.5]), served_versions=["v1"])
        lineage.evaluate("iris", "1", metrics={"rmse": 0.1}, dataset=evaluation_data,
                         predictions=np.array([0.4, 1.4, 2.4, 3.4]))
    lineage.evaluate("iris", "1", metrics={"rmse": 0.2}, predictions={"predict": [1.0]})
    events = decoded(lineage.emitter)
    datasets = {v["digest"]: v for kind, v in events if kind == "DatasetVersion"}
    [model] = [v for kind, v in events if kind == "ModelVersion"]
    first, second = (v for kind, v in events if kind == "Evaluation")
    completed = [v for kind, v in events if kind == "RunEvent"][-1]

    at_registration = datasets[model["predictions_dataset"]]
    assert at_registration["name"] == "iris@1 predictions" and at_registration["run_id"] == completed["run_id"]
    [profile] = at_registration["profiles"]
    assert (profile["column"], profile["kind"], profile["count"], profile["mean"]) == ("predict", "NUMERIC", 3, 1.5)
    assert model["served_versions"] == ["v1"] and model["output_names"] == ["predict"]
    # an unnamed array at evaluation takes the registered model's output name
    at_evaluation = datasets[first["predictions_dataset"]]
    assert at_evaluation["profiles"][0]["column"] == "predict" and at_evaluation["parents"] == [evaluation_data]
    assert second["predictions_dataset"] in datasets and datasets[second["predictions_dataset"]]["run_id"] is None
    assert completed["outputs"] == [model["predictions_dataset"], "iris@1", first["predictions_dataset"]]
    assert completed["inputs"] == [evaluation_data] and model["datasets"] == [evaluation_data]
