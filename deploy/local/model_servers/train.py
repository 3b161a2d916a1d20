"""The training job whose models the real-server tests, the benchmark and the README's quick start serve.

    build/venvs/mlflow/bin/python deploy/local/model_servers/train.py --out build/models

A real scikit-learn job on data scikit-learn ships (no network): a classifier on iris and a
regressor on diabetes. For each model it writes the data set to a CSV and records it
(``run.use_dataset``), trains, and saves the model twice: as an MLflow model directory
(``OUT/mlflow/<name>``, for ``mlflow models serve``) and as the joblib file and model-settings.json
MLServer loads (``OUT/mlserver/<name>``, served as version ``v1``). It evaluates the model with
scikit-learn's metrics, NumPy floats as scikit-learn returns them, with the model's own predictions
on the evaluation split (the baseline output drift is measured against); only a model that passes
is registered: the MLflow directory, as version ``1``, declaring that MLServer reports that version
as ``v1``. Last, it records the model's deployment to the endpoints the sidecars front.

Lineage goes where the PROVLINE_* job settings say (PROVLINE_KAFKA__BOOTSTRAP...). Each model is
trained even when the other one fails; ``OUT/facts.json`` says what each recorded (run id, dataset
digest, metrics, the error if any), and the job exits 1 when any model failed.

It runs where scikit-learn, MLflow and provline.producers are installed, as a user's training
environment has them: ``make model-servers`` builds one (build/venvs/mlflow), with provline installed
without its dependencies beside the producers' own.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import mlflow.sklearn
import numpy as np
import pandas as pd
import sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from provline.producers import Lineage

PRODUCER_NAME = "train-models"
REGISTERED_VERSION = "1"  # MLflow registry style
SERVED_VERSION = "v1"  # what MLServer reports for the model (model-settings.json)
LABEL = "target"
SEED = 7
MLFLOW_ENDPOINT = "/invocations"
Metrics = dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    load: Callable[[], pd.DataFrame]  # features and the label column, named as the model sees them
    estimator: Callable[[], Any]
    params: dict[str, Any]
    eval_rows: int
    metrics: Callable[[Any, Any], Metrics]
    minimums: dict[str, float]
    maximums: dict[str, float] = field(default_factory=dict)
    license: str | None = None
    stratify: bool = False

    @property
    def endpoints(self) -> list[str]:
        """The endpoints the model serves: MLServer's V2 route, and MLflow's for iris."""
        return [f"/v2/models/{self.name}/infer"] + ([MLFLOW_ENDPOINT] if self.name == "iris" else [])


def _snake_case(column: str) -> str:
    return column.removesuffix(" (cm)").replace(" ", "_")


def iris_frame() -> pd.DataFrame:
    return load_iris(as_frame=True).frame.rename(columns=_snake_case)


def diabetes_frame() -> pd.DataFrame:
    return load_diabetes(as_frame=True).frame


def bootstrap_interval(score: Callable[[Any, Any], float], truth: Any, predicted: Any, *,
                       rounds: int = 200) -> tuple[Any, Any, Any]:
    """The score with a 95% bootstrap interval, as NumPy floats (what np.percentile returns)."""
    rng = np.random.default_rng(SEED)
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    samples = [score(truth[i], predicted[i]) for i in (rng.integers(0, len(truth), len(truth)) for _ in range(rounds))]
    low, high = np.percentile(samples, [2.5, 97.5])
    return score(truth, predicted), low, high


def iris_metrics(truth: Any, predicted: Any) -> Metrics:
    def f1_macro(t: Any, p: Any) -> float:
        return f1_score(t, p, average="macro")

    return {"accuracy": accuracy_score(truth, predicted), "f1_macro": bootstrap_interval(f1_macro, truth, predicted)}


def diabetes_metrics(truth: Any, predicted: Any) -> Metrics:
    return {"r2": bootstrap_interval(r2_score, truth, predicted), "mae": mean_absolute_error(truth, predicted)}


MODELS = (
    ModelSpec("iris", iris_frame, lambda: LogisticRegression(C=1.0, max_iter=500), {"C": 1.0, "max_iter": 500},
              eval_rows=45, metrics=iris_metrics, minimums={"accuracy": 0.9}, license="CC-BY-4.0", stratify=True),
    ModelSpec("diabetes", diabetes_frame, lambda: Ridge(alpha=0.1), {"alpha": 0.1}, eval_rows=100,
              metrics=diabetes_metrics, minimums={"r2": 0.3}, maximums={"mae": 60.0}),
)


def save_for_mlserver(model: Any, directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, directory / "model.joblib")
    settings = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": SERVED_VERSION}}
    (directory / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


class ModelRejected(Exception):
    """The model did not pass its evaluation, so it is not registered."""


def train(lineage: Lineage, spec: ModelSpec, out: Path, fact: dict[str, Any]) -> None:
    """Train, save, evaluate, register and deploy one model; ``fact`` collects what was recorded."""
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    frame = spec.load()
    dataset, eval_rows = data_dir / f"{spec.name}.csv", data_dir / f"{spec.name}-eval.csv"
    frame.to_csv(dataset, index=False)
    features, labels = frame.drop(columns=LABEL), frame[LABEL]
    x_train, x_eval, y_train, y_eval = train_test_split(
        features, labels, test_size=spec.eval_rows, random_state=SEED, stratify=labels if spec.stratify else None)
    x_eval.to_csv(eval_rows, index=False)  # what the tests and the benchmark send
    mlflow_dir, mlserver_dir = out / "mlflow" / spec.name, out / "mlserver" / spec.name
    fact.update(columns=list(features.columns), dataset_csv=str(dataset), eval_csv=str(eval_rows),
                mlflow_dir=str(mlflow_dir), mlserver_dir=str(mlserver_dir))

    with lineage.run(f"train-{spec.name}", stage="training", params=spec.params, seed=SEED) as run:
        fact["run_id"] = run.run_id
        fact["dataset_digest"] = run.use_dataset(dataset, name=spec.name, license=spec.license, owner="provline-tests")
        model = spec.estimator().fit(x_train, y_train)
        run.log_metric("train_score", model.score(x_train, y_train))
        mlflow.sklearn.save_model(model, mlflow_dir, signature=infer_signature(x_train, model.predict(x_train)))
        save_for_mlserver(model, mlserver_dir, spec.name)

        predicted = model.predict(x_eval)
        metrics = spec.metrics(y_eval, predicted)
        fact["metrics"] = {name: float(np.ravel(value)[0]) for name, value in metrics.items()}
        evaluation = lineage.evaluate(
            spec.name, REGISTERED_VERSION, metrics=metrics, minimums=spec.minimums, maximums=spec.maximums,
            dataset=fact["dataset_digest"], slice=f"evaluation split: {len(x_eval)} rows, random_state {SEED}",
            predictions=pd.DataFrame({"predict": predicted}),
        )
        if not evaluation["passed"]:
            raise ModelRejected(f"{spec.name}@{REGISTERED_VERSION} did not pass its evaluation "
                                f"({fact['metrics']}); it is not registered")
        run.register_model(mlflow_dir, name=spec.name, version=REGISTERED_VERSION,
                           framework=f"scikit-learn {sklearn.__version__}",
                           served_versions=[SERVED_VERSION])

    fact["deployments"] = {endpoint: lineage.deploy(spec.name, REGISTERED_VERSION, endpoint=endpoint,
                                                    environment="local", reason="trained by train.py")["event_id"]
                           for endpoint in spec.endpoints}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where data, models and facts.json are written")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    facts: dict[str, dict[str, Any]] = {}
    with Lineage(producer_name=PRODUCER_NAME) as lineage:
        for spec in MODELS:
            fact = facts[spec.name] = {"error": None}
            try:
                train(lineage, spec, out, fact)
            except Exception as exc:  # noqa: BLE001 - the other model still trains; the exit code says it failed
                fact["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            (out / "facts.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    failed = [name for name, fact in facts.items() if fact["error"]]
    for name in failed:
        print(f"train.py: {name} failed: {facts[name]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
