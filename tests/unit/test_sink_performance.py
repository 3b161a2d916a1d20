"""Performance metrics against scikit-learn's on the same labels and predictions (hypothesis-generated)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from provline.sink.performance import (
    LabelledPrediction,
    PerformanceRow,
    below_baseline,
    classification_metrics,
    compute_performance,
    regression_metrics,
    roc_auc,
    wilson,
    window_start,
)

RESAMPLES = 50  # the bootstrap's interval is checked for shape here, not for its coverage
classes = st.sampled_from(["a", "b", "c"])
binary = st.sampled_from(["0", "1"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(binary, binary), min_size=1, max_size=60))
def test_binary_metrics_match_scikit_learn(pairs: list[tuple[str, str]]) -> None:
    labels, predictions = [p[0] for p in pairs], [p[1] for p in pairs]
    got = classification_metrics(labels, predictions, positive_label="1", resamples=RESAMPLES)
    assert got["accuracy"].value == pytest.approx(skm.accuracy_score(labels, predictions))
    assert got["precision"].value == pytest.approx(
        skm.precision_score(labels, predictions, pos_label="1", zero_division=0))
    assert got["recall"].value == pytest.approx(skm.recall_score(labels, predictions, pos_label="1", zero_division=0))
    assert got["f1"].value == pytest.approx(skm.f1_score(labels, predictions, pos_label="1", zero_division=0))
    assert got["accuracy"].count == len(pairs)
    low, high = got["accuracy"].ci_low, got["accuracy"].ci_high
    assert low is not None and high is not None and low <= got["accuracy"].value <= high


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(classes, classes), min_size=1, max_size=60))
def test_macro_metrics_match_scikit_learn(pairs: list[tuple[str, str]]) -> None:
    labels, predictions = [p[0] for p in pairs], [p[1] for p in pairs]
    got = classification_metrics(labels, predictions, resamples=RESAMPLES)
    for name, function in (("precision", skm.precision_score), ("recall", skm.recall_score),
                           ("f1", skm.f1_score)):
        assert got[name].value == pytest.approx(function(labels, predictions, average="macro", zero_division=0)), name


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.5, 0.5, 0.9, 1.0]) | st.floats(0, 1)),
                min_size=1, max_size=60))
def test_roc_auc_matches_scikit_learn_with_ties_and_one_class(pairs: list[tuple[bool, float]]) -> None:
    truth, scores = [p[0] for p in pairs], [p[1] for p in pairs]
    got = roc_auc(truth, scores)
    if len(set(truth)) < 2:
        assert got is None
    else:
        assert got == pytest.approx(skm.roc_auc_score(truth, scores))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=1, max_size=60))
def test_regression_metrics_match_scikit_learn(pairs: list[tuple[float, float]]) -> None:
    outcomes, predictions = [p[0] for p in pairs], [p[1] for p in pairs]
    got = regression_metrics(outcomes, predictions, resamples=RESAMPLES)
    assert got["mae"].value == pytest.approx(skm.mean_absolute_error(outcomes, predictions), abs=1e-9)
    assert got["rmse"].value == pytest.approx(math.sqrt(skm.mean_squared_error(outcomes, predictions)), abs=1e-9)
    for estimate in got.values():
        assert estimate.ci_low is not None and estimate.ci_high is not None and estimate.ci_low <= estimate.ci_high


def test_no_labels_give_no_metrics() -> None:
    assert classification_metrics([], []) == {}
    assert regression_metrics([], []) == {}
    assert compute_performance([], window=timedelta(hours=1), tasks=lambda _: ("classification", "1")) == []


def test_one_class_only_has_no_auc_but_accuracy() -> None:
    got = classification_metrics(["1", "1", "1"], ["1", "0", "1"], positive_label="1", scores=[0.9, 0.2, 0.8])
    assert "roc_auc" not in got
    assert got["accuracy"].value == pytest.approx(2 / 3)
    assert got["recall"].value == pytest.approx(2 / 3)


def test_wilson_matches_published_values() -> None:
    # Wilson interval of 8/10 at 95 %: (0.4902, 0.9433)
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def test_bootstrap_interval_is_reproducible_and_covers_the_value() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 200).astype(str)
    scores = rng.random(200) + (truth == "1") * 0.3
    predictions = np.where(scores > 0.65, "1", "0")
    first = classification_metrics(list(truth), list(predictions), positive_label="1", scores=list(scores))
    second = classification_metrics(list(truth), list(predictions), positive_label="1", scores=list(scores))
    assert first == second
    auc = first["roc_auc"]
    assert auc.value == pytest.approx(skm.roc_auc_score(truth == "1", scores))
    assert auc.ci_low is not None and auc.ci_high is not None and auc.ci_low < auc.value < auc.ci_high


def test_windows_of_prediction_time_and_baseline_comparison() -> None:
    t0 = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    assert window_start(t0, timedelta(hours=1)) == datetime(2026, 1, 1, 10, tzinfo=UTC)
    items = [LabelledPrediction("m", "1", t0 + timedelta(minutes=m), prediction=1.0, label="1") for m in (0, 10, 40)]
    rows = compute_performance(items, window=timedelta(hours=1), tasks=lambda _: ("classification", "1"),
                               baselines={("m", "1"): {"accuracy": (0.9, 0.85, 0.95)}}, resamples=RESAMPLES)
    accuracy = [r for r in rows if r.metric == "accuracy"]
    assert [(r.window_start.hour, r.count, r.value) for r in accuracy] == [(10, 2, 1.0), (11, 1, 1.0)]
    assert accuracy[0].baseline == 0.9
    worse = PerformanceRow("m", "1", t0, t0, "accuracy", 0.7, 10, None, None, "wilson", baseline=0.9)
    assert below_baseline(worse, 0.1) and not below_baseline(worse, 0.25)
    error = PerformanceRow("m", "1", t0, t0, "mae", 3.0, 10, None, None, "bootstrap", baseline=1.0)
    assert below_baseline(error, 0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 3600 - 1), st.sampled_from(["1", "2"]), binary, binary), max_size=50))
def test_every_window_of_every_version_matches_scikit_learn(items: list[tuple[int, str, str, str]]) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    predictions = [LabelledPrediction("m", version, t0 + timedelta(seconds=offset), prediction=predicted, label=label)
                   for offset, version, label, predicted in items]
    rows = compute_performance(predictions, window=timedelta(hours=1), tasks=lambda _: ("classification", "1"),
                               resamples=RESAMPLES)
    expected: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
    for offset, version, label, predicted in items:
        labels, predicted_list = expected.setdefault((version, offset // 3600), ([], []))
        labels.append(label)
        predicted_list.append(predicted)
    got = {(r.model_version, r.window_start.hour): r for r in rows if r.metric == "f1"}
    assert set(got) == set(expected)
    for key, (labels, predicted_list) in expected.items():
        assert got[key].count == len(labels)
        assert got[key].value == pytest.approx(skm.f1_score(labels, predicted_list, pos_label="1", zero_division=0))
