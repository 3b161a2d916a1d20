"""Drift of a model's inputs against the column profiles of its training data, and of its outputs
against the profile of its own predictions on its evaluation data.

Pure logic, no I/O, no SciPy (the unit tests use SciPy as the oracle). Three layers:

* statistics on explicit distributions: :func:`psi`, :func:`jensen_shannon`, :func:`ks_statistic`
  with :func:`kolmogorov_sf`, :func:`wasserstein`, :func:`chi_squared` with :func:`chi2_sf`;
* baselines built once from a DatasetVersion column profile (:class:`NumericBaseline`,
  :class:`CategoricalBaseline`) and window summaries that are mergeable JSON-able dicts
  (:func:`new_summary`, :func:`add_value`, :func:`merge_summaries`):
  numeric values are counted on the baseline's decile ``bin_edges`` (PSI, Jensen-Shannon) and on its
  101-point ``quantiles`` grid, with per-bin sums (Kolmogorov-Smirnov, Wasserstein); categorical
  values are counted per category;
* :func:`window_metrics`: the metrics of one closed window of one feature.

Defaults follow Evidently's: 0.1 for distances (PSI, Jensen-Shannon, normed Wasserstein) and
p < 0.05 for tests (Kolmogorov-Smirnov, chi-squared); all configurable through :class:`Thresholds`.
A window with fewer than ``min_samples`` values still gets its metrics, but none is breached: a
handful of values differs from any baseline by chance.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Required, TypedDict

log = logging.getLogger(__name__)
DEFAULT_DISTANCE_THRESHOLD = 0.1
DEFAULT_P_VALUE = 0.05
DEFAULT_MIN_SAMPLES = 100
PSI_EPSILON = 1e-4  # the probability given to an empty bin, as Evidently does
NUMERIC = "NUMERIC"
CATEGORICAL = "CATEGORICAL"
OUTPUT_PREFIX = "output:"


# --- statistics on explicit distributions ---------------------------------------------------------------


def _normalised(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"a distribution needs a positive total weight; got {total}")
    return [w / total for w in weights]


def psi(expected: Sequence[float], actual: Sequence[float], *, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (weights per bin, same bins).

    ``sum((a - e) * ln(a / e))`` over bins, empty bins taken as ``epsilon``.
    """
    if len(expected) != len(actual):
        raise ValueError(f"PSI needs the same bins; got {len(expected)} and {len(actual)}")
    total = 0.0
    for e, a in zip(_normalised(expected), _normalised(actual), strict=True):
        e = e or epsilon
        a = a or epsilon
        total += (a - e) * math.log(a / e)
    return total


