"""A real scikit-learn training job on the real broker, stored by the sink in chDB (issue 14, items 2, 3, 7, 11).

The job uses what scikit-learn gives it as it is: cross-validation arrays, np.float64 metrics, a
DataFrame, predictions; it saves the model as an MLflow model directory (the MLmodel file written
by hand, MLflow is not installed) and declares the version string its server reports.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import clickhouse_connect
import numpy as np
import pandas as pd
import pytest

from provline.producers import JobSettings, Lineage
from provline.producers.digest import manifest, merkle_root
from provline.schemas import Topics
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.writer import SinkWriter
from tests.integration.test_producers_every_api import consume_all
from tests.mlflow_model import IRIS_COLUMNS, MODEL_UUID, write_mlflow_model

pytestmark = pytest.mark.integration
STORE_DEADLINE_SECONDS = 60


def test_a_scikit_learn_job_records_its_mlflow_model_metrics_and_predictions(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, chdb_path: str
) -> None:
    from sklearn import datasets  # a test dependency: missing is a failure, not a skip
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score, train_test_split

    iris = datasets.load_iris(as_frame=True)  # shipped inside scikit-learn
    frame = iris.frame.rename(columns=dict(zip(iris.feature_names, IRIS_COLUMNS, strict=True)))
    features = frame[list(IRIS_COLUMNS)]
    x_train, x_test, y_train, y_test = train_test_split(features, frame["target"], test_size=0.3, random_state=0)
    model = LogisticRegression(max_iter=500).fit(x_train, y_train)
    scores = cross_val_score(LogisticRegression(max_iter=500), x_train, y_train, cv=5)
    predicted = model.predict(x_test)
    model_dir = write_mlflow_model(tmp_path / "iris-model", model)

    settings = JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix})
    with Lineage(settings=settings, producer_name="train-iris") as lineage:
        with lineage.run("train", stage="training", params=model.get_params(), seed=np.int64(0)) as run:
            train_digest = run.use_dataset(x_train.assign(target=y_train), name="iris-train")
            test_digest = run.use_dataset(x_test.assign(target=y_test), name="iris-test")
            run.log_metric("cv_accuracy", scores.mean())
            registered = run.register_model(model_dir, name="iris", version="1", served_versions=["v1"],
                                            predictions={"predict": predicted})
        lineage.evaluate("iris", "1", metrics={"accuracy": (np.mean(predicted == y_test), scores.min(), scores.max()),
                                               "correct": np.sum(predicted == y_test)},
                         minimums={"accuracy": np.float64(0.8)}, dataset=test_digest,
                         tests=pd.Series(["holdout"]))
        lineage.deploy("iris", "1", endpoint="/v2/models/iris/infer", served_versions=np.array(["v1"]))

    events = [(kind, value) for kind, value in consume_all(kafka_bootstrap, topics.lineage, expected=9)
              if kind != "SessionSeal"]
    kinds = [kind for kind, _ in events]
    assert sorted(kinds) == sorted(["RunEvent", "DatasetVersion", "DatasetVersion", "DatasetVersion",
                                    "ModelVersion", "RunEvent", "Evaluation", "Deployment"]), kinds
    [model_version] = [v for kind, v in events if kind == "ModelVersion"]
    assert model_version["artifact_sha256"] == merkle_root(manifest(model_dir))
    assert model_version["input_names"] == list(IRIS_COLUMNS) and model_version["framework"] == "sklearn"
    assert model_version["datasets"] == [train_digest, test_digest]
    [completed] = [v for kind, v in events if kind == "RunEvent" and v["state"] == "COMPLETED"]
    assert completed["seeds"] == {"seed": 0} and json.loads(completed["hyperparameters"]["max_iter"]) == 500
    [evaluation] = [v for kind, v in events if kind == "Evaluation"]
    assert evaluation["passed"] is True and evaluation["metrics"][1]["value"] == float(np.sum(predicted == y_test))

    # the sink stores the v2 events; their new fields are in each stored payload
    sink_settings = ServeSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
                                  store={"url": chdb_path}, sink={"consumer_group": f"sink-{uuid.uuid4().hex[:6]}"})
    store = open_store(chdb_path)
    migrate(store)
    stop = threading.Event()
    writer = threading.Thread(target=SinkWriter(sink_settings, store).run, args=(stop,))
    writer.start()
    reader = clickhouse_connect.get_client(dsn=chdb_path)
    try:
        def payloads(table: str) -> list[dict]:
            return [json.loads(row[0]) for row in reader.query(f"SELECT payload FROM {table} FINAL").result_rows]

        deadline = time.monotonic() + STORE_DEADLINE_SECONDS
        while not (payloads("model_versions") and payloads("deployments") and payloads("evaluations")) \
                and time.monotonic() < deadline:
            time.sleep(0.2)  # polling interval
        [stored] = payloads("model_versions")
        assert stored["served_versions"] == ["v1"] and stored["mlflow_model_uuid"] == MODEL_UUID
        assert stored["input_names"] == list(IRIS_COLUMNS) and len(stored["artifact_files"]) == 3
        assert stored["mlflow_created_time"].startswith("2025-06-01T10:11:12.345678")
        assert stored["predictions_dataset"] == registered["predictions_dataset"]
        assert payloads("deployments")[0]["served_versions"] == ["v1"]
        assert payloads("evaluations")[0]["predictions_dataset"] is None
    finally:
        stop.set()
        writer.join(30)
        reader.close()
        store.close()
