"""Column schema and column profiles of a dataset: the baselines drift is measured against.

Profiles are computed in one streaming pass over Arrow record batches, so memory stays bounded
whatever the size of the data: counts, nulls, min, max, mean and standard deviation are exact;
quantiles and histogram counts come from a fixed-size uniform reservoir sample per numeric
column; categorical counts keep the most frequent ``MAX_CATEGORIES`` values.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RESERVOIR_SIZE = 100_000
QUANTILE_POINTS = 101  # 0%, 1%, ..., 100%
HISTOGRAM_BINS = 10
MAX_CATEGORIES = 1_000
_TRACKED_CATEGORIES = 20 * MAX_CATEGORIES


def is_numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)


def column_schema(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def schema_fingerprint(columns: list[dict[str, Any]]) -> str:
    """SHA-256 over the ordered column names and types: equal schemas, equal fingerprints."""
    text = "\n".join(f"{c['name']}:{c['type']}" for c in columns)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _NumericColumn:
    rng: np.random.Generator
    count: int = 0
    nulls: int = 0  # nulls and NaN: both mean "missing"
    finite: int = 0
    total: float = 0.0
    total_squares: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    seen: int = 0
    reservoir: np.ndarray = field(default_factory=lambda: np.empty(0))

    def add(self, values: pa.Array) -> None:
        self.count += len(values)
        data = np.asarray(values.drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
        self.nulls += values.null_count + int(np.isnan(data).sum())
        data = data[np.isfinite(data)]
        if not len(data):
            return
        self.finite += len(data)
        self.total += float(data.sum())
        self.total_squares += float(np.square(data).sum())
        self.minimum = min(self.minimum, float(data.min()))
        self.maximum = max(self.maximum, float(data.max()))
        self._sample(data)

    def _sample(self, data: np.ndarray) -> None:
        """Uniform reservoir sampling (Algorithm R), vectorised per batch."""
        room = RESERVOIR_SIZE - len(self.reservoir)
        if room > 0:
            self.reservoir = np.concatenate([self.reservoir, data[:room]])
            self.seen += min(room, len(data))
            data = data[room:]
        if not len(data):
            return
        positions = np.arange(self.seen + 1, self.seen + len(data) + 1)
        slots = (self.rng.random(len(data)) * positions).astype(np.int64)
        keep = slots < RESERVOIR_SIZE
        self.reservoir[slots[keep]] = data[keep]
        self.seen += len(data)

    def profile(self, name: str) -> dict[str, Any]:
        present = self.finite
        sample = np.sort(self.reservoir)
        mean = self.total / present if present else None
        variance = max(self.total_squares / present - mean**2, 0.0) if present and mean is not None else None
        quantiles = np.quantile(sample, np.linspace(0, 1, QUANTILE_POINTS)).tolist() if len(sample) else []
        edges: list[float] = (
            np.unique(np.quantile(sample, np.linspace(0, 1, HISTOGRAM_BINS + 1))).tolist() if len(sample) else []
        )
        counts = np.histogram(sample, bins=edges)[0].tolist() if len(edges) > 1 else []
        return {
            "column": name, "kind": "NUMERIC", "count": self.count, "null_count": self.nulls,
            "quantiles": quantiles, "bin_edges": list(map(float, edges)), "bin_counts": counts,
            "categories": {}, "mean": mean, "std": math.sqrt(variance) if variance is not None else None,
            "min": self.minimum if present else None, "max": self.maximum if present else None,
        }


@dataclass
class _CategoricalColumn:
    count: int = 0
    nulls: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, values: pa.Array) -> None:
        self.count += len(values)
        self.nulls += values.null_count
        for entry in pc.value_counts(values.drop_null().cast(pa.string())).to_pylist():
            self.counts[entry["values"]] += entry["counts"]
        if len(self.counts) > _TRACKED_CATEGORIES:
            self.counts = Counter(dict(self.counts.most_common(MAX_CATEGORIES)))

    def profile(self, name: str) -> dict[str, Any]:
        return {
            "column": name, "kind": "CATEGORICAL", "count": self.count, "null_count": self.nulls,
            "quantiles": [], "bin_edges": [], "bin_counts": [],
            "categories": dict(self.counts.most_common(MAX_CATEGORIES)),
            "mean": None, "std": None, "min": None, "max": None,
        }


@dataclass
class Profile:
    columns: list[dict[str, Any]]
    schema_fingerprint: str
    row_count: int
    profiles: list[dict[str, Any]]


def profile_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch], *, seed: int = 0) -> Profile:
    """Schema, row count and column profiles from a stream of record batches (one pass)."""
    rng = np.random.default_rng(seed)
    trackers: dict[str, _NumericColumn | _CategoricalColumn] = {
        f.name: _NumericColumn(rng) if is_numeric(f.type) else _CategoricalColumn() for f in schema
    }
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        for name, tracker in trackers.items():
            tracker.add(batch.column(name))
    columns = column_schema(schema)
    return Profile(columns=columns, schema_fingerprint=schema_fingerprint(columns), row_count=rows,
                   profiles=[tracker.profile(name) for name, tracker in trackers.items()])


def profile_table(table: pa.Table) -> Profile:
    return profile_batches(table.schema, table.to_batches())
