"""Performance and alerts on the real broker and chDB store, delivered to a real HTTP receiver run here.

Events go through the broker and the sink writer (the production path); the monitor's rounds run
as ``provline serve`` runs them, with a webhook, a Slack-compatible and an Alertmanager-API receiver
that are one HTTP server collecting posts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient
from sklearn.metrics import accuracy_score, f1_score

from provline.schemas import Topics
from provline.sink.api import create_api
from provline.sink.monitor import ALERT_FAILURES, Monitor, stored_performance
from provline.sink.settings import MonitoringSettings, ServeSettings
from provline.sink.store import open_store
from tests.integration.test_sink_store import Events, insert_directly, produce, run_writer_until, sink_settings

pytestmark = pytest.mark.integration


class Receiver:
    """A real HTTP server that keeps every POST body by path."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.refuse = 0  # answer this many posts with 503 (not kept) before taking them
        lock = threading.Lock()
        posts = self.posts
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    refused = receiver.refuse > 0
                    if refused:
                        receiver.refuse -= 1
                    else:
                        posts.append((self.path, json.loads(body)))
                self.send_response(503 if refused else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def by_path(self, path: str) -> list[Any]:
        return [body for p, body in self.posts if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def monitoring(receiver: Receiver, **extra: Any) -> MonitoringSettings:
    return MonitoringSettings(receivers=[{"kind": "webhook", "url": receiver.url + "/hook"},
                                         {"kind": "slack", "url": receiver.url + "/slack"},
                                         {"kind": "alertmanager", "url": receiver.url}],
                              retries=0, **extra)


def story(*, drifted: bool, wrong: int, gap: bool) -> tuple[Events, list[str], list[str]]:
    """An evaluated model, 40 predictions with labels (``wrong`` of them wrong), one drift window."""
    events = Events()
    t0 = events.add("RunEvent", run_id="run-1", name="train", state="COMPLETED")["event_time"]
    events.add("Evaluation", model_name="churn", model_version="3", passed=True,
               metrics=[{"name": "accuracy", "value": 0.95, "ci_low": 0.9, "ci_high": 0.98}])
    labels, predictions = [], []
    for index in range(40):
        prediction_id = f"p-{index}"
        predicted = str(index % 2)
        label = predicted if index >= wrong else str(1 - index % 2)
        events.add("PredictionTrace", prediction_id=prediction_id, endpoint="/predict", complete=True,
                   model_name="churn", model_version="3", request_time=t0, outputs={"predict": predicted})
        # the label arrives after the trace: it is joined from the stored feedback by prediction id
        events.add("Feedback", prediction_id=prediction_id, label=label, source="crm", observed_time=t0)
        labels.append(label)
        predictions.append(predicted)
    for feature, breached in (("age", drifted), ("income", False)):
        events.add("DriftMetric", model_name="churn", model_version="3", feature=feature, window_start=t0,
                   window_end=t0 + timedelta(hours=1), metric="psi", value=0.5 if breached else 0.01, threshold=0.2,
                   breached=breached, sample_size=100)
    if gap:
        events.add("DeliveryGap", dropped=12, reason="queue_full", first_time=t0, last_time=t0)
    return events, labels, predictions


def stored(events: Events, kafka_bootstrap: str, topics: Topics, chdb_path: str, store: Client) -> None:
    produce(kafka_bootstrap, topics, events)
    expected = len(events.all)
    counted = ("run_events", "evaluations", "prediction_traces", "feedback", "drift_metrics", "delivery_gaps")

    def count() -> int:
        return sum(int(store.command(f"SELECT count() FROM {table}")) for table in counted)  # type: ignore[arg-type]

    run_writer_until(sink_settings(kafka_bootstrap, topics, chdb_path), lambda: count() >= expected,
                     "every event stored")


def test_in_distribution_traffic_raises_no_alert_and_performance_matches_scikit_learn(
    kafka_bootstrap: str, topics: Topics, chdb_path: str, store: Client, receiver: Receiver,
) -> None:
    events, labels, predictions = story(drifted=False, wrong=1, gap=False)
    stored(events, kafka_bootstrap, topics, chdb_path, store)
    monitor = Monitor(monitoring(receiver), store)
    for _ in range(2):
        monitor.run_once()
    assert receiver.posts == []
    rows = {row["metric"]: row for row in stored_performance(store, "churn", version="3")}
    assert rows["accuracy"]["value"] == pytest.approx(accuracy_score(labels, predictions))
    assert rows["accuracy"]["sample_count"] == 40 and rows["accuracy"]["baseline"] == 0.95
    assert rows["accuracy"]["ci_low"] < rows["accuracy"]["value"] < rows["accuracy"]["ci_high"]


def test_drift_gap_and_performance_breaches_alert_once_each_across_rounds_and_a_restart(
    kafka_bootstrap: str, topics: Topics, chdb_path: str, store: Client, receiver: Receiver,
) -> None:
    events, labels, predictions = story(drifted=True, wrong=12, gap=True)  # accuracy 0.7 against 0.95
    stored(events, kafka_bootstrap, topics, chdb_path, store)
    monitor = Monitor(monitoring(receiver), store)
    for _ in range(3):
        monitor.run_once()
    Monitor(monitoring(receiver), store).run_once()  # a restarted serve: its state is the store's
    hooks = receiver.by_path("/hook")
    assert sorted(hook["rule"] for hook in hooks) == ["delivery_gap", "drift_breach", "performance_below_baseline"]
    assert len({hook["key"] for hook in hooks}) == 3
    assert len(receiver.by_path("/slack")) == 3 and all("text" in body for body in receiver.by_path("/slack"))
    alertmanager = [alert for body in receiver.by_path("/api/v2/alerts") for alert in body]
    assert sorted(a["labels"]["alertname"] for a in alertmanager) == [
        "delivery_gap", "drift_breach", "performance_below_baseline"]
    assert accuracy_score(labels, predictions) == pytest.approx(0.7)


def test_the_api_computes_performance_on_demand_for_viewers_and_stores_verify_outcomes(
    store: Client, chdb_path: str, tmp_path: Any,
) -> None:
    events, labels, predictions = story(drifted=False, wrong=5, gap=False)
    insert_directly(store, events)
    policy = tmp_path / "policy.yaml"
    policy.write_text("models:\n  churn:\n    positive_label: '1'\n    metrics: [accuracy, f1]\n")
    api_client = open_store(chdb_path)
    try:
        settings = ServeSettings(store={"url": chdb_path}, monitoring={"policy": str(policy)},
                                 api={"tokens": {"vi": {"token": "v" * 32, "role": "viewer"},
                                                 "au": {"token": "a" * 32, "role": "auditor"}}})
        http = TestClient(create_api(settings, api_client))
        viewer = {"Authorization": f"Bearer {'v' * 32}"}
        assert http.get("/v1/performance/churn", headers=viewer).json()["performance"] == []  # no round yet
        assert http.get("/v1/performance/churn").status_code == 401
        rows = http.get("/v1/performance/churn", params={"refresh": "true", "version": "3"}, headers=viewer).json()
        by_metric = {row["metric"]: row for row in rows["performance"]}
        assert by_metric["accuracy"]["value"] == pytest.approx(accuracy_score(labels, predictions))
        assert by_metric["f1"]["value"] == pytest.approx(f1_score(labels, predictions, pos_label="1"))
        assert by_metric["precision"]["ci_method"] == "wilson" and by_metric["f1"]["ci_method"] == "bootstrap"

        assert http.get("/v1/verify", headers={"Authorization": f"Bearer {'a' * 32}"}).status_code == 200
        assert store.query("SELECT outcome, reader FROM verify_runs").result_rows == [("clean", "au")]
    finally:
        api_client.close()


def test_a_failed_delivery_is_retried_counted_and_sent_once_when_the_receiver_is_back(
    store: Client, receiver: Receiver,
) -> None:
    events, _, _ = story(drifted=True, wrong=0, gap=False)
    insert_directly(store, events)
    settings = MonitoringSettings(receivers=[{"kind": "webhook", "url": receiver.url + "/hook"}], retries=1)
    failures = ALERT_FAILURES.labels("webhook")._value.get()
    receiver.refuse = 2  # the first try and its retry
    monitor = Monitor(settings, store)
    monitor.run_once()
    assert receiver.posts == [] and ALERT_FAILURES.labels("webhook")._value.get() == failures + 2
    assert store.query("SELECT count() FROM alert_state").result_rows == [(0,)]  # not recorded: retried next round
    monitor.run_once()
    monitor.run_once()
    assert [hook["rule"] for hook in receiver.by_path("/hook")] == ["drift_breach"]