def jensen_shannon(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (natural log, the square root of the divergence) of two weight vectors."""
    if len(p) != len(q):
        raise ValueError(f"Jensen-Shannon needs the same bins; got {len(p)} and {len(q)}")
    divergence = 0.0
    for a, b in zip(_normalised(p), _normalised(q), strict=True):
        m = (a + b) / 2
        if a > 0:
            divergence += a * math.log(a / m)
        if b > 0:
            divergence += b * math.log(b / m)
    return math.sqrt(max(divergence / 2, 0.0))


def ks_statistic(p: Sequence[float], q: Sequence[float]) -> float:
    """Largest distance between the CDFs of two weight vectors over the same ordered bins."""
    if len(p) != len(q):
        raise ValueError(f"Kolmogorov-Smirnov needs the same bins; got {len(p)} and {len(q)}")
    cdf_p = cdf_q = 0.0
    largest = 0.0
    for a, b in zip(_normalised(p), _normalised(q), strict=True):
        cdf_p += a
        cdf_q += b
        largest = max(largest, abs(cdf_p - cdf_q))
    return min(largest, 1.0)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit of sqrt(n) * D_n)."""
    if x <= 0:
        return 1.0
    if x < 1.0:
        # the series in exp(-2 k^2 x^2) converges slowly here; use Jacobi's dual form
        total = sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x)) for k in range(1, 20))
        return max(0.0, min(1.0, 1.0 - math.sqrt(2 * math.pi) / x * total))
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return max(0.0, min(1.0, 2 * total))


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sample p-value of a KS statistic between samples of sizes ``n`` and ``m``."""
    if n <= 0 or m <= 0:
        raise ValueError(f"KS needs two non-empty samples; got sizes {n} and {m}")
    return kolmogorov_sf(math.sqrt(n * m / (n + m)) * statistic)


def wasserstein(
    u_values: Sequence[float], u_weights: Sequence[float], v_values: Sequence[float], v_weights: Sequence[float]
) -> float:
    """First Wasserstein distance between two weighted point sets on the real line."""
    u = sorted(zip(u_values, _normalised(u_weights), strict=True))
    v = sorted(zip(v_values, _normalised(v_weights), strict=True))
    points = sorted({x for x, _ in u} | {x for x, _ in v})
    iu = iv = 0
    cdf_u = cdf_v = 0.0
    distance = 0.0
    for here, there in zip(points, points[1:], strict=False):
        while iu < len(u) and u[iu][0] <= here:
            cdf_u += u[iu][1]
            iu += 1
        while iv < len(v) and v[iv][0] <= here:
            cdf_v += v[iv][1]
            iv += 1
        distance += abs(cdf_u - cdf_v) * (there - here)
    return distance


def chi2_sf(statistic: float, degrees: int) -> float:
    """P(X > statistic) for a chi-squared variable with ``degrees`` degrees of freedom."""
    if degrees <= 0:
        raise ValueError(f"chi-squared needs at least one degree of freedom; got {degrees}")
    return _gamma_q(degrees / 2, statistic / 2)


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma function Q(a, x)."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # continued fraction for Q(a, x) (modified Lentz)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_front) * h)


def chi_squared(observed: Sequence[float], expected: Sequence[float]) -> tuple[float, float]:
    """Pearson's goodness-of-fit statistic and p-value; ``expected`` is rescaled to ``observed``'s total."""
    if len(observed) != len(expected):
        raise ValueError(f"chi-squared needs the same categories; got {len(observed)} and {len(expected)}")
    total = float(sum(observed))
    statistic = 0.0
    for o, e in zip(observed, _normalised(expected), strict=True):
        e *= total
        statistic += (o - e) ** 2 / e
    return statistic, chi2_sf(statistic, len(observed) - 1)


# --- baselines and window summaries -----------------------------------------------------------------------


class Summary(TypedDict, total=False):
    """One feature's values in one window, binned for its baseline; compact JSON (it travels and is stored)."""

    k: Required[Literal["NUMERIC", "CATEGORICAL"]]  # the baseline's kind
    b: Required[str]  # digest of the baseline's dataset
    c: Required[str]  # the training column compared with
    n: Required[int]  # values counted
    null: Required[int]  # nulls and NaN
    bad: Required[int]  # values of the wrong kind (text for a number, infinities)
    lo: float | None  # numeric: smallest and largest value
    hi: float | None
    coarse: list[int]  # numeric: counts per baseline decile bin (PSI, Jensen-Shannon)
    fine: list[int]  # numeric: counts per quantile-grid bin (KS, Wasserstein)
    sums: list[float]  # numeric: sum of the values per quantile-grid bin
    cats: dict[str, int]  # categorical: counts per category


class Window(TypedDict, total=False):
    """A model version's summaries in one window: a partial from one batch, or the merged open window,
    or (with ``closed`` and no ``f``) the marker left when it closed."""

    m: Required[str]  # model name
    v: Required[str]  # model version
    w: Required[int]  # window start, UTC microseconds
    f: dict[str, Summary]  # feature (``output:`` prefixed for outputs) -> its summary
    p: int  # merged windows: the partials topic partition it lives on
    closed: float  # wall-clock seconds when it closed


@dataclass(frozen=True)
class Thresholds:
    psi: float = DEFAULT_DISTANCE_THRESHOLD
    jensen_shannon: float = DEFAULT_DISTANCE_THRESHOLD
    wasserstein: float = DEFAULT_DISTANCE_THRESHOLD  # of the distance divided by the baseline's std
    ks_p_value: float = DEFAULT_P_VALUE
    chi_squared_p_value: float = DEFAULT_P_VALUE
    min_samples: int = DEFAULT_MIN_SAMPLES  # fewer values in a window: reported, never breached


