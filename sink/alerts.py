"""Alert rules and the receivers' payloads.

Pure logic; the loop that queries the store and posts to receivers is a thin shell around it.
:func:`evaluate` turns query results (drift metrics, performance rows, delivery gaps, verify
outcomes) into the :class:`Alert` s that hold now; :func:`plan` compares them with the alerts
already sent (their keys, stored persistently) and says which to send as firing and which to
send as resolved. An alert's key is ``rule|subject|window``, so one breach gives one alert however
many evaluation cycles (and restarts) see it.

Payloads: :func:`webhook_payload` (generic JSON), :func:`slack_payload` (``{"text": ...}``) and
:func:`alertmanager_payload` (Alertmanager API v2 ``POST /api/v2/alerts``: a list of
``labels`` / ``annotations`` / ``startsAt`` / ``endsAt`` / ``generatorURL``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from provline.sink.monitoring import MonitoringPolicy
from provline.sink.performance import PerformanceRow, below_baseline

DRIFT = "drift_breach"
PERFORMANCE = "performance_below_baseline"
DELIVERY_GAP = "delivery_gap"
VERIFY = "verify_failure"
# How long Alertmanager keeps a firing alert without hearing of it again (it resends are not needed:
# provline resends nothing, so an alert's endsAt is far ahead until it resolves).
FIRING_HORIZON = timedelta(days=7)


@dataclass(frozen=True)
class Alert:
    """One condition that holds: ``rule`` on ``subject`` in ``window`` (an ISO time or an id)."""

    rule: str
    subject: str
    window: str
    summary: str
    severity: str = "warning"
    labels: dict[str, str] = field(default_factory=dict)
    starts_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.rule}|{self.subject}|{self.window}"


def drift_alerts(rows: Iterable[dict[str, Any]]) -> list[Alert]:
    """One alert per breached drift window (model version, feature, metric), holding until a later
    window of the same feature and metric is within its threshold (then it resolves)."""
    rows = list(rows)

    def subject(row: dict[str, Any]) -> str:
        return f"{row['model_name']}@{row['model_version']}/{row['feature']}/{row['metric']}"

    latest_clean: dict[str, Any] = {}
    for row in rows:
        if not row.get("breached"):
            here = subject(row)
            if here not in latest_clean or row["window_start"] > latest_clean[here]:
                latest_clean[here] = row["window_start"]
    alerts = []
    for row in rows:
        here = subject(row)
        if not row.get("breached") or (here in latest_clean and latest_clean[here] > row["window_start"]):
            continue
        alerts.append(Alert(DRIFT, here, str(row["window_start"]),
                            f"drift on {row['feature']} of {row['model_name']}@{row['model_version']}: "
                            f"{row['metric']} {float(row['value']):.4g} over threshold {float(row['threshold']):.4g}",
                            labels={"model": str(row["model_name"]), "version": str(row["model_version"]),
                                    "feature": str(row["feature"]), "metric": str(row["metric"])}))
    return alerts


def performance_alerts(rows: Iterable[PerformanceRow], policy: MonitoringPolicy) -> list[Alert]:
    """A metric the policy watches, worse than the evaluated baseline by more than its margin,
    on a window with at least ``min_samples`` labelled predictions."""
    alerts = []
    for row in rows:
        model = policy.for_model(row.model_name)
        if row.metric not in model.metrics or row.count < model.min_samples:
            continue
        if below_baseline(row, model.performance_margin):
            alerts.append(Alert(
                PERFORMANCE, f"{row.model_name}@{row.model_version}/{row.metric}", row.window_start.isoformat(),
                f"{row.metric} of {row.model_name}@{row.model_version} is {row.value:.4g} on {row.count} labels "
                f"from {row.window_start.isoformat()}, against {row.baseline:.4g} evaluated (margin "
                f"{model.performance_margin})",
                labels={"model": row.model_name, "version": row.model_version, "metric": row.metric}))
    return alerts


def gap_alerts(rows: Iterable[dict[str, Any]]) -> list[Alert]:
    """One alert per DeliveryGap event (each is one record of dropped events)."""
    return [Alert(DELIVERY_GAP, str(row["producer_name"]), str(row["event_id"]),
                  f"{row['producer_name']} dropped {row['dropped']} events ({row['reason']})",
                  severity="critical", labels={"producer": str(row["producer_name"]), "reason": str(row["reason"])})
            for row in rows]


def verify_alerts(rows: Iterable[dict[str, Any]]) -> list[Alert]:
    """One alert per verify run whose outcome was not clean."""
    return [Alert(VERIFY, "store", str(row["run_id"]),
                  f"provline verify found problems: {row['problems']} ({row['outcome']})", severity="critical",
                  labels={"outcome": str(row["outcome"])})
            for row in rows if row["outcome"] != "clean"]


def evaluate(*, drift: Iterable[dict[str, Any]] = (), performance: Iterable[PerformanceRow] = (),
             gaps: Iterable[dict[str, Any]] = (), verify: Iterable[dict[str, Any]] = (),
             policy: MonitoringPolicy | None = None) -> list[Alert]:
    """Every alert that holds on these query results."""
    return [*drift_alerts(drift), *performance_alerts(performance, policy or MonitoringPolicy()),
            *gap_alerts(gaps), *verify_alerts(verify)]


@dataclass(frozen=True)
class Plan:
    fire: list[Alert]
    resolve: list[str]  # keys of alerts sent as firing that no longer hold


def plan(holding: Sequence[Alert], sent_firing: set[str], *, resolvable: set[str] | None = None) -> Plan:
    """What to send: alerts that hold and were never sent, and sent ones that stopped holding.

    ``sent_firing`` are the keys sent and not yet resolved. Only rules in ``resolvable`` resolve
    (drift and performance windows are re-evaluated; a gap or a failed verify run stays a fact).
    """
    rules = {DRIFT, PERFORMANCE} if resolvable is None else resolvable
    keys = {alert.key for alert in holding}
    fire, seen = [], set()
    for alert in holding:
        if alert.key not in sent_firing and alert.key not in seen:
            fire.append(alert)
            seen.add(alert.key)
    resolve = sorted(key for key in sent_firing if key not in keys and key.split("|", 1)[0] in rules)
    return Plan(fire, resolve)


def webhook_payload(alert: Alert, *, status: str = "firing") -> dict[str, Any]:
    return {"status": status, "rule": alert.rule, "subject": alert.subject, "window": alert.window,
            "key": alert.key, "severity": alert.severity, "summary": alert.summary, "labels": alert.labels}


def slack_payload(alert: Alert, *, status: str = "firing") -> dict[str, Any]:
    mark = ":rotating_light:" if status == "firing" else ":white_check_mark:"
    return {"text": f"{mark} [{status}] provline {alert.rule}: {alert.summary}"}


def alertmanager_payload(alert: Alert, *, now: datetime, resolved: bool = False,
                         generator_url: str = "") -> list[dict[str, Any]]:
    """One alert of Alertmanager API v2; labels identify it, so the resolve carries the same ones."""
    starts = alert.starts_at or now
    return [{"labels": alertmanager_labels(alert),
             "annotations": {"summary": alert.summary, "window": alert.window},
             "startsAt": starts.isoformat(),
             "endsAt": (now if resolved else now + FIRING_HORIZON).isoformat(),
             "generatorURL": generator_url}]


def alertmanager_labels(alert: Alert) -> dict[str, str]:
    return {"alertname": alert.rule, "subject": alert.subject, "window": alert.window,
            "severity": alert.severity, "source": "provline", **alert.labels}
