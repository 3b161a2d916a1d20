"""The processors at stream scale on the real broker: 10,000 predictions through a rollout and a
rollback, a worker killed mid-stream, and drift against the training data's profiles."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer

from provline.producers.profile import profile_table
from provline.schemas import Topics, default_catalog
from provline.schemas.frames import exchange_frame
from tests.integration.test_processors_join import READY_DEADLINE_SECONDS, Events, WorkerProcess, start_worker

pytestmark = pytest.mark.integration

PREDICTIONS = 10_000
SPACING_MS = 5  # request times 5 ms apart: 10,000 predictions span 50 s of event time
ROLLOUT_AT_MS = 15_000  # version 2 replaces version 1 ...
ROLLBACK_AT_MS = 35_000  # ... and is rolled back to version 1
DUPLICATE_SHARE = 0.05
DELAYED = 300  # responses held back until most traces are out
TRACE_DEADLINE_SECONDS = 90
DRAIN_SECONDS = 3  # after the last expected trace, how long a duplicate may still show up
KILL_AFTER = 1_500  # traces seen before the kill (the first half of the stream completes ~2,500 pairs)


def wait_ready(worker: WorkerProcess) -> None:
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    while not worker.web_ready():
        assert time.monotonic() < deadline, f"the worker did not become ready:\n{worker.log_path.read_text()[-3000:]}"
        time.sleep(0.2)  # polling interval


@pytest.fixture
def worker_factory(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[Any]:
    """Starts workers of one app (ready when returned) and always stops them at the end."""
    started: list[WorkerProcess] = []

    def start(name: str = "w", **env: str) -> WorkerProcess:
        worker = start_worker(kafka_bootstrap, topics, tmp_path / f"data-{name}", tmp_path / f"{name}.log",
                              extra_env=env)
        started.append(worker)
        wait_ready(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def produce(producer: Producer, topic: str, messages: list[tuple[str, bytes]]) -> None:
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:  # the local queue is full: let librdkafka send some
                producer.poll(0.1)
    assert producer.flush(30) == 0, "the test broker did not take every message"


def lineage_events(events: Events, base: datetime, profiles: list[dict[str, Any]] | None = None
                   ) -> list[tuple[str, bytes]]:
    messages = [events("RunEvent", {"run_id": "run-1", "name": "train", "state": "COMPLETED",
                                    "code": {"repo": "git@example.com:acme/churn", "commit": "c0ffee"}},
                       event_time=base - timedelta(hours=1))]
    if profiles is not None:
        messages.append(events("DatasetVersion", {
            "name": "customers", "digest": "d" * 64, "files": [], "sources": [], "pii_tags": [], "columns": [],
            "quality_checks": [], "parents": [], "profiles": profiles,
        }, event_time=base - timedelta(hours=1)))
    for version in ("1", "2"):
        messages.append(events("ModelVersion", {
            "model_name": "churn", "version": version, "artifact_uri": f"s3://models/churn/{version}",
            "artifact_sha256": version * 64, "run_id": "run-1", "datasets": ["d" * 64], "feature_sets": [],
        }, event_time=base - timedelta(minutes=30)))
    for version, at_ms, action in (("1", -60_000, "DEPLOY"), ("2", ROLLOUT_AT_MS, "PROMOTE"),
                                   ("1", ROLLBACK_AT_MS, "ROLLBACK")):
        messages.append(events("Deployment", {"model_name": "churn", "model_version": version, "environment": "prod",
                                              "endpoint": "/predict", "action": action},
                               event_time=base + timedelta(milliseconds=at_ms)))
    return messages


def expected_version(index: int) -> str:
    at_ms = index * SPACING_MS
    return "2" if ROLLOUT_AT_MS <= at_ms < ROLLBACK_AT_MS else "1"


def halves_of(events: Events, base: datetime, count: int, *, prefix: str = "p", spacing_ms: int = SPACING_MS,
              features: Any = None) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    requests, responses = [], []
    for index in range(count):
        pid = f"{prefix}-{index:05d}"
        at = base + timedelta(milliseconds=index * spacing_ms)
        body = f'{{"i": {index}}}'.encode()
        feature_values, output_values = features(index) if features else ({"i": float(index)}, {})
        requests.append(events("InferenceRequest", {
            "prediction_id": pid, "endpoint": "/predict", "method": "POST", "path": "/predict",
            "body_size": len(body), "body_sha256": hashlib.sha256(body).hexdigest(), "features": feature_values,
        }, event_time=at))
        # responses may land after a rollout boundary: the request's time decides the version
        responses.append(events("InferenceResponse", {
            "prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 2,
            "body_sha256": hashlib.sha256(b"{}").hexdigest(), "latency_us": 20_000, "outputs": output_values,
        }, event_time=at + timedelta(milliseconds=20)))
    return requests, responses


class TraceReader:
    def __init__(self, kafka_bootstrap: str, topics: list[str]) -> None:
        self.consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"check-{time.time_ns()}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe(topics)
        self.catalog = default_catalog()

    def poll(self, seconds: float = 0.5) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for message in self.consumer.consume(10_000, seconds):
            if message.error():
                continue
            found.append((message.topic(), self.catalog.decode(message.value()).value))
        return found

    def close(self) -> None:
        self.consumer.close()


def collect_traces(reader: TraceReader, expected: int, workers: list[WorkerProcess], *,
                   traces: dict[str, list[dict[str, Any]]] | None = None, until: Any = None,
                   on_progress: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Traces by prediction id until ``expected`` predictions are traced (plus a drain), or ``until()``."""
    traces = {} if traces is None else traces
    deadline = time.monotonic() + TRACE_DEADLINE_SECONDS
    drain_until: float | None = None
    while time.monotonic() < (drain_until or deadline):
        for worker in workers:
            worker.check_alive()
        for _, value in reader.poll():
            traces.setdefault(value["prediction_id"], []).append(value)
        if on_progress is not None:
            on_progress(len(traces))
        if until is not None and until(traces):
            return traces
        if len(traces) >= expected and drain_until is None:
            drain_until = time.monotonic() + DRAIN_SECONDS
    return traces