class NumericBaseline:
    """A numeric column profile, prepared once: its bins, and its distribution on the quantile grid.

    ``grid`` are the distinct quantiles U_0 < ... < U_k; bin 0 is below U_0, bin i+1 is
    [U_i, U_i+1), the last is [U_k, inf). ``masses`` is the baseline's probability per grid bin,
    read off the quantiles (P(U_i <= X < U_i+1) = (first index of U_i+1 - first index of U_i) / 100).
    """

    kind = NUMERIC

    def __init__(self, profile: Mapping[str, Any]) -> None:
        quantiles = [float(q) for q in profile.get("quantiles") or []]
        edges = [float(e) for e in profile.get("bin_edges") or []]
        counts = [int(c) for c in profile.get("bin_counts") or []]
        if len(quantiles) < 2 or len(edges) < 2 or len(counts) != len(edges) - 1 or sum(counts) <= 0:
            raise ValueError(
                f"numeric profile of column {profile.get('column')!r} lacks quantiles or bins "
                f"({len(quantiles)} quantiles, {len(edges)} edges, {len(counts)} counts); "
                "re-record the dataset with a provline that profiles columns"
            )
        steps = len(quantiles) - 1
        self.grid: list[float] = []
        first_index: list[int] = []
        self._last_index: list[int] = []
        for index, q in enumerate(quantiles):
            if not self.grid or q > self.grid[-1]:
                self.grid.append(q)
                first_index.append(index)
                self._last_index.append(index)
            else:
                self._last_index[-1] = index
        bounds = [*first_index, steps]
        self.masses = [0.0] + [(bounds[i + 1] - bounds[i]) / steps for i in range(len(self.grid))]
        self._first_index = first_index
        self._steps = steps
        self.edges = edges
        self.bin_counts = counts
        self.std = float(profile["std"]) if profile.get("std") else None
        self.sample_size = int(profile.get("count") or 0) - int(profile.get("null_count") or 0)

    def points(self) -> tuple[list[float], list[float]]:
        """The baseline as weighted points: point masses at tied quantiles, the rest at interval midpoints."""
        values: list[float] = []
        weights: list[float] = []
        for i, u in enumerate(self.grid):
            tied = (self._last_index[i] - self._first_index[i]) / self._steps
            if tied > 0:
                values.append(u)
                weights.append(tied)
            if i + 1 < len(self.grid):
                between = (self._first_index[i + 1] - self._last_index[i]) / self._steps
                if between > 0:
                    values.append((u + self.grid[i + 1]) / 2)
                    weights.append(between)
        return values, weights


class CategoricalBaseline:
    kind = CATEGORICAL

    def __init__(self, profile: Mapping[str, Any]) -> None:
        self.categories = {str(k): int(v) for k, v in (profile.get("categories") or {}).items()}
        if not self.categories or sum(self.categories.values()) <= 0:
            raise ValueError(
                f"categorical profile of column {profile.get('column')!r} has no category counts; "
                "re-record the dataset with a provline that profiles columns"
            )
        self.sample_size = sum(self.categories.values())


Baseline = NumericBaseline | CategoricalBaseline


def make_baseline(profile: Mapping[str, Any]) -> Baseline:
    """The prepared baseline of a DatasetVersion column profile; ValueError if it cannot be used."""
    if profile.get("kind") == NUMERIC:
        return NumericBaseline(profile)
    return CategoricalBaseline(profile)


def new_summary(baseline: Baseline, *, digest: str, column: str) -> Summary:
    """An empty window summary binned for ``baseline`` (``column`` of dataset ``digest``)."""
    if isinstance(baseline, NumericBaseline):
        return {
            "k": "NUMERIC", "b": digest, "c": column, "n": 0, "null": 0, "bad": 0, "lo": None, "hi": None,
            "coarse": [0] * len(baseline.bin_counts), "fine": [0] * (len(baseline.grid) + 1),
            "sums": [0.0] * (len(baseline.grid) + 1),
        }
    return {"k": "CATEGORICAL", "b": digest, "c": column, "n": 0, "null": 0, "bad": 0, "cats": {}}


