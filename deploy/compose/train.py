"""The compose stack's training job: the demo's churn model, trained and deployed with its lineage.

    python deploy/compose/train.py --out /models/churn-model.json

Settings come from the environment (``PROVLINE_*``, the ``job`` service of ``provline config``); the
model server of compose.yml serves the file it writes, as ``churn`` version 1 on ``/predict``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from deploy.demo import model as churn
from provline.config import load_settings
from provline.producers import JobSettings, Lineage

MODEL_NAME = "churn"
MODEL_VERSION = "1"
ENDPOINT = "/predict"


def train_and_deploy(out: Path, settings: JobSettings, *, rows: int = 2000, seed: int = 7) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        dataset = Path(scratch) / "customers.csv"
        churn.generate_customers(dataset, rows=rows, seed=seed)
        with Lineage(settings=settings, producer_name="compose-train") as lineage:
            with lineage.run("train-churn", stage="training", params={"learning_rate": 0.5, "epochs": 300},
                             seed=seed) as run:
                run.use_dataset(dataset, name="customers", license="synthetic", owner="demo")
                features, labels = churn.load_customers(dataset)
                model = churn.train(features, labels, learning_rate=0.5, epochs=300)
                run.log_metric("train_accuracy", churn.accuracy(model, features, labels))
                out.parent.mkdir(parents=True, exist_ok=True)
                churn.save(model, out)
                run.register_model(out, name=MODEL_NAME, version=MODEL_VERSION, framework="numpy-logistic-regression")
            lineage.deploy(MODEL_NAME, MODEL_VERSION, endpoint=ENDPOINT, environment="compose", reason="first release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the model file is written")
    args = parser.parse_args()
    train_and_deploy(args.out, load_settings(JobSettings))


if __name__ == "__main__":
    main()
