"""PROVLINE_SIDECAR__MLFLOW_MODEL: the sidecar reads the served model's uuid from its MLmodel, or refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from provline.sidecar.errors import StartupError
from provline.sidecar.mlflow_model import MlflowModel, read_mlflow_model

MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
  sklearn:
    sklearn_version: 1.9.1
mlflow_version: 3.17.2
model_id: m-0123
model_uuid: 5f1c0a3e9b2d4c6e8f7a1b2c3d4e5f60
run_id: 0a1b2c3d4e5f
utc_time_created: '2026-12-03 10:00:00.000000'
"""


def test_the_uuid_and_run_of_a_model_directory_or_its_mlmodel_file(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(MLMODEL)
    expected = MlflowModel(model_uuid="5f1c0a3e9b2d4c6e8f7a1b2c3d4e5f60", run_id="0a1b2c3d4e5f")
    assert read_mlflow_model(tmp_path) == expected
    assert read_mlflow_model(tmp_path / "MLmodel") == expected


@pytest.mark.parametrize(("content", "says"), [
    (None, "no MLmodel file there"),
    ("flavors: [unclosed", "not a readable MLmodel file"),
    (MLMODEL.replace("model_uuid: 5f1c0a3e9b2d4c6e8f7a1b2c3d4e5f60\n", ""), "names no model_uuid"),
])
def test_a_directory_without_a_usable_uuid_stops_the_start_with_the_fix(tmp_path: Path, content: str | None,
                                                                       says: str) -> None:
    if content is not None:
        (tmp_path / "MLmodel").write_text(content)
    with pytest.raises(StartupError, match=says) as raised:
        read_mlflow_model(tmp_path)
    assert "PROVLINE_SIDECAR__MLFLOW_MODEL" in str(raised.value) and str(tmp_path) in str(raised.value)