def category_of(value: Any) -> str:
    """How a value is counted as a category: booleans as Arrow writes them, the rest as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add_value(summary: Summary, baseline: Baseline, value: Any) -> None:
    """Count one observed value into ``summary`` (in place). None and NaN count as nulls."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        summary["null"] += 1
        return
    if isinstance(baseline, CategoricalBaseline):
        key = category_of(value)
        cats = summary["cats"]
        cats[key] = cats.get(key, 0) + 1
        summary["n"] += 1
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        summary["bad"] += 1  # a string where the training data had numbers
        return
    if math.isinf(x):
        summary["bad"] += 1
        return
    edges = baseline.edges
    coarse = min(max(bisect.bisect_right(edges, x) - 1, 0), len(edges) - 2)
    summary["coarse"][coarse] += 1
    fine = bisect.bisect_right(baseline.grid, x)
    summary["fine"][fine] += 1
    summary["sums"][fine] += x
    summary["n"] += 1
    summary["lo"] = x if summary["lo"] is None else min(summary["lo"], x)
    summary["hi"] = x if summary["hi"] is None else max(summary["hi"], x)


def merge_summaries(a: Summary, b: Summary) -> Summary:
    """The summary of both windows' values; both must be binned for the same baseline."""
    if a["k"] != b["k"] or a["b"] != b["b"] or (a["k"] == NUMERIC and len(a["fine"]) != len(b["fine"])):
        raise ValueError(f"cannot merge summaries of different baselines ({a['b']} and {b['b']})")
    merged: Summary = {**a, "n": a["n"] + b["n"], "null": a["null"] + b["null"], "bad": a["bad"] + b["bad"]}
    if a["k"] == NUMERIC:
        merged["coarse"] = [x + y for x, y in zip(a["coarse"], b["coarse"], strict=True)]
        merged["fine"] = [x + y for x, y in zip(a["fine"], b["fine"], strict=True)]
        merged["sums"] = [x + y for x, y in zip(a["sums"], b["sums"], strict=True)]
        lows = [v for v in (a["lo"], b["lo"]) if v is not None]
        highs = [v for v in (a["hi"], b["hi"]) if v is not None]
        merged["lo"] = min(lows) if lows else None
        merged["hi"] = max(highs) if highs else None
    else:
        cats = dict(a["cats"])
        for key, count in b["cats"].items():
            cats[key] = cats.get(key, 0) + count
        merged["cats"] = cats
    return merged


# --- metrics of a closed window ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricValue:
    metric: str
    value: float
    p_value: float | None
    threshold: float
    breached: bool


def _current_points(summary: Summary, baseline: NumericBaseline) -> tuple[list[float], list[float]]:
    """The window as weighted points: each grid bin's values at their mean."""
    values: list[float] = []
    weights: list[float] = []
    for count, total in zip(summary["fine"], summary["sums"], strict=True):
        if count:
            values.append(total / count)
            weights.append(count)
    return values, weights


def window_metrics(summary: Summary, baseline: Baseline, thresholds: Thresholds) -> list[MetricValue]:
    """PSI, KS, Jensen-Shannon and Wasserstein (numeric) or Jensen-Shannon and chi-squared (categorical).

    Empty windows (only nulls) give no metrics; windows of fewer than ``thresholds.min_samples``
    values give metrics that are not breached.
    """
    m = int(summary["n"])
    if m == 0:
        return []
    metrics = _window_metrics(summary, baseline, thresholds, m)
    if m >= thresholds.min_samples:
        return metrics
    return [MetricValue(v.metric, v.value, v.p_value, v.threshold, False) for v in metrics]


