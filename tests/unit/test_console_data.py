"""The pure parts of the model page and the lineage explorer: checks, the deployment timeline, labels."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from provline.sink.lineagegraph import LABEL_CHARS, check, label
from provline.sink.modelpage import OverviewRequest, shape_overview, with_previous_versions


def step(version: str, action: str, previous: str | None = None, environment: str = "prod",
         endpoint: str = "/p") -> dict[str, str | None]:
    return {"version": version, "action": action, "previous_version": previous, "environment": environment,
            "endpoint": endpoint}


def test_each_deployment_names_the_version_in_force_before_it_on_its_endpoint() -> None:
    timeline = [
        step("1", "DEPLOY"), step("2", "DEPLOY", environment="staging"), step("2", "PROMOTE"),
        step("1", "ROLLBACK"), step("3", "HOTFIX", previous="9"),  # stated: kept as recorded
        step("3", "RETIRE"), step("4", "DEPLOY"), step("1", "RETIRE"), step("5", "DEPLOY"),
    ]
    assert [entry["previous_version"] for entry in with_previous_versions(timeline)] == [
        None, None, "1", "2", "9", "3", None, "4", "4",  # retiring a version not in force leaves 4 there
    ]
    assert timeline[2]["previous_version"] is None  # the input is not changed


def test_an_overview_request_refuses_what_cannot_be_answered() -> None:
    assert OverviewRequest.checked("churn").window_s == 3600
    naive = OverviewRequest.checked("churn", since=datetime(2025, 5, 1, 9))
    assert naive.since == datetime(2025, 5, 1, 9, tzinfo=UTC)
    shifted = OverviewRequest.checked("churn", until=datetime(2025, 5, 1, 11, tzinfo=timezone(timedelta(hours=2))))
    assert shifted.until == datetime(2025, 5, 1, 9, tzinfo=UTC)
    for arguments, reason in (
        ({"model_name": "  "}, "empty"), ({"model_name": "m" * 1001}, "1001 characters"),
        ({"window_s": 59}, "window_s=59"), ({"limit": 10_001}, "limit=10001"),
        ({"since": datetime(2025, 5, 2, tzinfo=UTC), "until": datetime(2025, 5, 1, tzinfo=UTC)}, "not before"),
    ):
        with pytest.raises(ValueError, match=reason):
            OverviewRequest.checked(**{"model_name": "churn", **arguments})  # type: ignore[arg-type]


def test_nothing_stored_is_no_page() -> None:
    assert shape_overview("churn", [], [], [], limit=10) is None


def test_a_graph_request_names_its_bad_argument() -> None:
    assert check("model:churn@3", "upstream", 12, 500) == ("model", "churn@3")
    for arguments, reason in (
        (("model:churn@3", "sideways", 12, 500), "neither"), (("model:churn@3", "upstream", 51, 500), "max_depth"),
        (("model:churn@3", "upstream", 12, 0), "limit=0"), (("churn@3", "upstream", 12, 500), "not a lineage node"),
    ):
        with pytest.raises(ValueError, match=reason):
            check(*arguments)


def test_labels_are_short_and_say_what_a_node_is() -> None:
    assert label("dataset:sha256:" + "ab" * 32, "clean") == "clean sha256:abababababab"
    assert label("dataset:sha256:" + "ab" * 32) == "sha256:abababababab"
    assert label("run:run-7", "train") == "train (run-7)"
    assert label("commit:https://github.com/acme/churn.git@" + "f" * 40) == "churn@ffffffffff"
    assert label("commit:unknown-repo@abc") == "unknown-repo@abc"
    assert label("model:churn@3") == "churn@3"
    long = label("deployment:production:/" + "v" * 100)
    assert len(long) == LABEL_CHARS and long.endswith("…")


def test_each_metric_says_whether_it_passed_its_threshold() -> None:
    from provline.sink.modelpage import evaluations

    def row(passed: bool, metrics: list[dict[str, object]]) -> dict[str, object]:
        return {"version": "3", "event_time": datetime(2025, 5, 1, tzinfo=UTC), "event_id": "e",
                "payload": json.dumps({"passed": passed, "metrics": metrics})}

    shaped = evaluations([
        row(False, [{"name": "auc", "value": 0.7, "threshold": 0.8, "passed": False},
                    {"name": "f1", "value": 0.9, "threshold": 0.5, "passed": None},  # a producer that judged only all
                    {"name": "latency", "value": 12.0, "threshold": None, "passed": None}]),
        row(True, []),
    ])
    assert [(r["metric"], r["threshold"], r["passed"]) for r in shaped] == [
        ("auc", 0.8, False), ("f1", 0.5, False), ("latency", None, None), (None, None, True),
    ]
    assert shaped[0]["event_time"] == "2025-05-01T00:00:00+00:00"
