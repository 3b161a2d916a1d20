"""A training job that uses MLflow only (no provline), run by tests/real_servers/test_mlflow_bridge.py in the
full-MLflow virtualenv (build/venvs/mlflow-server) against a real tracking server (MLFLOW_TRACKING_URI).

    python mlflow_training.py --version 1 --facts out.json   # trains, registers v1, sets @champion on it
    python mlflow_training.py --version 2 --facts out.json   # trains again (other C), moves @champion to v2,
                                                             # tags v2 approved for production

scikit-learn's LogisticRegression with ``mlflow.sklearn.autolog()`` (params, metrics, the model,
registered as ``MODEL``, the data of the fit as a dataset input its metrics name), the training
table logged with ``mlflow.log_input``. It writes what MLflow
recorded (run id, dataset digest, params, model version) to ``--facts``, for the test to compare.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXPERIMENT = "iris-bridge"
MODEL = "iris-bridge"
DATASET = "iris-train"
ALIAS = "champion"
C_OF_VERSION = {"1": 1.0, "2": 0.25}
APPROVAL_TAG = "provline.approval.production.risk-officer"
APPROVER = "ada"


def main() -> None:
    # imported here: the test imports this module's names from provline's .venv, which has no MLflow
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser()
    parser.add_argument("--version", choices=sorted(C_OF_VERSION), required=True)
    parser.add_argument("--facts", type=Path, required=True)
    args = parser.parse_args()
    mlflow.set_experiment(EXPERIMENT)
    mlflow.sklearn.autolog(registered_model_name=MODEL)  # logs the fit's data as a run input too
    iris = load_iris(as_frame=True)
    table: pd.DataFrame = iris.frame
    features = table.drop(columns=["target"])
    source = args.facts.parent / f"{DATASET}.csv"
    table.to_csv(source, index=False)
    with mlflow.start_run(run_name=f"train-v{args.version}") as run:
        dataset = mlflow.data.from_pandas(table, source=str(source), name=DATASET, targets="target")
        mlflow.log_input(dataset, context="training")
        LogisticRegression(C=C_OF_VERSION[args.version], max_iter=500).fit(features, table["target"])
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{MODEL}' and run_id='{run.info.run_id}'")
    if len(versions) != 1:
        raise SystemExit(f"autolog registered {len(versions)} versions of {MODEL} from run {run.info.run_id}")
    version = versions[0].version
    client.set_registered_model_alias(MODEL, ALIAS, version)
    if args.version == "2":  # approved in MLflow by a tag (the convention provline mlflow import reads)
        client.set_model_version_tag(MODEL, version, APPROVAL_TAG, APPROVER)
    recorded = client.get_run(run.info.run_id)
    args.facts.write_text(json.dumps({
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "params": recorded.data.params,
        "git_commit": recorded.data.tags.get("mlflow.source.git.commit"),
        "dataset_digest": dataset.digest,
        "inputs": sorted(f"mlflow:{d.dataset.name}:{d.dataset.digest}" for d in recorded.inputs.dataset_inputs),
        "model_version": str(version),
        "model_source": versions[0].source,
    }, indent=1))


if __name__ == "__main__":
    main()
