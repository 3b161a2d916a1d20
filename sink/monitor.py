"""The I/O shell of performance and alerts: store queries, the monitor loop of ``provline serve``, delivery.

:class:`Monitor` owns its own store client and HTTP client and runs in a thread of ``provline
serve``, never on the writer's or the API's connection, so a slow receiver or a long computation
holds up neither ingestion nor the API. Each round (:meth:`Monitor.run_once`) computes performance
from stored feedback joined to stored traces by prediction id (labels that arrived days late
count), stores it in ``model_performance``, evaluates the alert rules (:mod:`provline.sink.alerts`)
and sends what :func:`provline.sink.alerts.plan` says to every receiver. A key is recorded in
``alert_state`` only once every receiver took it, so a failed delivery is retried next round and a
restarted serve resends nothing already delivered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from clickhouse_connect.driver.client import Client
from prometheus_client import Counter

from provline.sink import alerts as rules
from provline.sink.monitoring import DEFAULT_PREDICTION_FIELDS, DEFAULT_SCORE_FIELDS, MonitoringPolicy, pick_field
from provline.sink.performance import LabelledPrediction, PerformanceRow, compute_performance
from provline.sink.settings import AlertReceiver, MonitoringSettings

log = logging.getLogger(__name__)

ALERTS_SENT = Counter("provline_alerts_sent", "Alert notifications delivered, by receiver kind and status",
                      ["receiver", "status"])
ALERT_FAILURES = Counter("provline_alert_delivery_failures", "Failed alert delivery tries, by receiver kind",
                         ["receiver"])
MONITOR_ROUNDS = Counter("provline_monitor_rounds", "Rounds of performance and alert rules, by outcome", ["outcome"])
RECEIVER_TIMEOUT_S = 5.0
DRIFT_LOOKBACK = timedelta(days=7)

LABELLED_SQL = """
WITH t AS (
    SELECT prediction_id, argMax(model_name, event_time) AS name, argMax(model_version, event_time) AS version,
           argMax(payload, event_time) AS trace_payload, min(event_time) AS first_time
    FROM prediction_traces FINAL
    WHERE model_name IS NOT NULL AND ({model:String} = '' OR model_name = {model:String})
    GROUP BY prediction_id
),
f AS (
    SELECT prediction_id, argMax(label, event_time) AS sent_label, argMax(outcome, event_time) AS sent_outcome
    FROM feedback FINAL GROUP BY prediction_id
)
SELECT t.name, t.version, t.first_time, JSONExtractRaw(t.trace_payload, 'outputs') AS outputs,
       JSONExtract(t.trace_payload, 'request_time', 'Nullable(String)') AS request_time,
       coalesce(f.sent_label, JSONExtract(t.trace_payload, 'label', 'Nullable(String)')) AS truth_label,
       coalesce(f.sent_outcome, JSONExtract(t.trace_payload, 'outcome', 'Nullable(Float64)')) AS truth_outcome
FROM t LEFT JOIN f ON f.prediction_id = t.prediction_id
WHERE truth_label IS NOT NULL OR truth_outcome IS NOT NULL
SETTINGS join_use_nulls = 1
"""

BASELINE_SQL = """
SELECT model_name, model_version, argMax(payload, event_time) AS payload
FROM evaluations FINAL
WHERE {model:String} = '' OR model_name = {model:String}
GROUP BY model_name, model_version
"""

PERFORMANCE_COLUMNS = ["model_name", "model_version", "window_start", "window_end", "metric", "value", "sample_count",
                       "ci_low", "ci_high", "ci_method", "baseline", "baseline_ci_low", "baseline_ci_high",
                       "computed_at"]


def _parse_time(text: str | None, fallback: datetime) -> datetime:
    if text:
        try:
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    return fallback if fallback.tzinfo else fallback.replace(tzinfo=UTC)


def labelled_predictions(client: Client, policy: MonitoringPolicy, *, model: str = "") -> list[LabelledPrediction]:
    """Every stored prediction with ground truth (blocks on the store), its prediction and score
    taken from the trace's outputs by the model's policy."""
    result = client.query(LABELLED_SQL, parameters={"model": model})
    out = []
    for name, version, first_time, outputs_json, request_time, label, outcome in result.result_rows:
        outputs = json.loads(outputs_json) if outputs_json else {}
        if not isinstance(outputs, dict):
            outputs = {}
        model_policy = policy.for_model(name)
        prediction = pick_field(outputs, model_policy.prediction, DEFAULT_PREDICTION_FIELDS)
        score = pick_field(outputs, model_policy.score, DEFAULT_SCORE_FIELDS)
        out.append(LabelledPrediction(name, version, _parse_time(request_time, first_time), prediction, label=label,
                                      outcome=outcome, score=float(score) if isinstance(score, int | float) else None))
    return out


def baselines(client: Client, *, model: str = "") -> dict[tuple[str, str], dict[str, tuple[float, Any, Any]]]:
    """The newest Evaluation's metrics per model version: ``{(name, version): {metric: (value, low, high)}}``."""
    out: dict[tuple[str, str], dict[str, tuple[float, Any, Any]]] = {}
    for name, version, payload in client.query(BASELINE_SQL, parameters={"model": model}).result_rows:
        metrics = json.loads(payload).get("metrics") or []
        out[(name, version)] = {m["name"]: (float(m["value"]), m.get("ci_low"), m.get("ci_high")) for m in metrics}
    return out


