"""Drift on real traffic: every row of a batch is a sample (finding 5), an in-distribution regressor does
not breach output drift and too few samples never breach (finding 7), and each drift row names what an
auditor needs (finding 12).

The diabetes regressor gets only this module's traffic: ten requests of 50 rows, five times over its
evaluation split, whose predictions are the baseline of its output drift. Windows are
``DRIFT_WINDOW_S`` long (conftest.py), so the rows of a load are all closed a few seconds after it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.real_servers.audit import (
    DRIFT_TIMEOUT_S,
    POLL_S,
    Sent,
    drift_rows,
    model_inputs,
    predict,
    provline_json,
    v2_request,
)
from tests.real_servers.conftest import DRIFT_WINDOW_S, RealServers

pytestmark = pytest.mark.real_servers
REQUESTS, BATCH = 10, 50
OUTPUT = "output:predict"
DRIFT_FIELDS = ("p_value", "model_name", "model_version", "baseline_dataset", "sample_size", "breached", "feature",
                "metric")


def window_of(at: datetime) -> datetime:
    seconds = at.timestamp()
    return datetime.fromtimestamp(seconds - seconds % DRIFT_WINDOW_S, UTC)


def windows_between(first: Sent, last: Sent) -> tuple[datetime, datetime]:
    """since/until that select exactly the windows the exchanges from ``first`` to ``last`` fell in."""
    start, end = window_of(first.sent_at), window_of(last.answered_at) + timedelta(seconds=DRIFT_WINDOW_S)
    return start + timedelta(milliseconds=1), end - timedelta(milliseconds=1)


def wait_for_windows(servers: RealServers, model: str, first: Sent, last: Sent, feature: str) -> list[dict[str, Any]]:
    """The drift rows of the windows the load fell in, once each of them has rows for ``feature`` (or at
    the deadline, what there is)."""
    since, until = windows_between(first, last)
    wanted = (until - since).total_seconds() // DRIFT_WINDOW_S + 1
    deadline = time.monotonic() + DRIFT_TIMEOUT_S
    while True:
        rows = drift_rows(servers.stack, model, since=since, until=until)
        closed = {row["window_start"] for row in rows if row["feature"] == feature}
        if len(closed) >= wanted or time.monotonic() >= deadline:
            return rows
        time.sleep(POLL_S * 4)


@pytest.fixture(scope="module")
def regressor_drift(servers: RealServers) -> list[dict[str, Any]]:
    _, rows = model_inputs(servers.training, "diabetes", evaluation=True)
    assert REQUESTS * BATCH % len(rows) == 0, "the load is to be whole copies of the evaluation split"
    sent = [predict(servers.mlserver_sidecar, "/v2/models/diabetes/infer",
                    v2_request([rows[(i * BATCH + j) % len(rows)] for j in range(BATCH)]))
            for i in range(REQUESTS)]
    return wait_for_windows(servers, "diabetes", sent[0], sent[-1], OUTPUT)


def output_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [row for row in rows if row["feature"] == OUTPUT]
    assert found, f"no drift of {OUTPUT} for diabetes; rows: {rows[:8]}"
    return found


def test_every_row_of_a_batch_is_a_drift_sample(servers: RealServers, regressor_drift: list[dict[str, Any]]) -> None:
    per_window = {row["window_start"]: row["sample_size"] for row in output_rows(regressor_drift)}
    assert sum(per_window.values()) == REQUESTS * BATCH, per_window


def test_an_in_distribution_regressor_does_not_breach_output_drift(
    servers: RealServers, regressor_drift: list[dict[str, Any]],
) -> None:
    breached = [row for row in output_rows(regressor_drift) if row["breached"]]
    assert breached == [], f"output drift breached on the model's own evaluation inputs: {breached}"


def test_drift_rows_name_the_model_the_baseline_and_the_p_value(
    servers: RealServers, regressor_drift: list[dict[str, Any]],
) -> None:
    output_rows(regressor_drift)
    answered = provline_json(servers.stack, "drift", "diabetes")
    assert answered, "provline drift diabetes --json printed no rows"
    for row in answered:
        assert [name for name in DRIFT_FIELDS if name not in row] == [], row
        assert (row["model_name"], row["model_version"]) == ("diabetes", "1")
        assert row["baseline_dataset"]
    tests = [row for row in answered if row["metric"] in ("ks", "chi_squared")]
    assert tests and all(0.0 <= row["p_value"] <= 1.0 for row in tests)


def test_fewer_samples_than_the_minimum_never_breach(servers: RealServers) -> None:
    """Eight iris rows twenty times the size of any in training, in one window: far out of distribution,
    and too few samples to say so."""
    columns, rows = model_inputs(servers.training, "iris")
    time.sleep(DRIFT_WINDOW_S - time.time() % DRIFT_WINDOW_S + 0.05)  # a window no other request falls in
    sent = [predict(servers.mlflow_sidecar, "/invocations",
                    {"dataframe_split": {"columns": columns, "data": [[value * 20 for value in row]]}})
            for row in rows[:8]]
    assert window_of(sent[0].sent_at) == window_of(sent[-1].answered_at), "the load straddled two windows; run again"
    found = wait_for_windows(servers, "iris", sent[0], sent[-1], columns[0])
    assert found, f"no drift rows for iris in the window of {len(sent)} requests"
    assert {row["sample_size"] for row in found} == {len(sent)}
    assert [row for row in found if row["breached"]] == []
