"""Ground truth from every side, on the real broker, processors and serve (chDB): the producer (both ids),
``POST /v1/feedback`` (single, batch, client request id) and ``provline feedback import`` (CSV, Parquet)
each join onto the right trace, sent after the trace was emitted, so each yields the labelled revision.
A Feedback naming a client request id before its prediction exists is resolved once the trace is stored.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from deploy.local.kafka.broker import free_port
from provline.producers import JobSettings, Lineage
from provline.schemas import Topics, default_catalog
from provline.schemas.integrity import signature_valid
from tests.integration.test_processors_join import Events, WorkerProcess, start_worker
from tests.integration.test_processors_stream import TraceReader, lineage_events, produce, wait_ready

pytestmark = pytest.mark.integration

AUDITOR, WRITER, ADMIN = "a" * 32, "w" * 32, "m" * 32
SIGNING_KEY = bytes(range(32))
DEADLINE_SECONDS = 60.0
PREDICTIONS = 9  # p-0 .. p-8, requests carrying client ids order-0 .. order-8
EXPECTED = {f"p-{i}": f"label-{i}" for i in range(PREDICTIONS)}


class Serve:
    def __init__(self, process: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
        self.process, self.base, self.log_path = process, base, log_path

    def check_alive(self) -> None:
        assert self.process.poll() is None, f"provline serve exited:\n{self.log_path.read_text()[-3000:]}"

    def get(self, path: str, token: str = AUDITOR, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def post(self, path: str, body: Any, token: str = WRITER) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def sql(self, statement: str) -> list[list[Any]]:
        reply = self.post("/v1/sql", {"sql": statement}, token=AUDITOR)
        assert reply.status_code == 200, reply.text
        return reply.json()["rows"]


def start_serve(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Serve:
    port = free_port()
    env = {
        **os.environ,
        "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap,
        "PROVLINE_TOPICS__PREFIX": topics.prefix,
        "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}",
        "PROVLINE_API__PORT": str(port),
        "PROVLINE_SINK__BATCH_MAX_S": "0.1",
        "PROVLINE_SINK__CONSUMER_GROUP": f"{topics.prefix}-sink",
        "PROVLINE_FEEDBACK__RESOLVE_INTERVAL_S": "0.5",
        "PROVLINE_EMITTER__SPOOL_DIR": str(tmp_path / "serve-spool"),
        "PROVLINE_SIGNING__KEY": base64.b64encode(SIGNING_KEY).decode(),
        "PROVLINE_API__TOKENS": json.dumps({"ops": {"token": AUDITOR, "role": "auditor"},
                                            "crm": {"token": WRITER, "role": "feedback_writer"},
                                            "root": {"token": ADMIN, "role": "admin"}}),
    }
    log_path = tmp_path / "serve.log"
    code = "from provline.sink.serve import run_serve; from provline.sink.settings import ServeSettings; " \
           "run_serve(ServeSettings())"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=Path(__file__).parents[2])
    return Serve(process, f"http://127.0.0.1:{port}", log_path)


@pytest.fixture
def stack(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[tuple[WorkerProcess, Serve]]:
    worker = start_worker(kafka_bootstrap, topics, tmp_path / "data", tmp_path / "worker.log")
    serve = start_serve(kafka_bootstrap, topics, tmp_path)
    try:
        wait_ready(worker)
        yield worker, serve
    finally:
        worker.stop()
        if serve.process.poll() is None:
            serve.process.terminate()
            try:
                serve.process.wait(30)
            except subprocess.TimeoutExpired:
                serve.process.kill()
                serve.process.wait()


def halves(events: Events, base: datetime, index: int) -> list[tuple[str, bytes]]:
    """One prediction's request (carrying the client's id) and response, sent as separate halves."""
    pid, at = f"p-{index}", base + timedelta(milliseconds=index * 100)
    body = f'{{"i": {index}}}'.encode()
    return [
        events("InferenceRequest", {
            "prediction_id": pid, "endpoint": "/predict", "method": "POST", "path": "/predict", "body_size": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(), "features": {"i": float(index)},
            "request_id": f"order-{index}",
        }, event_time=at),
        events("InferenceResponse", {
            "prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 2,
            "body_sha256": hashlib.sha256(b"{}").hexdigest(), "latency_us": 20_000, "outputs": {},
        }, event_time=at + timedelta(milliseconds=20)),
    ]


def until(what: Any, done: Any, *alive: Any) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        for process in alive:
            process.check_alive()
        time.sleep(0.2)  # polling interval


def cli(env: dict[str, str], *args: str) -> Any:
    from provline.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def test_labels_from_the_producer_the_api_and_files_join_onto_their_traces_as_labelled_revisions(
    kafka_bootstrap: str, topics: Topics, stack: tuple[WorkerProcess, Serve], tmp_path: Path,
) -> None:
    worker, serve = stack
    events = Events()
    base = datetime.now(UTC) - timedelta(minutes=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    job = Lineage(settings=JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
                                       emitter={"spool_dir": str(tmp_path / "job-spool")}), producer_name="crm-job")
    # A label by client request id before its prediction exists: stored, then resolved once the trace is.
    job.feedback(client_request_id="order-8", label="label-8", source="crm")
    assert job.emitter.flush(10)
    produce(producer, topics.lineage, lineage_events(events, base))
    produce(producer, topics.inference, [half for i in range(PREDICTIONS) for half in halves(events, base, i)])
    reader = TraceReader(kafka_bootstrap, [topics.traces])
    traces: dict[str, list[dict[str, Any]]] = {}

    def read() -> None:
        for _, value in reader.poll(0.2):
            traces.setdefault(value["prediction_id"], []).append(value)

    def stored(pid: str) -> bool:
        try:
            return serve.get(f"/v1/traces/{pid}").status_code == 200
        except httpx.TransportError:
            return False  # not listening yet

    try:
        until("every trace to be stored", lambda: all(stored(pid) for pid in EXPECTED), worker, serve)
        read()

        # after the traces went out: the producer, by either id
        job.feedback(prediction_id="p-0", label="label-0", source="crm")
        job.feedback(client_request_id="order-1", label="label-1", source="crm", outcome=1.0)
        assert job.close(10)
        # the API: single by prediction id, single by client request id, a batch of four
        single = serve.post("/v1/feedback", {"prediction_id": "p-2", "label": "label-2", "source": "crm"})
        assert single.status_code == 202, single.text
        by_request = serve.post("/v1/feedback", {"client_request_id": "order-3", "label": "label-3"})
        assert by_request.status_code == 202 and by_request.json()["results"][0]["prediction_ids"] == ["p-3"]
        batch = serve.post("/v1/feedback", [
            {"prediction_id": "p-4", "label": "label-4"}, {"client_request_id": "order-5", "label": "label-5"},
            {"prediction_id": "p-unknown", "label": "x"}, {"prediction_id": 5, "label": "x"},
        ])
        assert batch.status_code == 200, batch.text
        assert [r["status"] for r in batch.json()["results"]] == ["accepted", "accepted", "not_found", "invalid"]
        # files, through the API: a CSV by prediction id (one row unknown: exit 1), a Parquet by client id
        with (tmp_path / "labels.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([["prediction", "y"], ["p-6", "label-6"], ["p-unknown", "x"]])
        env = {"PROVLINE_CLIENT__API_TOKEN": WRITER}
        imported = cli(env, "feedback", "import", str(tmp_path / "labels.csv"), "--id-column", "prediction",
                       "--label-column", "y", "--source", "crm-export", "--api", serve.base)
        assert imported.exit_code == 1, imported.output
        assert "1 rows accepted, 1 not found" in imported.output and "p-unknown" in imported.output
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"request": ["order-7"], "y": ["label-7"]}), tmp_path / "labels.parquet")
        imported = cli(env, "feedback", "import", str(tmp_path / "labels.parquet"), "--id-column", "request",
                       "--id-kind", "client-request", "--label-column", "y", "--api", serve.base)
        assert imported.exit_code == 0, imported.output

        def labelled() -> dict[str, list[dict[str, Any]]]:
            read()
            return {pid: [t for t in found if t["feedback_event_id"]] for pid, found in traces.items()
                    if any(t["feedback_event_id"] for t in found)}

        until(lambda: f"a labelled revision of every trace; labelled: {sorted(labelled())}",
              lambda: set(labelled()) == set(EXPECTED), worker, serve)
    finally:
        reader.close()

    for pid, label in EXPECTED.items():
        first, *revisions = traces[pid]
        assert first["label"] is None, (pid, first)  # the trace went out before its label
        assert [t["label"] for t in revisions] == [label], (pid, revisions)  # one labelled revision, the right one
        assert revisions[0]["event_id"] != first["event_id"] and revisions[0]["request_id"] == f"order-{pid[2:]}"
    assert "p-unknown" not in traces

    # the store: the label on each trace, the resolved Feedback signed by serve's key and stored once
    until("the labels in the store", lambda: all(serve.get(f"/v1/traces/{pid}").json().get("label") == label
                                                 for pid, label in EXPECTED.items()), serve)
    rows = serve.sql("SELECT prediction_id, client_request_id, producer_name, hex(raw) FROM feedback FINAL "
                     "WHERE client_request_id IN ('order-1', 'order-8') ORDER BY client_request_id, prediction_id")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("", "order-1", "crm-job"), ("p-1", "order-1", "provline-serve"),
        ("", "order-8", "crm-job"), ("p-8", "order-8", "provline-serve")]
    public = Ed25519PrivateKey.from_private_bytes(SIGNING_KEY).public_key()
    resolved = [default_catalog().decode(bytes.fromhex(r[3])).value for r in rows if r[2] == "provline-serve"]
    assert resolved and all(signature_valid(public, value) for value in resolved)
    assert serve.sql("SELECT count() FROM feedback WHERE prediction_id = 'p-unknown'") == [[0]]
    verified = serve.get("/v1/verify").json()  # serve's own session of Feedback verifies like any producer's
    assert verified["findings"] == [], verified["findings"]
    log = serve.get("/v1/access-log", token=ADMIN, limit=1000).json()
    logged = [dict(zip(log["columns"], row, strict=True)) for row in log["rows"]]
    posted = sorted((r["time"], r["reader"], r["status"]) for r in logged if r["path"] == "/v1/feedback")
    assert [(reader, status) for _, reader, status in posted] == [("crm", 202), ("crm", 202), ("crm", 200),
                                                                  ("crm", 200), ("crm", 200)]  # and the 2 imports