def test_10000_shuffled_duplicated_delayed_predictions_through_rollout_and_rollback(
    kafka_bootstrap: str, topics: Topics, worker_factory: Any
) -> None:
    worker = worker_factory("w", PROVLINE_PROCESSORS__PENDING_TTL_S="120", PROVLINE_PROCESSORS__DEDUP_RETENTION_S="600")
    events = Events()
    base = datetime.now(UTC) - timedelta(minutes=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    produce(producer, topics.lineage, lineage_events(events, base))
    requests, responses = halves_of(events, base, PREDICTIONS)
    rng = random.Random(5)
    delayed = rng.sample(responses, DELAYED)
    delayed_ids = {key for key, _ in delayed}
    stream = requests + [r for r in responses if r[0] not in delayed_ids]
    stream += rng.sample(stream, int(DUPLICATE_SHARE * len(stream)))
    rng.shuffle(stream)
    produce(producer, topics.inference, stream)

    reader = TraceReader(kafka_bootstrap, [topics.traces])
    try:
        traces = collect_traces(reader, PREDICTIONS, [worker], until=lambda t: len(t) >= PREDICTIONS - DELAYED)
        # the delayed halves, each sent twice, with duplicates of halves already joined
        late = delayed + delayed + rng.sample(requests, 200)
        rng.shuffle(late)
        produce(producer, topics.inference, late)
        traces = collect_traces(reader, PREDICTIONS, [worker], traces=traces)
    finally:
        reader.close()

    assert len(traces) == PREDICTIONS, f"{len(traces)} of {PREDICTIONS} predictions were traced"
    copies = {pid: len(found) for pid, found in traces.items() if len(found) != 1}
    assert not copies, f"{len(copies)} predictions were traced more than once, e.g. {list(copies.items())[:5]}"
    event_ids = set()
    for pid, [trace] in traces.items():
        index = int(pid.split("-")[1])
        assert trace["complete"] is True and trace["missing"] is None, trace
        assert trace["model_version"] == expected_version(index), (pid, trace["model_version"])
        assert trace["artifact_sha256"] == trace["model_version"] * 64 and trace["code_commit"] == "c0ffee"
        event_ids.add(trace["event_id"])
    assert len(event_ids) == PREDICTIONS
    versions = [t[0]["model_version"] for t in traces.values()]
    assert versions.count("2") == (ROLLBACK_AT_MS - ROLLOUT_AT_MS) // SPACING_MS


SESSION_TIMEOUT_SECONDS = 8


# After a SIGKILL the replacement worker can go through two rebalances, and faust-streaming acks
# (so may commit) messages fetched in the superseded generation without processing them
# (faust-streaming #216/#221/#223). The join keeps its own read positions and reads skipped offsets
# again (stream_processors/positions.py); this test is what shows that nothing is lost that way.
@pytest.mark.parametrize("shape", ["halves", "frames"])  # frames: one message per prediction, as the sidecar sends
def test_a_worker_killed_mid_stream_loses_and_duplicates_no_trace(
    kafka_bootstrap: str, topics: Topics, worker_factory: Any, shape: str
) -> None:
    first = worker_factory("first", PROVLINE_KAFKA__SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_SECONDS))
    events = Events()
    base = datetime.now(UTC) - timedelta(minutes=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    produce(producer, topics.lineage, lineage_events(events, base))
    requests, responses = halves_of(events, base, PREDICTIONS)
    stream = requests + responses if shape == "halves" else [
        (key, exchange_frame(events.catalog, key, request, response))
        for (key, request), (_, response) in zip(requests, responses, strict=True)]
    random.Random(9).shuffle(stream)
    reader = TraceReader(kafka_bootstrap, [topics.traces])
    try:
        # the first half of the stream, then the kill, then the rest while the worker restarts
        produce(producer, topics.inference, stream[: len(stream) // 2])
        traces = collect_traces(reader, PREDICTIONS, [first], until=lambda t: len(t) >= KILL_AFTER)
        assert len(traces) >= KILL_AFTER
        first.process.kill()  # SIGKILL: no shutdown, no final commit, no flush
        first.process.wait()
        produce(producer, topics.inference, stream[len(stream) // 2:])
        second = worker_factory("second", PROVLINE_KAFKA__SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_SECONDS))
        traces = collect_traces(reader, PREDICTIONS, [second], traces=traces)
    finally:
        reader.close()

    assert len(traces) == PREDICTIONS, f"{PREDICTIONS - len(traces)} predictions lost their trace"
    # a trace the killed worker sent but could not record as sent is sent again with the same event id:
    # the sink's dedup by event id keeps one
    for pid, found in traces.items():
        assert len({t["event_id"] for t in found}) == 1, f"{pid} has {len(found)} different traces"
        index = int(pid.split("-")[1])
        assert all(t["complete"] and t["model_version"] == expected_version(index) for t in found), (
            pid, [(t["complete"], t["missing"], t["model_version"]) for t in found])
    assert len({found[0]["event_id"] for found in traces.values()}) == PREDICTIONS


def baseline_profiles() -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    size = 20_000
    table = pa.table({
        "x": rng.normal(0, 1, size),
        "plan": rng.choice(["basic", "gold", "platinum"], size, p=[0.6, 0.3, 0.1]),
        "score": rng.uniform(0, 1, size),
    })
    return profile_table(table).profiles


def test_a_shifted_feature_breaches_and_an_unchanged_one_does_not(
    kafka_bootstrap: str, topics: Topics, worker_factory: Any
) -> None:
    window_seconds = 10
    worker = worker_factory("w", PROVLINE_DRIFT__WINDOW_S=str(window_seconds),
                            PROVLINE_DRIFT__LATENESS_S="2")
    events = Events()
    # every request of a version at one instant, both in the next window (event times may lie ahead of
    # the wall clock), so the window closes only after all of them are joined; version 1 is deployed
    # at that instant, version 2 a second later
    start = (int(time.time()) // window_seconds + 1) * window_seconds
    at = {"1": datetime.fromtimestamp(start, UTC), "2": datetime.fromtimestamp(start + 2, UTC)}
    base = at["1"] - timedelta(milliseconds=ROLLOUT_AT_MS - 1_000)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    produce(producer, topics.lineage, lineage_events(events, base, baseline_profiles()))
    rng = np.random.default_rng(3)
    count = 2_000
    same_x, same_plan, same_score = rng.normal(0, 1, count), rng.choice(
        ["basic", "gold", "platinum"], count, p=[0.6, 0.3, 0.1]), rng.uniform(0, 1, count)
    shifted_x, shifted_plan, shifted_score = rng.normal(0.8, 1, count), rng.choice(
        ["basic", "gold", "platinum"], count, p=[0.3, 0.3, 0.4]), rng.uniform(0.3, 1, count)

    messages: list[tuple[str, bytes]] = []
    for version, (xs, plans, scores) in (
        ("1", (same_x, same_plan, same_score)), ("2", (shifted_x, shifted_plan, shifted_score)),
    ):
        requests, responses = halves_of(
            events, at[version], count, prefix=f"v{version}", spacing_ms=0,
            features=lambda i, xs=xs, plans=plans, scores=scores: (
                {"x": float(xs[i]), "plan": str(plans[i])}, {"score": float(scores[i])}),
        )
        messages += requests + responses
    random.Random(1).shuffle(messages)
    produce(producer, topics.inference, messages)

    metrics: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    reader = TraceReader(kafka_bootstrap, [topics.drift])
    expected = {("1", f, m) for f in ("x", "output:score") for m in ("psi", "ks", "jensen_shannon", "wasserstein")}
    expected |= {("1", "plan", m) for m in ("jensen_shannon", "chi_squared")}
    expected |= {("2", f, m) for _, f, m in expected}
    try:
        deadline = time.monotonic() + TRACE_DEADLINE_SECONDS
        while not expected <= set(metrics) and time.monotonic() < deadline:
            worker.check_alive()
            for _, value in reader.poll():
                metrics.setdefault((value["model_version"], value["feature"], value["metric"]), []).append(value)
    finally:
        reader.close()

    assert expected <= set(metrics), f"missing drift metrics: {sorted(expected - set(metrics))}"
    for (version, feature, metric), found in metrics.items():
        assert len(found) == 1, f"{version} {feature} {metric} was emitted {len(found)} times"
        [value] = found
        assert value["sample_size"] == count and value["baseline_dataset"] == "d" * 64
        assert value["window_start"] == at["1"] and value["window_end"] == at["1"] + timedelta(seconds=window_seconds)
        if version == "1":
            assert value["breached"] is False, f"unchanged {feature} breached {metric}: {value}"
        else:
            assert value["breached"] is True, f"shifted {feature} did not breach {metric}: {value}"


def test_a_server_reporting_its_own_version_is_traced_and_its_outputs_drift_against_the_predictions(
    kafka_bootstrap: str, topics: Topics, worker_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 14, items 7 and 11: a real scikit-learn job registers "1" (with its predictions on its
    evaluation data and served_versions=["v1"]) through the producers; the server answers "v1"."""
    from sklearn import linear_model  # a test dependency (pyproject test extra): missing is a failure, not a skip

    from provline.producers import JobSettings, Lineage
    from tests.mlflow_model import write_mlflow_model

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the run's code: this repository's commit
    window_seconds = 10
    worker = worker_factory("w", PROVLINE_DRIFT__WINDOW_S=str(window_seconds), PROVLINE_DRIFT__LATENESS_S="2")
    rng = np.random.default_rng(8)

    def data(size: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0, 1, (size, 2))
        return x, x @ np.array([2.0, -1.0]) + rng.normal(0, 2.0, size)

    x_train, y_train = data(3_000)
    x_eval, _ = data(2_000)
    model = linear_model.LinearRegression().fit(x_train, y_train)
    settings = JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix})
    with Lineage(settings=settings, producer_name="train-price") as lineage:
        with lineage.run("train", stage="training") as run:
            run.use_dataset(pd.DataFrame(x_train, columns=["a", "b"]).assign(predict=y_train), name="houses")
            registered = run.register_model(write_mlflow_model(tmp_path / "model", model), name="price", version="1",
                                            signature={"inputs": ["a", "b"], "outputs": ["predict"]},
                                            predictions=model.predict(x_eval), served_versions=["v1"])
        lineage.deploy("price", "1", endpoint="/predict")

    events = Events()
    start = (int(time.time()) // window_seconds + 1) * window_seconds
    at = datetime.fromtimestamp(start, UTC)
    count = 400
    x_live, _ = data(count)
    predicted = model.predict(x_live)
    messages: list[tuple[str, bytes]] = []
    for i in range(count):
        body = f'{{"i": {i}}}'.encode()
        messages.append(events("InferenceRequest", {
            "prediction_id": f"v-{i:04d}", "endpoint": "/predict", "method": "POST", "path": "/predict",
            "body_size": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "features": {"a": float(x_live[i, 0]), "b": float(x_live[i, 1])},
        }, event_time=at))
        messages.append(events("InferenceResponse", {
            "prediction_id": f"v-{i:04d}", "endpoint": "/predict", "status": 200, "model_name": "price",
            "model_version": "v1", "body_size": 2, "body_sha256": hashlib.sha256(b"{}").hexdigest(),
            "latency_us": 1_000, "outputs": {"predict": float(predicted[i])},
        }, event_time=at + timedelta(milliseconds=5)))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    produce(producer, topics.inference, messages)

    reader = TraceReader(kafka_bootstrap, [topics.traces, topics.drift])
    traces: dict[str, dict[str, Any]] = {}
    drift: dict[tuple[str, str], dict[str, Any]] = {}
    expected_drift = {(f, m) for f in ("a", "b", "output:predict") for m in ("psi", "ks", "jensen_shannon",
                                                                            "wasserstein")}
    try:
        deadline = time.monotonic() + TRACE_DEADLINE_SECONDS
        while (len(traces) < count or not expected_drift <= set(drift)) and time.monotonic() < deadline:
            worker.check_alive()
            for topic, value in reader.poll():
                if topic == topics.traces:
                    traces[value["prediction_id"]] = value
                else:
                    drift[(value["feature"], value["metric"])] = value
    finally:
        reader.close()

    assert len(traces) == count
    incomplete = [t for t in traces.values() if not t["complete"]]
    assert not incomplete, f"{len(incomplete)} traces incomplete, e.g. {incomplete[0]['missing']}"
    assert {t["artifact_sha256"] for t in traces.values()} == {registered["artifact_sha256"]}
    assert expected_drift <= set(drift), f"missing drift metrics: {sorted(expected_drift - set(drift))}"
    breached = {key: value["value"] for key, value in drift.items() if value["breached"]}
    assert not breached, f"in-distribution traffic breached {breached}"
    output = drift[("output:predict", "psi")]
    assert output["sample_size"] == count and output["baseline_dataset"] == registered["predictions_dataset"]