def compute_and_store(client: Client, settings: MonitoringSettings, policy: MonitoringPolicy, *, model: str = "",
                      now: datetime | None = None) -> list[PerformanceRow]:
    """Compute every window's performance (of ``model``, or all) and store it; blocks on the store."""
    def task(name: str) -> tuple[str, str | None]:
        model_policy = policy.for_model(name)
        return model_policy.task, model_policy.positive_label

    rows = compute_performance(labelled_predictions(client, policy, model=model),
                               window=timedelta(seconds=settings.window_s), tasks=task,
                               baselines=baselines(client, model=model))
    computed_at = now or datetime.now(UTC)
    if rows:
        client.insert("model_performance", [
            [r.model_name, r.model_version, r.window_start, r.window_end, r.metric, r.value, r.count, r.ci_low,
             r.ci_high, r.method, r.baseline, r.baseline_ci_low, r.baseline_ci_high, computed_at] for r in rows],
            column_names=PERFORMANCE_COLUMNS)
    return rows


def stored_performance(client: Client, model: str, *, version: str = "") -> list[dict[str, Any]]:
    """The stored performance rows of one model (optionally one version), oldest window first."""
    result = client.query(
        "SELECT * EXCEPT computed_at FROM model_performance FINAL WHERE model_name = {model:String} "
        "AND ({version:String} = '' OR model_version = {version:String}) "
        "ORDER BY model_version, window_start, metric", parameters={"model": model, "version": version})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def record_verify_run(client: Client, *, run_id: str, outcome: str, problems: int, reader: str) -> None:
    """Store one verify run's outcome (``clean`` or ``findings``) for the verify-failure alert; blocks."""
    client.insert("verify_runs", [[run_id, datetime.now(UTC), outcome, problems, reader]],
                  column_names=["run_id", "time", "outcome", "problems", "reader"])


