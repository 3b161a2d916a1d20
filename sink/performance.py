"""Model performance once labels arrive: metrics with sample counts and confidence intervals.

Pure functions; no I/O. :func:`compute_performance` takes labelled predictions (a trace's outputs
joined to its stored feedback by prediction id, whenever the label arrived) and gives, per model
name + version and window of *prediction* time, one :class:`PerformanceRow` per metric:

=================  =============================================  ==================================
task               metrics                                        confidence interval
=================  =============================================  ==================================
``classification``  ``accuracy``                                  Wilson score interval
                   ``precision``, ``recall`` (binary, positive     Wilson (they are proportions)
                   label)
                   ``precision``, ``recall`` (macro, multiclass)   percentile bootstrap
                   ``f1`` (binary or macro), ``roc_auc`` (binary,  percentile bootstrap
                   from a score)
``regression``     ``mae``, ``rmse``                               percentile bootstrap
=================  =============================================  ==================================

The definitions are scikit-learn's (``zero_division=0``; ROC AUC is the Mann-Whitney statistic
with tied scores counted one half, so ties agree with ``roc_auc_score``); a metric that is not
defined on a window (AUC with one class only, no labels) is left out rather than guessed. The
bootstrap resamples with a fixed seed (:data:`BOOTSTRAP_SEED`), so the same data gives the same
interval on every run and every host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 17
_Z = 1.959963984540054  # the standard normal's 97.5 % quantile, for 95 % intervals

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class Estimate:
    """A metric's value, its sample count and its confidence interval (None where not defined)."""

    value: float
    count: int
    ci_low: float | None
    ci_high: float | None
    method: str  # "wilson", "bootstrap" or "none"


@dataclass(frozen=True)
class LabelledPrediction:
    """One prediction with its ground truth: ``prediction`` and ``label`` as text for classifiers,
    ``prediction`` as a number and ``outcome`` for regressors; ``score`` is the positive class's score."""

    model_name: str
    model_version: str
    predicted_at: datetime
    prediction: str | float | None
    label: str | None = None
    outcome: float | None = None
    score: float | None = None


@dataclass(frozen=True)
class PerformanceRow:
    """One metric of one model version on one window, as stored in ``model_performance``."""

    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    metric: str
    value: float
    count: int
    ci_low: float | None
    ci_high: float | None
    method: str
    baseline: float | None = None  # the Evaluation's value of this metric, where one was recorded
    baseline_ci_low: float | None = None
    baseline_ci_high: float | None = None


def wilson(successes: int, n: int, *, z: float = _Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (n > 0)."""
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # exact at the ends (the formula gives 0 and 1 there only up to rounding)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap(statistic: Callable[[np.ndarray], float | None], n: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """The percentile bootstrap interval of ``statistic(indices)`` over ``resamples`` resamples of ``range(n)``.

    Resamples on which the statistic is undefined (it returns None, e.g. AUC of a one-class resample)
    are skipped; with fewer than half of them defined there is no interval.
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = statistic(rng.integers(0, n, size=n))
        if value is not None and not math.isnan(value):
            values.append(value)
    if len(values) < resamples / 2:
        return None, None
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(values), [alpha, 1 - alpha])
    return float(low), float(high)


def _precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, label: object) -> tuple[float, float, float]:
    true_positive = int(np.sum((y_pred == label) & (y_true == label)))
    predicted = int(np.sum(y_pred == label))
    actual = int(np.sum(y_true == label))
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    f1 = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
    return precision, recall, f1