def _window_metrics(summary: Summary, baseline: Baseline, thresholds: Thresholds, m: int) -> list[MetricValue]:
    if isinstance(baseline, NumericBaseline):
        psi_value = psi(baseline.bin_counts, summary["coarse"])
        js_value = jensen_shannon(baseline.bin_counts, summary["coarse"])
        ks_value = ks_statistic(baseline.masses, summary["fine"])
        ks_p = ks_p_value(ks_value, max(baseline.sample_size, 1), m)
        base_values, base_weights = baseline.points()
        cur_values, cur_weights = _current_points(summary, baseline)
        distance = wasserstein(base_values, base_weights, cur_values, cur_weights)
        normed = distance / baseline.std if baseline.std else distance
        return [
            MetricValue("psi", psi_value, None, thresholds.psi, psi_value >= thresholds.psi),
            MetricValue("ks", ks_value, ks_p, thresholds.ks_p_value, ks_p < thresholds.ks_p_value),
            MetricValue("jensen_shannon", js_value, None, thresholds.jensen_shannon,
                        js_value >= thresholds.jensen_shannon),
            MetricValue("wasserstein", normed, None, thresholds.wasserstein, normed >= thresholds.wasserstein),
        ]
    categories = sorted(set(baseline.categories) | set(summary["cats"]))
    base_total = baseline.sample_size
    # a category the training data never had gets PSI_EPSILON, so chi-squared stays finite (and large)
    expected = [baseline.categories.get(c, 0) / base_total or PSI_EPSILON for c in categories]
    observed = [summary["cats"].get(c, 0) for c in categories]
    js_value = jensen_shannon([baseline.categories.get(c, 0) for c in categories], observed)
    metrics = [MetricValue("jensen_shannon", js_value, None, thresholds.jensen_shannon,
                           js_value >= thresholds.jensen_shannon)]
    if len(categories) > 1:
        statistic, p_value = chi_squared(observed, expected)
        metrics.append(MetricValue("chi_squared", statistic, p_value, thresholds.chi_squared_p_value,
                                   p_value < thresholds.chi_squared_p_value))
    return metrics


def window_start(event_time_us: int, window_us: int) -> int:
    """Start (UTC microseconds) of the tumbling window holding ``event_time_us``."""
    return event_time_us - event_time_us % window_us


# --- windows: accumulated on the join side, merged and closed on the drift side --------------------------


class BaselineCache:
    """Prepared baselines by (dataset digest, column); profiles are content-addressed, so never stale."""

    def __init__(self, profile_of: Callable[[str, str], Mapping[str, Any] | None]) -> None:
        self._profile_of = profile_of
        self._prepared: dict[tuple[str, str], Baseline | None] = {}

    def get(self, digest: str, column: str) -> Baseline | None:
        key = (digest, column)
        if key not in self._prepared:
            profile = self._profile_of(digest, column)
            if profile is None:
                return None  # not known yet: ask again next time
            try:
                self._prepared[key] = make_baseline(profile)
            except ValueError as exc:
                log.warning("no drift for column %s of dataset %s: %s", column, digest, exc)
                self._prepared[key] = None
        return self._prepared[key]


class BaselineLookup(Protocol):
    def __call__(self, model_name: str, model_version: str, column: str, *, output: bool = False,
                 label_column: str | None = None) -> tuple[str, Mapping[str, Any]] | None:
        """``(dataset digest, profile)`` of ``column``, an input or (``output``) an output, or None;
        an output without a prediction profile is compared with ``label_column`` of the training data."""