def _dicts(client: Client, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters or {})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def sent_alerts(client: Client) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every alert key sent: its last status (firing / resolved) and the alert as sent."""
    rows = _dicts(client, "SELECT alert_key, argMax(status, updated_at) AS status, argMax(alert, updated_at) AS alert "
                          "FROM alert_state GROUP BY alert_key")
    return {row["alert_key"]: (row["status"], json.loads(row["alert"])) for row in rows}


def _alert_from(data: dict[str, Any]) -> rules.Alert:
    starts = data.get("starts_at")
    return rules.Alert(data["rule"], data["subject"], data["window"], data["summary"], data.get("severity", "warning"),
                       dict(data.get("labels") or {}), datetime.fromisoformat(starts) if starts else None)


def _alert_json(alert: rules.Alert) -> str:
    return json.dumps({"rule": alert.rule, "subject": alert.subject, "window": alert.window, "summary": alert.summary,
                       "severity": alert.severity, "labels": alert.labels,
                       "starts_at": alert.starts_at.isoformat() if alert.starts_at else None})


class Monitor:
    """Performance and alert rounds on a store client and an HTTP client of its own.

    Not thread-safe: one thread calls :meth:`run` (or :meth:`run_once`). Blocks on the store and,
    per delivery, at most ``RECEIVER_TIMEOUT_S`` per try on a receiver.
    """

    def __init__(self, settings: MonitoringSettings, client: Client, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self.policy = MonitoringPolicy.load(settings.policy)
        self.client = client
        self.http = http or httpx.Client(timeout=RECEIVER_TIMEOUT_S)

    def run(self, stop: threading.Event) -> None:
        """Rounds every ``interval_s`` until ``stop`` is set; a failed round is logged, counted and retried."""
        while not stop.is_set():
            try:
                self.run_once()
                MONITOR_ROUNDS.labels("ok").inc()
            except Exception:
                MONITOR_ROUNDS.labels("failed").inc()
                log.exception("monitor round failed; retrying in %.0f s", self.settings.interval_s)
            stop.wait(self.settings.interval_s)

    def run_once(self, *, now: datetime | None = None) -> rules.Plan:
        moment = now or datetime.now(UTC)
        performance = compute_and_store(self.client, self.settings, self.policy, now=moment)
        drift = _dicts(self.client,
                       "SELECT model_name, model_version, feature, metric, window_start, value, breached, "
                       "JSONExtractFloat(payload, 'threshold') AS threshold FROM drift_metrics FINAL "
                       "WHERE window_end >= {since:DateTime64(6, 'UTC')}", {"since": moment - DRIFT_LOOKBACK})
        gaps = _dicts(self.client, "SELECT event_id, producer_name, dropped, reason FROM delivery_gaps FINAL")
        verify = _dicts(self.client, "SELECT run_id, outcome, problems FROM verify_runs WHERE outcome != 'clean'")
        holding = rules.evaluate(drift=drift, performance=performance, gaps=gaps, verify=verify, policy=self.policy)
        sent = sent_alerts(self.client)
        firing = {key for key, (status, _) in sent.items() if status == "firing"}
        delivered = {key for key in sent}
        step = rules.plan([a for a in holding if a.key not in delivered or a.key in firing], firing)
        for alert in step.fire:
            alert = rules.Alert(alert.rule, alert.subject, alert.window, alert.summary, alert.severity, alert.labels,
                                moment)
            if self._deliver(alert, resolved=False, now=moment):
                self._record(alert, "firing", moment)
        for key in step.resolve:
            alert = _alert_from(sent[key][1])
            if self._deliver(alert, resolved=True, now=moment):
                self._record(alert, "resolved", moment)
        return step

    def _record(self, alert: rules.Alert, status: str, now: datetime) -> None:
        self.client.insert("alert_state", [[alert.key, alert.rule, status, _alert_json(alert), now]],
                           column_names=["alert_key", "rule", "status", "alert", "updated_at"])

    def _deliver(self, alert: rules.Alert, *, resolved: bool, now: datetime) -> bool:
        """Post to every receiver, each with retries; True when all took it."""
        ok = True
        status = "resolved" if resolved else "firing"
        for receiver in self.settings.receivers:
            url, body = self._request(receiver, alert, resolved=resolved, now=now)
            for attempt in range(self.settings.retries + 1):
                try:
                    self.http.post(url, json=body).raise_for_status()
                    ALERTS_SENT.labels(receiver.kind, status).inc()
                    break
                except httpx.HTTPError as exc:
                    ALERT_FAILURES.labels(receiver.kind).inc()
                    log.warning("alert %s to %s receiver %s failed (try %d): %s", alert.key, receiver.kind, url,
                                attempt + 1, exc)
                    time.sleep(min(2.0 ** attempt * 0.2, 5.0))
            else:
                ok = False
        return ok

    def _request(self, receiver: AlertReceiver, alert: rules.Alert, *, resolved: bool,
                 now: datetime) -> tuple[str, Any]:
        status = "resolved" if resolved else "firing"
        if receiver.kind == "slack":
            return receiver.url, rules.slack_payload(alert, status=status)
        if receiver.kind == "alertmanager":
            return (receiver.url.rstrip("/") + "/api/v2/alerts",
                    rules.alertmanager_payload(alert, now=now, resolved=resolved,
                                               generator_url=self.settings.generator_url))
        return receiver.url, rules.webhook_payload(alert, status=status)

    def close(self) -> None:
        self.http.close()
