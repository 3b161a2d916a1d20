"""Prometheus alert rules and scrape config: promtool checks them and runs their unit tests, and every
metric they name is one the services export."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.deploy.assets import PROMETHEUS_DIR, exported_metric_names, load_yaml, tool, unknown_metrics

ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
# what issue 16 asks alerts for, each by the metric it must watch
REQUIRED = {
    "ProvlineEventsDropped": "provline_events_dropped_total",
    "ProvlineDeliveryGapsStored": "provline_sink_rows_written_total",
    "ProvlineSinkLagHigh": "provline_sink_lag",
    "ProvlineProcessorsLagHigh": "provline_processors_consumer_lag",
    "ProvlineIncompleteTraces": "provline_processors_partial_traces_total",
    "ProvlineVerifyFindings": "provline_sink_verify_runs_total",
    "ProvlineDriftBreached": "provline_processors_drift_metrics_total",
}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_scrape_config_with_its_rule_file(tmp_path: Path) -> None:
    # compose mounts alerts.yml at the config's rule_files path; here it is at the file's real path
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    local = tmp_path / "prometheus.yml"
    local.write_text(PROMETHEUS_CONFIG.read_text().replace("/etc/prometheus/alerts.yml", str(ALERTS)))
    checked = promtool("check", "config", str(local))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_on_a_breach_and_stays_quiet_when_healthy() -> None:
    tested = promtool("test", "rules", str(ALERTS_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases: dict[str, list[bool]] = {}
    for test in load_yaml(ALERTS_TEST)["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in rules():
        assert sorted(set(cases.get(rule["alert"], []))) == [False, True], (
            f"{rule['alert']} needs a case where it fires and one where it does not in {ALERTS_TEST.name}")


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same unit tests against rules whose drop alert never fires: promtool must say so."""
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("(increase(provline_events_dropped_total[10m])) > 0",
                                                  "(increase(provline_events_dropped_total[10m])) > 1e9"))
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    tested = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0 and "ProvlineEventsDropped" in tested.stdout + tested.stderr


def test_the_issue_s_alerts_exist_and_watch_their_metrics() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in rules()}
    for alert, metric in REQUIRED.items():
        assert alert in expressions, f"alerts.yml has no {alert}"
        assert metric in expressions[alert], f"{alert} does not watch {metric}: {expressions[alert]}"


def test_every_metric_an_alert_names_is_exported() -> None:
    exported = exported_metric_names()
    for rule in rules():
        assert unknown_metrics(rule["expr"], exported) == [], f"{rule['alert']} names metrics nobody exports"
    assert unknown_metrics("rate(provline_sink_rows_writen_total[5m])", exported) == ["provline_sink_rows_writen_total"]