class DriftAccumulator:
    """Window summaries of the traces one worker emitted, drained into partials after each batch.

    ``baseline_of`` gives ``(dataset digest, profile)`` of an input column (in the model's training
    data) or of an output column (in the profile of its predictions, else its training data), or
    None (:meth:`provline.stream_processors.lineage.LineageIndex.baseline_of`). Not thread-safe.
    """

    def __init__(
        self, baseline_of: BaselineLookup, *, window_us: int, output_columns: Mapping[str, str] | None = None,
    ) -> None:
        self._baseline_of = baseline_of
        self._cache = BaselineCache(self._profile_from_lookups)
        self._profiles: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.window_us = window_us
        self.output_columns = dict(output_columns or {})
        self._partials: dict[tuple[str, str, int], dict[str, Summary]] = {}
        self.unprofiled = 0  # values with no baseline to count them against

    def _profile_from_lookups(self, digest: str, column: str) -> Mapping[str, Any] | None:
        return self._profiles.get((digest, column))

    def add(self, trace: Mapping[str, Any]) -> None:
        """Count every row of a trace's features and outputs into its model version's window.

        A batch request's trace carries all its rows in ``feature_rows`` and ``output_rows`` (row 0
        first); a trace without them has one row, ``features`` and ``outputs``.
        """
        name, version = trace.get("model_name"), trace.get("model_version")
        at = trace.get("request_time") or trace.get("response_time")
        if not name or not version or at is None:
            return
        at_us = _micros(at)
        features = self._partials.setdefault((name, version, window_start(at_us, self.window_us)), {})
        for row in trace.get("feature_rows") or [trace.get("features") or {}]:
            for feature, value in row.items():
                self._add(features, name, version, feature, feature, value, output=False)
        for row in trace.get("output_rows") or [trace.get("outputs") or {}]:
            for output, value in row.items():
                self._add(features, name, version, OUTPUT_PREFIX + output, output, value, output=True,
                          label_column=self.output_columns.get(output))

    def _add(self, features: dict[str, Summary], name: str, version: str, key: str, column: str,
             value: Any, *, output: bool, label_column: str | None = None) -> None:
        summary = features.get(key)
        if summary is None:
            found = self._baseline_of(name, version, column, output=output, label_column=label_column)
            if found is None:
                self.unprofiled += 1
                return
            digest, profile = found
            column = str(profile.get("column") or column)  # the label column, when the label is the baseline
            self._profiles[(digest, column)] = profile
            baseline = self._cache.get(digest, column)
            if baseline is None:
                self.unprofiled += 1
                return
            summary = features[key] = new_summary(baseline, digest=digest, column=column)
        else:
            baseline = self._cache.get(summary["b"], summary["c"])
            assert baseline is not None
        add_value(summary, baseline, value)

    def drain(self) -> list[Window]:
        """The partial windows accumulated since the last drain: ``{"m", "v", "w", "f": {feature: summary}}``."""
        partials: list[Window] = [
            {"m": name, "v": version, "w": start, "f": features}
            for (name, version, start), features in self._partials.items() if features
        ]
        self._partials = {}
        return partials


def _micros(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(round(value.timestamp() * 1_000_000))


def window_key(partial: Window) -> str:
    return f"{partial['m']}@{partial['v']}|{partial['w']}"


def merge_window(window: Window | None, partial: Window) -> Window:
    """The open window with one more partial merged in (a new window when ``window`` is None)."""
    if window is None:
        return {"m": partial["m"], "v": partial["v"], "w": partial["w"], "f": dict(partial["f"])}
    features = dict(window["f"])
    for feature, summary in partial["f"].items():
        features[feature] = merge_summaries(features[feature], summary) if feature in features else summary
    return {**window, "f": features}


def window_due(window: Window, *, now_us: int, window_us: int, lateness_us: int) -> bool:
    """A window closes once the wall clock is ``lateness`` past its end."""
    return now_us >= int(window["w"]) + window_us + lateness_us


def drift_metric_fields(
    window: Window, baselines: BaselineCache, thresholds: Thresholds, *, window_us: int
) -> list[dict[str, Any]]:
    """The DriftMetric field values (all but the envelope) of a closed window, for every feature."""
    fields: list[dict[str, Any]] = []
    start = int(window["w"])
    for feature, summary in sorted(window["f"].items()):
        baseline = baselines.get(summary["b"], summary["c"])
        if baseline is None:
            continue
        for metric in window_metrics(summary, baseline, thresholds):
            fields.append({
                "model_name": window["m"], "model_version": window["v"], "feature": feature,
                "window_start": start, "window_end": start + window_us, "metric": metric.metric,
                "value": metric.value, "p_value": metric.p_value, "threshold": metric.threshold,
                "breached": metric.breached, "sample_size": int(summary["n"]), "baseline_dataset": summary["b"],
            })
    return fields


def drift_event_subject(fields: Mapping[str, Any]) -> str:
    """What a DriftMetric is about, for its stable event id."""
    return f"{fields['model_name']}@{fields['model_version']}/{fields['feature']}/{fields['window_start']}/" \
           f"{fields['metric']}"
