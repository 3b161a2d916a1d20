"""A small churn model the demo trains on data it generates: logistic regression in NumPy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

FEATURES = ("tenure_months", "monthly_charges", "support_calls")


def generate_customers(path: Path, *, rows: int, seed: int) -> None:
    """Write a CSV of synthetic customers whose churn depends on the features (plus noise)."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, rows)
    charges = rng.normal(70, 20, rows).clip(15, 150).round(2)
    calls = rng.poisson(1.5, rows)
    logit = -0.05 * tenure + 0.03 * charges + 0.6 * calls - 2.0
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "churned"])
        writer.writerows(zip(tenure, charges, calls, churned.astype(int), strict=True))


def load_customers(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    return data[:, :-1], data[:, -1]


def train(features: np.ndarray, labels: np.ndarray, *, learning_rate: float, epochs: int) -> dict:
    """Gradient-descent logistic regression on standardised features; returns the model as JSON-able."""
    mean, std = features.mean(axis=0), features.std(axis=0)
    x = (features - mean) / std
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(epochs):
        error = 1 / (1 + np.exp(-(x @ weights + bias))) - labels
        weights -= learning_rate * x.T @ error / len(labels)
        bias -= learning_rate * float(error.mean())
    return {"features": list(FEATURES), "mean": mean.tolist(), "std": std.tolist(),
            "weights": weights.tolist(), "bias": bias}


def predict_proba(model: dict, row: dict[str, float]) -> float:
    x = (np.array([row[name] for name in model["features"]]) - model["mean"]) / np.array(model["std"])
    return float(1 / (1 + np.exp(-(x @ np.array(model["weights"]) + model["bias"]))))


def accuracy(model: dict, features: np.ndarray, labels: np.ndarray) -> float:
    rows = [dict(zip(model["features"], values, strict=True)) for values in features]
    predicted = np.array([predict_proba(model, row) >= 0.5 for row in rows])
    return float((predicted == labels.astype(bool)).mean())


def save(model: dict, path: Path) -> None:
    path.write_text(json.dumps(model, sort_keys=True))
