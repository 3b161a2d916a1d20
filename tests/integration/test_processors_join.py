"""The processors worker on the real broker: lineage + shuffled, duplicated inference halves -> traces."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from provline.schemas import Topics, default_catalog, key_for, new_envelope, producer_identity
from provline.schemas.events import utcnow
from provline.schemas.integrity import HashChain
from tests.helpers import seal

pytestmark = pytest.mark.integration

PREDICTIONS = 50
LATE = 3
SHADOW = 2
DUPLICATES = 10
LINEAGE_WAIT_SECONDS = 8
TRACE_DEADLINE_SECONDS = 60
DRAIN_SECONDS = 3  # after the last expected trace, how long a duplicate trace may still show up
STOP_DEADLINE_SECONDS = 15
READY_DEADLINE_SECONDS = 45


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(
    kafka_bootstrap: str, topics: Topics, data_dir: Path, log_path: Path, *, extra_env: dict[str, str] | None = None
) -> WorkerProcess:
    web_port = free_port()
    env = {
        **os.environ,
        "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap,
        "PROVLINE_TOPICS__PREFIX": topics.prefix,
        "PROVLINE_PROCESSORS__APP_ID": f"{topics.prefix}-processors",
        "PROVLINE_PROCESSORS__DATA_DIR": str(data_dir),
        "PROVLINE_PROCESSORS__WEB_PORT": str(web_port),
        "PROVLINE_PROCESSORS__LINEAGE_WAIT_S": str(LINEAGE_WAIT_SECONDS),
        "PROVLINE_PROCESSORS__METRICS_PORT": str(free_port()),
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c",
             "from provline.stream_processors.app import run_worker\n"
             "from provline.stream_processors.settings import ProcessorSettings\n"
             "run_worker(ProcessorSettings(), loglevel='warn')"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
        )
    return WorkerProcess(process, web_port, log_path)


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], web_port: int, log_path: Path) -> None:
        self.process = process
        self.web_port = web_port
        self.log_path = log_path

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"a worker exited with {self.process.returncode}:\n{self.log_path.read_text()[-5000:]}")

    def web_ready(self) -> bool:
        """The worker's web server answers (Faust starts it once the worker has recovered its tables)."""
        self.check_alive()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/", timeout=1).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def settled(self) -> bool:
        """/readyz says 200: the worker is neither rebalancing nor recovering its tables."""
        self.check_alive()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=1).close()
        except OSError:  # HTTPError (503) included
            return False
        return True

    def assignment(self) -> dict[str, list[int]]:
        """Topic -> partitions the worker holds (Faust's /stats/assignment/ page)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/stats/assignment/", timeout=5) as answer:
            return dict(json.load(answer)["actives"])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def workers(
    request: pytest.FixtureRequest, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> Iterator[list[WorkerProcess]]:
    """``request.param`` workers of one app, each with its own data dir, all settled in one group."""
    started = [
        start_worker(kafka_bootstrap, topics, tmp_path / f"processors-{n}", tmp_path / f"worker-{n}.log")
        for n in range(request.param)
    ]
    try:
        wait_settled(started, topics)
        yield started
    finally:
        for worker in started:
            worker.stop()


def wait_settled(workers: list[WorkerProcess], topics: Topics) -> None:
    """Until every worker is ready and holds inference partitions: the group has settled, so no
    rebalance of the start-up moves a partition in the middle of a test (CI, stop 26: a held
    trace outlived its lineage wait across one)."""
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    while not all(worker.settled() and worker.assignment().get(topics.inference) for worker in workers):
        assert time.monotonic() < deadline, "the workers did not settle into one group sharing the partitions"
        time.sleep(0.2)  # polling interval, not a wait for an outcome


def read_from_start(kafka_bootstrap: str, topic_names: list[str]) -> Consumer:
    """A consumer of every partition of ``topic_names`` from the start, without a group to join."""
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "unused", "enable.auto.commit": False})
    found = consumer.list_topics(timeout=10).topics
    consumer.assign([TopicPartition(name, partition, OFFSET_BEGINNING)
                     for name in topic_names for partition in found[name].partitions])
    return consumer


def outputs(consumer: Consumer, workers: list[WorkerProcess], until: Callable[[], float]) -> Iterator[Message]:
    """What ``consumer`` reads, while ``time.monotonic()`` is before ``until()`` (asked again each time);
    fails as soon as a worker exited."""
    while time.monotonic() < until():
        for worker in workers:
            worker.check_alive()
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            yield message


class Events:
    """Builds sealed, encoded events of one producer session."""

    def __init__(self) -> None:
        self.catalog = default_catalog()
        self.chain = HashChain(self.catalog)
        self.producer = producer_identity("test", uuid.uuid4().hex)

    def __call__(self, kind: str, fields: dict[str, Any], *, event_time: Any = None) -> tuple[str, bytes]:
        value = {**new_envelope(self.producer, event_time=event_time), **fields}
        seal(self.chain, kind, value)
        return key_for(kind, value), self.catalog.encode(kind, value)


def produce(producer: Producer, topic: str, messages: list[tuple[str, bytes]]) -> None:
    for key, value in messages:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0, "the test broker did not take every message"


@pytest.mark.parametrize("workers", [1, 2], indirect=True, ids=["one-worker", "two-workers"])
def test_workers_join_shuffled_duplicated_halves_into_one_trace_each(
    kafka_bootstrap: str, topics: Topics, workers: list[WorkerProcess]
) -> None:
    events = Events()
    now = utcnow()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    produce(producer, topics.lineage, [
        events("RunEvent", {"run_id": "run-7", "name": "train", "state": "COMPLETED",
                            "code": {"repo": "git@example.com:acme/churn", "commit": "abc123"}},
               event_time=now - timedelta(minutes=10)),
        events("ModelVersion", {"model_name": "churn", "version": "3", "artifact_uri": "s3://models/churn/3",
                                "artifact_sha256": "f" * 64, "run_id": "run-7", "datasets": ["d" * 64],
                                "feature_sets": []},
               event_time=now - timedelta(minutes=9)),
        events("Deployment", {"model_name": "churn", "model_version": "3", "environment": "prod",
                              "endpoint": "/predict", "action": "DEPLOY"},
               event_time=now - timedelta(minutes=8)),
    ])

    # "/predict" is deployed; "/late" is deployed only once traces flow (its halves wait for
    # lineage, then join); "/shadow" never is (its traces go out incomplete after the wait)
    endpoints = {f"pred-{index:03d}": "/predict" for index in range(PREDICTIONS)}
    endpoints |= {f"late-{index}": "/late" for index in range(LATE)}
    endpoints |= {f"shadow-{index}": "/shadow" for index in range(SHADOW)}
    request_sha: dict[str, str] = {}
    halves: list[tuple[str, bytes]] = []
    for index, (pid, endpoint) in enumerate(endpoints.items()):
        body = f'{{"x": {index}}}'.encode()
        request_sha[pid] = hashlib.sha256(body).hexdigest()
        halves.append(events("InferenceRequest", {
            "prediction_id": pid, "endpoint": endpoint, "method": "POST", "path": endpoint,
            "body_size": len(body), "body_sha256": request_sha[pid], "features": {"x": float(index)},
        }))
        halves.append(events("InferenceResponse", {
            "prediction_id": pid, "endpoint": endpoint, "status": 200, "body_size": 2,
            "body_sha256": hashlib.sha256(b"{}").hexdigest(), "latency_us": 1000 + index,
        }))
    rng = random.Random(7)
    halves += rng.sample(halves, DUPLICATES)
    rng.shuffle(halves)
    halves.insert(PREDICTIONS, ("garbage", b"not an avro event"))
    produce(producer, topics.inference, halves)

    traces: dict[str, list[dict[str, Any]]] = {}
    consumer = read_from_start(kafka_bootstrap, [topics.traces, topics.dlq])
    dead_letters = []
    late_deployed = False
    try:
        deadline = time.monotonic() + TRACE_DEADLINE_SECONDS
        drain_until: float | None = None
        for message in outputs(consumer, workers, lambda: drain_until or deadline):  # noqa: B023 (read each step)
            if message.topic() == topics.dlq:
                dead_letters.append(message)
                continue
            value = default_catalog().decode(message.value()).value
            assert message.key() == value["prediction_id"].encode()
            traces.setdefault(value["prediction_id"], []).append(value)
            if not late_deployed:
                produce(producer, topics.lineage, [
                    events("Deployment", {"model_name": "churn", "model_version": "3", "environment": "prod",
                                          "endpoint": "/late", "action": "DEPLOY"},
                           event_time=now - timedelta(minutes=8)),
                ])
                late_deployed = True
            if len(traces) == len(endpoints) and dead_letters and drain_until is None:
                drain_until = time.monotonic() + DRAIN_SECONDS
    finally:
        consumer.close()

    assert sorted(traces) == sorted(request_sha), f"{len(traces)} of {len(endpoints)} predictions were traced"
    for pid, found in traces.items():
        assert len(found) == 1, f"{pid} was traced {len(found)} times: " + "; ".join(
            f"{t['event_id']} complete={t['complete']} missing={t['missing']}" for t in found)
        trace = found[0]
        assert trace["request_sha256"] == request_sha[pid] and trace["status"] == 200
        if endpoints[pid] == "/shadow":
            assert trace["complete"] is False and trace["missing"] == "lineage", trace
            assert trace["model_version"] is None and trace["artifact_sha256"] is None
            continue
        assert trace["complete"] is True and trace["missing"] is None, trace
        assert (trace["model_name"], trace["model_version"]) == ("churn", "3")
        assert trace["artifact_sha256"] == "f" * 64 and trace["training_run_id"] == "run-7"
        assert trace["code_commit"] == "abc123" and trace["dataset_digests"] == ["d" * 64]
        assert trace["deployment_event_id"] is not None
    # a rebalance may hand the garbage's partition to another worker before its offset is committed
    assert dead_letters and all(letter.value() == b"not an avro event" for letter in dead_letters)
    headers = dict(dead_letters[0].headers() or [])
    assert b"not Avro single-object encoding" in headers["provline-dlq-error"]
    assert headers["provline-dlq-reason"] == b"CorruptEventError"
    assert headers["provline-source-topic"] == topics.inference.encode()
