"""Drift statistics against SciPy (the oracle) on known distributions, and the window summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from provline.producers.profile import profile_table
from provline.stream_processors.drift import (
    OUTPUT_PREFIX,
    BaselineCache,
    CategoricalBaseline,
    DriftAccumulator,
    NumericBaseline,
    Thresholds,
    add_value,
    chi2_sf,
    chi_squared,
    drift_metric_fields,
    jensen_shannon,
    kolmogorov_sf,
    ks_p_value,
    ks_statistic,
    make_baseline,
    merge_summaries,
    merge_window,
    new_summary,
    psi,
    wasserstein,
    window_due,
    window_metrics,
    window_start,
)

TOLERANCE = 1e-6
RNG = np.random.default_rng(2024)


def histogram_pair(a: np.ndarray, b: np.ndarray) -> tuple[list[int], list[int]]:
    support = np.unique(np.concatenate([a, b]))
    return [int((a == v).sum()) for v in support], [int((b == v).sum()) for v in support]


@pytest.mark.parametrize(("p", "q"), [
    ([0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]),
    (list(stats.norm.pdf(np.linspace(-3, 3, 10))), list(stats.norm.pdf(np.linspace(-3, 3, 10), loc=0.5))),
    ([5, 0, 3, 2], [1, 4, 0, 5]),  # empty bins: both sides take PSI_EPSILON
])
def test_psi_matches_symmetric_kl_from_scipy(p: list[float], q: list[float]) -> None:
    e = np.array(p, float) / sum(p)
    a = np.array(q, float) / sum(q)
    e[e == 0] = 1e-4
    a[a == 0] = 1e-4
    assert psi(p, q) == pytest.approx(float(np.sum(rel_entr(a, e) + rel_entr(e, a))), abs=TOLERANCE)


@pytest.mark.parametrize(("p", "q"), [
    ([0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]),
    ([5, 0, 3, 2], [1, 4, 0, 5]),
    (list(stats.binom.pmf(range(20), 19, 0.3)), list(stats.binom.pmf(range(20), 19, 0.6))),
    ([1, 2, 3], [1, 2, 3]),
])
def test_jensen_shannon_matches_scipy(p: list[float], q: list[float]) -> None:
    assert jensen_shannon(p, q) == pytest.approx(float(jensenshannon(p, q)), abs=TOLERANCE)


@pytest.mark.parametrize(("a", "b"), [
    (RNG.poisson(4, 3_000), RNG.poisson(4.4, 1_700)),
    (RNG.integers(0, 20, 2_500), RNG.integers(0, 20, 2_500)),
    (RNG.binomial(30, 0.5, 900), RNG.binomial(30, 0.3, 400)),
])
def test_ks_statistic_and_p_value_match_scipy(a: np.ndarray, b: np.ndarray) -> None:
    # integer data: histograms on the shared support are exact, so the KS statistic is too
    counts_a, counts_b = histogram_pair(a, b)
    result = stats.ks_2samp(a, b, method="asymp")
    statistic = ks_statistic(counts_a, counts_b)
    assert statistic == pytest.approx(float(result.statistic), abs=TOLERANCE)
    # the p-value is the limiting Kolmogorov distribution of sqrt(n m / (n + m)) D
    en = len(a) * len(b) / (len(a) + len(b))
    assert ks_p_value(statistic, len(a), len(b)) == pytest.approx(
        float(stats.kstwobign.sf(np.sqrt(en) * statistic)), abs=TOLERANCE)


@pytest.mark.parametrize("x", [0.0, 0.05, 0.3, 0.6, 0.8277, 0.99, 1.0, 1.36, 1.63, 2.5, 4.0])
def test_kolmogorov_survival_matches_scipy(x: float) -> None:
    assert kolmogorov_sf(x) == pytest.approx(float(stats.kstwobign.sf(x)), abs=TOLERANCE)


@pytest.mark.parametrize(("u", "v", "weighted"), [
    (RNG.normal(0, 1, 500), RNG.normal(1, 2, 300), True),
    (RNG.exponential(2, 400), RNG.exponential(3, 400), False),
    (RNG.uniform(0, 1, 50), RNG.uniform(0, 1, 50), True),
])
def test_wasserstein_matches_scipy(u: np.ndarray, v: np.ndarray, weighted: bool) -> None:
    wu = RNG.random(len(u)) if weighted else np.ones(len(u))
    wv = RNG.random(len(v)) if weighted else np.ones(len(v))
    assert wasserstein(u, wu, v, wv) == pytest.approx(float(stats.wasserstein_distance(u, v, wu, wv)),
                                                      abs=TOLERANCE)


@pytest.mark.parametrize(("observed", "expected"), [
    ([180, 95, 25], [0.6, 0.3, 0.1]),
    ([100, 100, 100], [0.6, 0.3, 0.1]),
    (list(RNG.multinomial(5_000, [0.2] * 5)), [0.2] * 5),
])
def test_chi_squared_matches_scipy(observed: list[int], expected: list[float]) -> None:
    statistic, p_value = chi_squared(observed, expected)
    oracle = stats.chisquare(observed, np.array(expected) / sum(expected) * sum(observed))
    assert statistic == pytest.approx(float(oracle.statistic), abs=TOLERANCE)
    assert p_value == pytest.approx(float(oracle.pvalue), abs=TOLERANCE)


@pytest.mark.parametrize("degrees", [1, 2, 3, 9, 50, 400])
@pytest.mark.parametrize("x", [0.001, 0.5, 2.0, 9.0, 60.0, 450.0])
def test_chi2_survival_matches_scipy(degrees: int, x: float) -> None:
    assert chi2_sf(x, degrees) == pytest.approx(float(stats.chi2.sf(x, degrees)), abs=TOLERANCE)


def test_statistics_refuse_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive total"):
        jensen_shannon([0, 0], [1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        ks_p_value(0.1, 0, 5)
    with pytest.raises(ValueError, match="degree of freedom"):
        chi2_sf(1.0, 0)


# --- baselines and summaries ---------------------------------------------------------------------------


def profiles(size: int = 20_000, seed: int = 1) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    table = pa.table({
        "x": rng.normal(0, 1, size), "plan": rng.choice(["basic", "gold", "platinum"], size, p=[0.6, 0.3, 0.1]),
        "small": rng.integers(0, 4, size),
    })
    return {p["column"]: p for p in profile_table(table).profiles}


def summary_of(values: list, baseline: NumericBaseline | CategoricalBaseline) -> dict:
    summary = new_summary(baseline, digest="d1", column="x")
    for value in values:
        add_value(summary, baseline, value)
    return summary


def test_numeric_baseline_masses_follow_the_quantiles() -> None:
    baseline = make_baseline(profiles()["x"])
    assert isinstance(baseline, NumericBaseline)
    assert sum(baseline.masses) == pytest.approx(1.0) and baseline.masses[0] == 0
    assert len(baseline.masses) == len(baseline.grid) + 1
    # a discrete column: tied quantiles become point masses, near the true frequencies (1/4 each)
    small = make_baseline(profiles()["small"])
    assert isinstance(small, NumericBaseline) and small.grid == [0.0, 1.0, 2.0, 3.0]
    values, weights = small.points()
    assert sum(weights) == pytest.approx(1.0)
    point_masses = dict(zip(values, weights, strict=True))
    assert all(point_masses[v] == pytest.approx(0.25, abs=0.02) for v in (0.0, 1.0, 2.0, 3.0))


def test_summaries_bin_like_the_baseline_and_merge() -> None:
    baseline = make_baseline(profiles()["x"])
    values = list(RNG.normal(0, 1, 1_000))
    summary = summary_of([*values, None, float("nan"), "oops"], baseline)
    assert (summary["n"], summary["null"], summary["bad"]) == (1_000, 2, 1)
    # the decile histogram is numpy's, with values outside the edges folded into the end bins
    edges = np.array(baseline.edges)
    clipped = np.clip(values, edges[0], edges[-1])
    assert summary["coarse"] == list(np.histogram(clipped, bins=edges)[0])
    assert sum(summary["fine"]) == 1_000 and sum(summary["sums"]) == pytest.approx(sum(values))
    json.dumps(summary)  # it travels as JSON
    first, second = summary_of(values[:400], baseline), summary_of(values[400:], baseline)
    merged = merge_summaries(first, second)
    assert merged["coarse"] == summary_of(values, baseline)["coarse"] and merged["n"] == 1_000
    assert merged["lo"] == min(values) and merged["hi"] == max(values)
    with pytest.raises(ValueError, match="different baselines"):
        merge_summaries(first, {**second, "b": "other"})


def test_window_metrics_flag_a_shift_and_not_the_same_distribution() -> None:
    numeric = make_baseline(profiles()["x"])
    categorical = make_baseline(profiles()["plan"])
    rng = np.random.default_rng(7)
    same = window_metrics(summary_of(list(rng.normal(0, 1, 3_000)), numeric), numeric, Thresholds())
    shifted = window_metrics(summary_of(list(rng.normal(0.7, 1, 3_000)), numeric), numeric, Thresholds())
    assert [m.metric for m in same] == ["psi", "ks", "jensen_shannon", "wasserstein"]
    assert not any(m.breached for m in same), same
    assert all(m.breached for m in shifted), shifted
    # the metrics are the statistics of the binned distributions
    s = summary_of(list(rng.normal(0.7, 1, 3_000)), numeric)
    psi_value = window_metrics(s, numeric, Thresholds())[0].value
    assert psi_value == pytest.approx(psi(numeric.bin_counts, s["coarse"]))
    wass = window_metrics(s, numeric, Thresholds())[3].value
    cur = [(t / c, c) for c, t in zip(s["fine"], s["sums"], strict=True) if c]
    base_values, base_weights = numeric.points()
    oracle = stats.wasserstein_distance(base_values, [v for v, _ in cur], base_weights, [w for _, w in cur])
    assert wass == pytest.approx(oracle / numeric.std, abs=TOLERANCE)

    plans = ["basic", "gold", "platinum"]
    same_c = window_metrics(summary_of(list(rng.choice(plans, 3_000, p=[0.6, 0.3, 0.1])), categorical),
                            categorical, Thresholds())
    shifted_c = window_metrics(summary_of(list(rng.choice(plans, 3_000, p=[0.3, 0.3, 0.4])), categorical),
                               categorical, Thresholds())
    assert [m.metric for m in same_c] == ["jensen_shannon", "chi_squared"]
    assert not any(m.breached for m in same_c) and all(m.breached for m in shifted_c)
    # a category the training data never had is drift, and stays finite
    unseen = window_metrics(summary_of(["basic"] * 90 + ["diamond"] * 10, categorical), categorical, Thresholds())
    assert all(m.breached and np.isfinite(m.value) for m in unseen)
    assert window_metrics(summary_of([None, None], numeric), numeric, Thresholds()) == []


def test_thresholds_are_configurable() -> None:
    numeric = make_baseline(profiles()["x"])
    s = summary_of(list(np.random.default_rng(3).normal(0.2, 1, 2_000)), numeric)
    strict = {m.metric: m.breached for m in window_metrics(s, numeric, Thresholds(psi=1e-6))}
    lenient = {m.metric: m.breached for m in window_metrics(s, numeric, Thresholds(psi=10.0))}
    assert strict["psi"] is True and lenient["psi"] is False


def test_unusable_profiles_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="re-record the dataset"):
        make_baseline({"column": "x", "kind": "NUMERIC", "quantiles": [], "bin_edges": [], "bin_counts": []})
    with pytest.raises(ValueError, match="re-record the dataset"):
        make_baseline({"column": "c", "kind": "CATEGORICAL", "categories": {}})


def test_accumulator_windows_merge_and_close_into_drift_metrics() -> None:
    known = profiles()
    lookups = {("churn", "1", name): ("d1", profile) for name, profile in known.items()}
    accumulator = DriftAccumulator(
        lambda m, v, c, output=False, label_column=None: lookups.get((m, v, (label_column or c) if output else c)),
        window_us=60_000_000, output_columns={"label": "plan"})
    t0 = 1_700_000_000_000_000
    for index in range(100):
        accumulator.add({"model_name": "churn", "model_version": "1", "request_time": t0 + index * 1000,
                         "response_time": None, "features": {"x": 0.1 * index, "plan": "gold", "unknown": 1.0},
                         "outputs": {"label": "gold"}})
    accumulator.add({"model_name": None, "model_version": None, "request_time": t0, "features": {"x": 1.0}})
    [partial] = accumulator.drain()
    assert accumulator.drain() == [] and accumulator.unprofiled == 100  # "unknown" has no profile
    assert (partial["m"], partial["v"], partial["w"]) == ("churn", "1", window_start(t0, 60_000_000))
    assert set(partial["f"]) == {"x", "plan", OUTPUT_PREFIX + "label"}
    window = merge_window(merge_window(None, partial), partial)
    assert window["f"]["x"]["n"] == 200
    assert not window_due(window, now_us=partial["w"] + 60_000_000, window_us=60_000_000, lateness_us=1)
    assert window_due(window, now_us=partial["w"] + 60_000_001, window_us=60_000_000, lateness_us=1)
    fields = drift_metric_fields(window, BaselineCache(lambda d, c: known.get(c)), Thresholds(),
                                 window_us=60_000_000)
    by_feature = {(f["feature"], f["metric"]) for f in fields}
    assert by_feature == {("x", m) for m in ("psi", "ks", "jensen_shannon", "wasserstein")} | {
        (f, m) for f in ("plan", OUTPUT_PREFIX + "label") for m in ("jensen_shannon", "chi_squared")}
    # every "plan" value is "gold", where the training data had 30% of them
    assert all(f["breached"] for f in fields if f["feature"] == "plan")
    assert all(f["sample_size"] == 200 and f["baseline_dataset"] == "d1" for f in fields)


# --- issue 14: every row of a batch, a minimum sample size, outputs against the model's own predictions ----

T0_US = 1_700_000_000_000_000
WINDOW_US = 60_000_000


def closed_window_fields(accumulator: DriftAccumulator, profile_of) -> list:
    window = None
    for partial in accumulator.drain():
        window = merge_window(window, partial)
    assert window is not None, "nothing was accumulated"
    return drift_metric_fields(window, BaselineCache(profile_of), Thresholds(), window_us=WINDOW_US)


def test_every_row_of_a_batch_trace_is_counted() -> None:
    known = profiles()
    accumulator = DriftAccumulator(lambda m, v, c, output=False, label_column=None: ("d1", known[c])
                                   if c in known else None,
                                   window_us=WINDOW_US)
    rng = np.random.default_rng(5)
    for request in range(10):
        rows = [{"x": float(v)} for v in rng.normal(0, 1, 50)]
        accumulator.add({"model_name": "churn", "model_version": "1", "request_time": T0_US + request,
                         "features": rows[0], "feature_rows": rows, "outputs": {"plan": "gold"},
                         "output_rows": [{"plan": "gold"}] * 50})
    accumulator.add({"model_name": "churn", "model_version": "1", "request_time": T0_US, "features": {"x": 0.5},
                     "outputs": {}})  # a trace of one row, without the row lists
    fields = closed_window_fields(accumulator, lambda d, c: known.get(c))
    sizes = {(f["feature"], f["sample_size"]) for f in fields}
    assert sizes == {("x", 501), (OUTPUT_PREFIX + "plan", 500)}


def test_a_small_window_is_reported_but_never_breached() -> None:
    numeric = make_baseline(profiles()["x"])
    far_away = summary_of([8.0] * 8, numeric)  # the user's case: 8 samples breached every metric
    small = window_metrics(far_away, numeric, Thresholds())
    assert [m.metric for m in small] == ["psi", "ks", "jensen_shannon", "wasserstein"]
    assert small[0].value > 1 and not any(m.breached for m in small)
    assert all(m.breached for m in window_metrics(far_away, numeric, Thresholds(min_samples=8)))
    enough = summary_of([8.0] * 100, numeric)
    assert all(m.breached for m in window_metrics(enough, numeric, Thresholds()))
    categorical = make_baseline(profiles()["plan"])
    assert not any(m.breached for m in window_metrics(summary_of(["diamond"] * 99, categorical), categorical,
                                                      Thresholds()))


def _drift_of_a_regressor(artifact: Path, *, with_predictions: bool) -> dict[str, dict]:
    """A real scikit-learn regression job recorded through the producers, its events in a LineageIndex,
    and in-distribution traffic's output drift: {metric: DriftMetric fields} of ``output:predict``."""
    from sklearn import linear_model  # a test dependency: missing is a failure, not a skip

    from provline.stream_processors.lineage import LineageIndex
    from tests.helpers import decoded, memory_lineage

    rng = np.random.default_rng(21)

    def data(size: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0, 1, (size, 3))
        return x, x @ np.array([1.5, -0.5, 0.8]) + rng.normal(0, 2.0, size)  # much noise: labels spread wider

    x_train, y_train = data(4_000)
    x_eval, _ = data(2_000)
    model = linear_model.LinearRegression().fit(x_train, y_train)
    lineage = memory_lineage()
    with lineage.run("train") as run:
        frame = pd.DataFrame(x_train, columns=["a", "b", "c"]).assign(target=y_train)  # the label
        run.use_dataset(frame, name="train")
        run.register_model(artifact, name="price", version="1", signature={"inputs": ["a", "b", "c"],
                           "outputs": ["predict"]}, predictions=model.predict(x_eval) if with_predictions else None)
    index = LineageIndex()
    for kind, value in decoded(lineage.emitter):
        index.ingest(kind, value)

    # the output-to-label mapping a user sets for the fallback; the predictions' profile is named by the output
    accumulator = DriftAccumulator(index.baseline_of, window_us=WINDOW_US, output_columns={"predict": "target"})
    x_live, _ = data(1_000)  # the same distribution the model was trained and evaluated on
    predicted = model.predict(x_live)
    for i in range(0, 1_000, 50):
        accumulator.add({"model_name": "price", "model_version": "1", "request_time": T0_US,
                         "feature_rows": [dict(zip("abc", map(float, row), strict=True)) for row in x_live[i:i + 50]],
                         "output_rows": [{"predict": float(p)} for p in predicted[i:i + 50]]})
    fields = closed_window_fields(accumulator, index.profile)
    return {f["metric"]: f for f in fields if f["feature"] == OUTPUT_PREFIX + "predict"}


def test_an_in_distribution_regressor_does_not_breach_against_its_own_predictions(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"pickle")
    against_predictions = _drift_of_a_regressor(artifact, with_predictions=True)
    assert set(against_predictions) == {"psi", "ks", "jensen_shannon", "wasserstein"}
    assert not any(m["breached"] for m in against_predictions.values()), against_predictions
    assert all(m["sample_size"] == 1_000 for m in against_predictions.values())
    # without a prediction profile, the label column is the baseline: predictions are narrower than labels
    against_label = _drift_of_a_regressor(artifact, with_predictions=False)
    assert against_label["psi"]["breached"] and against_label["psi"]["value"] > 0.1
    assert against_label["psi"]["baseline_dataset"] != against_predictions["psi"]["baseline_dataset"]
