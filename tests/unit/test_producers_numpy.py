"""Every producers API takes what NumPy, pandas and scikit-learn return (issue 14, item 2)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from provline.producers.values import optional_number, plain
from tests.helpers import decoded, memory_lineage


def test_plain_converts_numpy_and_pandas_values_in_containers() -> None:
    value = {
        np.str_("acc"): np.float64(0.97), "n": np.int64(3), "ok": np.bool_(True), "names": np.array(["a", "b"]),
        "series": pd.Series([1, 2]), "index": pd.Index(["x"]), "na": pd.NA, "nat": pd.NaT,
        "when": pd.Timestamp("2025-03-01 12:00"), "nested": [(np.float32(0.5), np.int8(1))],
        "nullable": pd.array([1, None], dtype="Int64"), "set": {np.int64(4)},
    }
    result = plain(value)
    assert result == {
        "acc": 0.97, "n": 3, "ok": True, "names": ["a", "b"], "series": [1, 2], "index": ["x"], "na": None,
        "nat": None, "when": datetime(2025, 3, 1, 12, tzinfo=UTC), "nested": [(0.5, 1)], "nullable": [1, None],
        "set": [4],
    }
    types = {k: type(v) for k, v in result.items()}
    assert types["acc"] is float and types["n"] is int and types["ok"] is bool
    assert type(next(iter(result))) is str and type(result["names"][0]) is str
    frame = pd.DataFrame({"a": [1]})
    assert plain(frame) is frame and plain(Path("x")) == Path("x")


def test_optional_numbers_take_nan_and_na_as_missing() -> None:
    assert optional_number(np.float64("nan")) is None and optional_number(pd.NA) is None
    assert optional_number(None) is None and optional_number(np.int64(2)) == 2.0


def test_every_api_takes_numpy_and_pandas_values(tmp_path: Path) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    frame = pd.DataFrame({"x": np.arange(5, dtype=np.float64), "plan": ["a", "b", "a", "b", "a"]})
    lineage = memory_lineage()
    with lineage.run("train", params={"C": np.float64(0.5), "layers": np.array([3, 2]), "solver": np.str_("lbfgs")},
                     seed=np.int64(7)) as run:
        run.seed_everything(np.int64(8))
        digest = run.use_dataset(frame, name="train", pii=np.array(["email"]), owner=np.str_("ada"),
                                 quality_checks=[{"name": "rows", "passed": np.bool_(True)}],
                                 collection_start=pd.Timestamp("2025-01-01"), collection_end=pd.NaT)
        run.log_metric("auc", np.float64(0.91))
        run.log_feature_set("fs", [{"name": np.str_("x2"), "dtype": np.dtype("float64"),
                                    "parameters": {"scale": np.float32(2.0)}}], input_datasets=pd.Series([digest]))
        run.register_model(artifact, name="churn", version=np.str_("1"), served_versions=np.array(["v1"]),
                           signature={"inputs": pd.Index(["x", "plan"])}, predictions=pd.Series([0.1, 0.2], name="p"))
    lineage.evaluate("churn", "1", metrics={"acc": np.float64(0.97), "f1": (np.float64(0.9), np.nan, pd.NA),
                                            "rmse": np.array([0.3, 0.2, 0.4])},
                     minimums={"acc": np.float64(0.9)}, maximums={"rmse": np.float64(0.5), "f1": np.nan},
                     tests=pd.Series(["bias"]))
    lineage.decide("model:churn@1", transition="staging->production", approved=np.bool_(True), actor="ada",
                   role="risk", alternatives=np.array(["keep 0"]))
    lineage.deploy("churn", np.str_("1"), endpoint="/predict", served_versions=pd.Series(["v1"]))

    events = dict(decoded(lineage.emitter))
    events["DatasetVersion"] = next(v for kind, v in decoded(lineage.emitter) if kind == "DatasetVersion")
    completed = events["RunEvent"]
    assert completed["seeds"] == {"seed": 8} and completed["metrics"] == {"auc": 0.91}
    assert completed["hyperparameters"] == {"C": "0.5", "layers": json.dumps([3, 2]), "solver": '"lbfgs"'}
    dataset = events["DatasetVersion"]
    assert dataset["pii_tags"] == ["email"] and dataset["owner"] == "ada"
    assert dataset["quality_checks"][0]["passed"] is True
    assert dataset["collection_start"] == datetime(2025, 1, 1, tzinfo=UTC) and dataset["collection_end"] is None
    assert events["FeatureSetVersion"]["features"][0]["parameters"] == {"scale": "2.0"}
    model = events["ModelVersion"]
    assert model["version"] == "1" and model["served_versions"] == ["v1"] and model["input_names"] == ["x", "plan"]
    metrics = {m["name"]: m for m in events["Evaluation"]["metrics"]}
    assert metrics["acc"] == {"name": "acc", "value": 0.97, "ci_low": None, "ci_high": None, "threshold": 0.9,
                              "passed": True}
    assert (metrics["f1"]["ci_low"], metrics["f1"]["ci_high"], metrics["f1"]["passed"]) == (None, None, None)
    assert (metrics["rmse"]["value"], metrics["rmse"]["ci_low"], metrics["rmse"]["passed"]) == (0.3, 0.2, True)
    assert events["Evaluation"]["passed"] is True and events["Evaluation"]["tests"] == ["bias"]
    assert events["Decision"]["outcome"] == "APPROVED" and events["Decision"]["alternatives"] == ["keep 0"]
    assert events["Deployment"]["served_versions"] == ["v1"]


def test_a_scikit_learn_evaluation_is_recorded() -> None:
    """The user's report: metrics straight from scikit-learn crashed the job with InvalidEventError."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3))
    labels = (features @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.3, size=200) > 0).astype(np.int64)
    scores = cross_val_score(LogisticRegression(), features, labels, cv=4)  # an array: .mean() is np.float64
    lineage = memory_lineage()
    lineage.evaluate("churn", "1", metrics={"cv_acc": (scores.mean(), scores.min(), scores.max())},
                     minimums={"cv_acc": 0.8})
    [(_, evaluation)] = decoded(lineage.emitter)
    assert evaluation["passed"] is True
    [metric] = evaluation["metrics"]
    assert math.isclose(metric["value"], float(scores.mean())) and metric["ci_low"] == float(scores.min())