def _macro(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the labels present in either array (scikit-learn's labels)."""
    labels = np.union1d(y_true, y_pred)
    scores = np.array([_precision_recall_f1(y_true, y_pred, label) for label in labels])
    return float(scores[:, 0].mean()), float(scores[:, 1].mean()), float(scores[:, 2].mean())


def roc_auc(y_true: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the positive class (``y_true`` True), ties counted one half;
    None when only one class is present."""
    truth = np.asarray(y_true, dtype=bool)
    values = np.asarray(scores, dtype=float)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # average ranks over ties (1-based)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = float(ranks[truth].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _proportion(value: float, successes: int, n: int) -> Estimate:
    if n == 0:
        return Estimate(value, 0, None, None, "none")
    low, high = wilson(successes, n)
    return Estimate(value, n, low, high, "wilson")


def classification_metrics(labels: Sequence[str], predictions: Sequence[str], *, positive_label: str | None = None,
                           scores: Sequence[float | None] | None = None,
                           resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Estimate]:
    """Accuracy, precision, recall and F1 (binary for ``positive_label``, else macro), and ROC AUC
    where every prediction has a score and a positive label is named. Empty when there are no labels."""
    n = len(labels)
    if n == 0:
        return {}
    y_true = np.asarray(labels, dtype=object)
    y_pred = np.asarray(predictions, dtype=object)
    correct = int(np.sum(y_true == y_pred))
    low, high = wilson(correct, n)
    out = {"accuracy": Estimate(correct / n, n, low, high, "wilson")}
    if positive_label is not None:
        precision, recall, f1 = _precision_recall_f1(y_true, y_pred, positive_label)
        predicted = int(np.sum(y_pred == positive_label))
        actual = int(np.sum(y_true == positive_label))
        true_positive = int(np.sum((y_pred == positive_label) & (y_true == positive_label)))
        out["precision"] = _proportion(precision, true_positive, predicted)
        out["recall"] = _proportion(recall, true_positive, actual)
        f1_low, f1_high = bootstrap(lambda i: _precision_recall_f1(y_true[i], y_pred[i], positive_label)[2], n,
                                    resamples=resamples)
        out["f1"] = Estimate(f1, n, f1_low, f1_high, "bootstrap")
        if scores is not None and len(scores) == n and all(s is not None for s in scores):
            truth = y_true == positive_label
            values = np.asarray(scores, dtype=float)
            auc = roc_auc(truth, values)
            if auc is not None:
                auc_low, auc_high = bootstrap(lambda i: roc_auc(truth[i], values[i]), n, resamples=resamples)
                out["roc_auc"] = Estimate(auc, n, auc_low, auc_high, "bootstrap")
    else:
        precision, recall, f1 = _macro(y_true, y_pred)
        for index, (name, value) in enumerate((("precision", precision), ("recall", recall), ("f1", f1))):
            def macro_part(i: np.ndarray, k: int = index) -> float:
                return _macro(y_true[i], y_pred[i])[k]

            low_b, high_b = bootstrap(macro_part, n, resamples=resamples)
            out[name] = Estimate(value, n, low_b, high_b, "bootstrap")
    return out


def regression_metrics(outcomes: Sequence[float], predictions: Sequence[float], *,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Estimate]:
    """MAE and RMSE with bootstrap intervals; empty when there are no outcomes."""
    n = len(outcomes)
    if n == 0:
        return {}
    errors = np.asarray(predictions, dtype=float) - np.asarray(outcomes, dtype=float)
    mae = float(np.mean(np.abs(errors)))
    rmse = float(np.sqrt(np.mean(errors ** 2)))
    mae_ci = bootstrap(lambda i: float(np.mean(np.abs(errors[i]))), n, resamples=resamples)
    rmse_ci = bootstrap(lambda i: float(np.sqrt(np.mean(errors[i] ** 2))), n, resamples=resamples)
    return {"mae": Estimate(mae, n, *mae_ci, "bootstrap"), "rmse": Estimate(rmse, n, *rmse_ci, "bootstrap")}


def window_start(moment: datetime, window: timedelta) -> datetime:
    """The start of the window of size ``window`` (aligned to the Unix epoch, UTC) holding ``moment``."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return epoch + window * ((aware - epoch) // window)


# Metrics where lower is better; the rest are better higher.
LOWER_IS_BETTER = frozenset({"mae", "rmse"})


def compute_performance(predictions: Iterable[LabelledPrediction], *, window: timedelta,
                        tasks: Callable[[str], tuple[str, str | None]],
                        baselines: dict[tuple[str, str], dict[str, tuple[float, float | None, float | None]]]
                        | None = None,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> list[PerformanceRow]:
    """One row per model version, window and metric, from labelled predictions.

    ``tasks(model_name)`` gives the model's task (``classification`` / ``regression``) and positive
    label (None for multiclass); ``baselines[(name, version)][metric]`` is the evaluated
    ``(value, ci_low, ci_high)``. Predictions without ground truth or prediction are skipped.
    """
    groups: dict[tuple[str, str, datetime], list[LabelledPrediction]] = {}
    for item in predictions:
        groups.setdefault((item.model_name, item.model_version, window_start(item.predicted_at, window)),
                          []).append(item)
    rows = []
    for (name, version, start), items in sorted(groups.items()):
        task, positive = tasks(name)
        if task == REGRESSION:
            kept = [i for i in items if i.outcome is not None and isinstance(i.prediction, int | float)]
            metrics = regression_metrics([float(i.outcome) for i in kept if i.outcome is not None],
                                         [float(i.prediction) for i in kept if isinstance(i.prediction, int | float)],
                                         resamples=resamples)
        else:
            labelled = [i for i in items if i.label is not None and i.prediction is not None]
            metrics = classification_metrics([str(i.label) for i in labelled],
                                             [_as_label(i.prediction) for i in labelled],
                                             positive_label=positive, scores=[i.score for i in labelled],
                                             resamples=resamples)
        baseline = (baselines or {}).get((name, version), {})
        for metric, estimate in sorted(metrics.items()):
            value, low, high = baseline.get(metric, (None, None, None))
            rows.append(PerformanceRow(name, version, start, start + window, metric, estimate.value, estimate.count,
                                       estimate.ci_low, estimate.ci_high, estimate.method, value, low, high))
    return rows


def _as_label(prediction: str | float | None) -> str:
    """A predicted class as the text a label is sent as: 1.0 -> "1", "setosa" -> "setosa"."""
    if isinstance(prediction, float) and prediction.is_integer():
        return str(int(prediction))
    return str(prediction)


def below_baseline(row: PerformanceRow, margin: float) -> bool:
    """Whether a window's metric is worse than the evaluated baseline by more than ``margin``."""
    if row.baseline is None:
        return False
    if row.metric in LOWER_IS_BETTER:
        return row.value > row.baseline + margin
    return row.value < row.baseline - margin
