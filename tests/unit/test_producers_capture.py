from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from provline.producers.capture import allowed_env, code_reference, container, seed_everything
from provline.producers.datasets import describe, table_digest
from provline.producers.lineage import evaluate_metric
from provline.producers.profile import profile_table
from provline.schemas import default_catalog
from tests.helpers import memory_lineage, sent


def test_secrets_are_never_captured_even_when_allow_listed() -> None:
    environ = {"OMP_NUM_THREADS": "4", "AWS_SECRET_ACCESS_KEY": "x", "API_TOKEN": "y", "DB_PASSWORD": "z",
               "SSH_KEY": "k", "NOT_LISTED": "n"}
    assert allowed_env(environ, ["OMP_NUM_THREADS", "AWS_SECRET_ACCESS_KEY", "API_TOKEN", "DB_PASSWORD",
                                 "SSH_KEY"]) == {"OMP_NUM_THREADS": "4"}


@pytest.mark.parametrize(
    ("environ", "cgroup", "expected"),
    [
        ({"CONTAINER_IMAGE": "registry/churn:1.2@sha256:abc"}, None, ("registry/churn:1.2@sha256:abc", "sha256:abc")),
        ({"IMAGE_NAME": "churn:2", "IMAGE_DIGEST": "sha256:def"}, None, ("churn:2", "sha256:def")),
        ({}, "0::/system.slice/docker-" + "a" * 64 + ".scope\n", ("container:" + "a" * 12, None)),
        ({}, "0::/user.slice\n", (None, None)),
    ],
)
def test_container_image_from_variables_or_cgroup(environ, cgroup, expected) -> None:
    assert container(environ, cgroup) == expected


def test_seed_everything_makes_random_and_numpy_repeatable() -> None:
    seed_everything(123)
    first = (random.random(), np.random.rand())
    seed_everything(123)
    assert (random.random(), np.random.rand()) == first


def scale(value: float, factor: float = 2.0) -> float:
    return value * factor


def test_code_reference_names_the_function_and_its_file() -> None:
    reference = code_reference(scale)
    assert reference["symbol"] == f"{__name__}.scale"
    assert reference["path"].endswith("tests/unit/test_producers_capture.py")


def test_table_digest_is_independent_of_chunking_and_sensitive_to_content() -> None:
    table = pa.table({"a": list(range(1000)), "b": [f"s{i % 7}" for i in range(1000)]})
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=33))
    assert rechunked.column("a").num_chunks > 1
    assert table_digest(rechunked) == table_digest(table)
    changed = table.set_column(0, "a", pa.array([*range(999), 5]))
    assert table_digest(changed) != table_digest(table)


def test_dataframe_and_equal_table_have_the_same_digest_and_profile() -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5, None, 4.0], "city": ["a", "b", "a", None]})
    from_frame = describe(frame, name="d")
    from_table = describe(pa.Table.from_pandas(frame, preserve_index=False), name="d")
    assert from_frame["digest"] == from_table["digest"]
    assert from_frame["row_count"] == 4
    assert [c["name"] for c in from_frame["columns"]] == ["x", "city"]


def test_profiles_match_numpy_on_known_data() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(10, 3, 20_000)
    table = pa.table({"x": pa.array(np.append(values, np.nan)).cast(pa.float64()),
                      "color": pa.array(["red"] * 15_000 + ["blue"] * 5_000 + [None])})
    numeric, categorical = profile_table(table).profiles
    finite = values
    assert numeric["count"] == 20_001 and numeric["null_count"] == 1  # NaN counts as missing
    assert numeric["mean"] == pytest.approx(finite.mean(), rel=1e-9)
    assert numeric["std"] == pytest.approx(finite.std(), rel=1e-6)
    assert numeric["min"] == finite.min() and numeric["max"] == finite.max()
    assert numeric["quantiles"][50] == pytest.approx(np.median(finite), rel=1e-9)  # reservoir holds all
    assert len(numeric["bin_edges"]) == 11 and sum(numeric["bin_counts"]) == len(finite)
    assert categorical["categories"] == {"red": 15_000, "blue": 5_000}
    assert categorical["null_count"] == 1


def test_large_data_is_sampled_into_a_bounded_reservoir() -> None:
    values = np.arange(300_000, dtype=float)
    batches = pa.Table.from_batches(pa.table({"v": values}).to_batches(max_chunksize=10_000))
    [profile] = profile_table(batches).profiles
    assert profile["count"] == 300_000
    assert profile["quantiles"][50] == pytest.approx(150_000, rel=0.02)


def test_csv_files_are_profiled_streaming(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("age,plan\n" + "".join(f"{20 + i % 50},{'pro' if i % 3 else 'free'}\n" for i in range(3000)))
    fields = describe(path, name="customers")
    assert fields["row_count"] == 3000
    assert [p["kind"] for p in fields["profiles"]] == ["NUMERIC", "CATEGORICAL"]
    assert fields["profiles"][1]["categories"] == {"pro": 2000, "free": 1000}
    assert fields["schema_fingerprint"].startswith("sha256:")


def test_evaluation_metric_thresholds() -> None:
    assert evaluate_metric("auc", 0.9, 0.8, None)["passed"] is True
    assert evaluate_metric("auc", (0.7, 0.65, 0.75), 0.8, None) == {
        "name": "auc", "value": 0.7, "ci_low": 0.65, "ci_high": 0.75, "threshold": 0.8, "passed": False}
    assert evaluate_metric("log_loss", 0.3, None, 0.5)["passed"] is True
    assert evaluate_metric("latency", 3.0, None, None)["passed"] is None


def test_feature_sets_evaluations_and_decisions_are_recorded() -> None:
    lineage = memory_lineage()
    with lineage.run("features") as run:
        digest = run.log_feature_set("churn-features", [
            {"name": "charges_scaled", "dtype": "float", "code": scale, "parameters": {"factor": 2.0}},
        ], input_datasets=["sha256:abc"])
        lineage.evaluate("churn", "1", metrics={"auc": (0.91, 0.88, 0.94), "log_loss": 0.3},
                         minimums={"auc": 0.85}, maximums={"log_loss": 0.4}, dataset="sha256:abc")
        lineage.decide("model:churn@1", transition="staging->production", approved=True,
                       actor="ada", role="risk-officer", rationale="meets policy")
    decoded = (default_catalog().decode(m) for m in sent(lineage.emitter))
    events = {d.record: d.value for d in decoded}
    feature_set = events["FeatureSetVersion"]
    assert feature_set["digest"] == digest
    assert feature_set["features"][0]["code"]["symbol"].endswith(".scale")
    assert feature_set["features"][0]["parameters"] == {"factor": "2.0"}
    assert events["Evaluation"]["passed"] is True
    assert events["Evaluation"]["run_id"] == events["RunEvent"]["run_id"]
    assert events["Decision"]["outcome"] == "APPROVED" and events["Decision"]["role"] == "risk-officer"
