"""Alert rules, deduplication plan, receivers' payloads, and the monitoring policy file's validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from provline.sink.alerts import (
    DRIFT,
    PERFORMANCE,
    alertmanager_payload,
    drift_alerts,
    evaluate,
    plan,
    slack_payload,
    webhook_payload,
)
from provline.sink.errors import PolicyError
from provline.sink.monitoring import MonitoringPolicy, parse_policy, pick_field
from provline.sink.performance import PerformanceRow

T0 = datetime(2026, 1, 1, 10, tzinfo=UTC)


def drift_row(breached: bool, feature: str = "x", start: datetime = T0) -> dict[str, object]:
    return {"model_name": "m", "model_version": "1", "feature": feature, "metric": "psi", "window_start": start,
            "value": 0.4 if breached else 0.01, "threshold": 0.2, "breached": breached}


def perf_row(value: float, count: int = 100) -> PerformanceRow:
    return PerformanceRow("m", "1", T0, T0, "accuracy", value, count, None, None, "wilson", baseline=0.9)


def test_in_distribution_gives_no_alert_and_a_breach_one() -> None:
    assert drift_alerts([drift_row(False), drift_row(False, "y")]) == []
    alerts = drift_alerts([drift_row(True), drift_row(False, "y")])
    assert [a.key for a in alerts] == [f"{DRIFT}|m@1/x/psi|{T0}"]


def test_a_breach_seen_on_several_cycles_is_sent_once_and_resolves_once() -> None:
    sent: set[str] = set()
    fired = []
    for _ in range(3):
        step = plan(evaluate(drift=[drift_row(True)]), sent)
        fired += step.fire
        sent |= {a.key for a in step.fire}
    assert len(fired) == 1
    assert plan(evaluate(drift=[drift_row(True), drift_row(False, start=T0 - timedelta(hours=1))]), sent).resolve == []
    later = T0 + timedelta(hours=1)
    step = plan(evaluate(drift=[drift_row(True), drift_row(False, start=later)]), sent)  # back in distribution
    assert step.fire == [] and step.resolve == [fired[0].key]


def test_performance_below_baseline_by_the_policy_margin_only_with_enough_samples() -> None:
    policy = parse_policy("models:\n  m:\n    performance_margin: 0.1\n    min_samples: 50\n")
    assert evaluate(performance=[perf_row(0.85)], policy=policy) == []       # within the margin
    assert evaluate(performance=[perf_row(0.7, count=20)], policy=policy) == []  # too few labels
    [alert] = evaluate(performance=[perf_row(0.7)], policy=policy)
    assert alert.rule == PERFORMANCE and "0.7" in alert.summary


def test_gaps_and_verify_failures_alert_and_never_resolve() -> None:
    alerts = evaluate(gaps=[{"producer_name": "sidecar", "event_id": "e1", "dropped": 5, "reason": "queue_full"}],
                      verify=[{"run_id": "r1", "outcome": "findings", "problems": 2},
                              {"run_id": "r2", "outcome": "clean", "problems": 0}])
    assert sorted(a.rule for a in alerts) == ["delivery_gap", "verify_failure"]
    assert plan([], {a.key for a in alerts}).resolve == []


def test_payloads() -> None:
    [alert] = drift_alerts([drift_row(True)])
    assert webhook_payload(alert)["key"] == alert.key
    assert set(slack_payload(alert)) == {"text"} and "drift" in slack_payload(alert)["text"]
    now = datetime(2026, 1, 2, tzinfo=UTC)
    [firing] = alertmanager_payload(alert, now=now)
    [resolved] = alertmanager_payload(alert, now=now, resolved=True)
    assert firing["labels"] == resolved["labels"] and firing["labels"]["alertname"] == DRIFT
    assert resolved["endsAt"] == now.isoformat() and firing["endsAt"] > firing["startsAt"]
    assert set(firing) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


def test_policy_errors_name_the_line_and_key() -> None:
    text = "defaults:\n  performance_margin: 0.05\nmodels:\n  iris:\n    task: classifier\n    colour: red\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="policy.yaml")
    message = str(caught.value)
    assert "policy.yaml line 5, key models.iris.task" in message
    assert "line 6, key models.iris.colour" in message
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("models: [", source="p.yaml")


def test_policy_defaults_and_output_fields() -> None:
    policy = MonitoringPolicy()
    assert policy.for_model("any").task == "classification"
    assert pick_field({"output": 1.0}, None, ("predict", "output")) == 1.0
    assert pick_field({"predict": "a", "output": 1.0}, None, ("predict", "output")) == "a"
    assert pick_field({"predict": "a"}, "p", ("predict",)) is None


def test_the_policy_example_in_the_operations_guide_is_valid() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = text[text.index("## Monitoring policy"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n") + 8)]
    policy = parse_policy(example, source="docs/operations.md")
    assert policy.for_model("churn").positive_label == "1" and policy.for_model("house-prices").task == "regression"
    with pytest.raises(PolicyError, match="line 5, key models.iris.task: Input should be 'classification' or"):
        parse_policy("defaults: {}\nmodels:\n  other: {}\n  iris:\n    task: classifier\n", source="policy.yaml")
