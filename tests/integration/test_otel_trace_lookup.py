"""Issue 17 item 5: predictions found by the OpenTelemetry trace id of their request's traceparent.

Real parts: requests through the sidecar (in this process) to the session's Kafka broker, `provline
serve` (sink + audit API over chDB) in its own process, and `provline trace --otel-trace-id` on the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from clickhouse_connect.driver.client import Client

from deploy.local.kafka.broker import free_port
from provline.schemas import Topics
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sink import queries
from tests.helpers import LoopThread, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server
from tests.integration.test_sink_ingest import event, stored_row
from tests.integration.test_sink_serve import cli

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 60.0
TOKEN = "o" * 32
KEY = "test-redaction-key-0123456789abcdef"
SHARED = "4bf92f3577b34da6a3ce929d0e0e4736"  # the trace id two requests share
SINGLE = "0af7651916cd43dd8448eb211c80319c"
HIDDEN = "5c1f0b1d7e2a4c3b9d8e7f6a5b4c3d2e"  # sent through a sidecar whose policy hashes traceparent


def traceparent(trace_id: str, span: int) -> str:
    return f"00-{trace_id}-{span:016x}-01"


async def model(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"score": 0.5})


@pytest.fixture
def upstream_url() -> Iterator[str]:
    loop = LoopThread()

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", model)
        return await serve_app(app)

    runner, port = loop.run(start())
    yield f"http://127.0.0.1:{port}"
    loop.run(runner.cleanup())
    loop.close()


def send_through_sidecar(settings: SidecarSettings, traceparents: list[str | None]) -> list[str]:
    """Each request through a sidecar with these settings; the prediction ids it gave. The sidecar is
    stopped before this returns, which delivers its events."""
    loop = LoopThread()
    server, task, url = loop.run(start_server(SidecarApp(settings)))
    ids = []
    try:
        with httpx.Client(base_url=url) as client:
            for header in traceparents:
                reply = client.post("/predict", json={"age": 41},
                                    headers={"traceparent": header} if header else {})
                assert reply.status_code == 200
                ids.append(reply.headers["x-prediction-id"])
    finally:
        loop.run(stop_server(server, task), timeout=60)
        loop.close()
    return ids


def sidecar_settings(upstream: str, bootstrap: str, topics: Topics, **sections: Any) -> SidecarSettings:
    return SidecarSettings(sidecar={"upstream": upstream, "kserve_metadata": False},
                           emitter={"close_timeout_s": 60}, kafka={"bootstrap": bootstrap},
                           topics={"prefix": topics.prefix}, **sections)


@pytest.fixture
def serve(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[str]:
    """`provline serve` in its own process; its API base URL."""
    port = free_port()
    env = {
        **os.environ, "PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
        "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}", "PROVLINE_API__PORT": str(port),
        "PROVLINE_SINK__BATCH_MAX_S": "0.1",
        "PROVLINE_API__TOKENS": json.dumps({"ops": {"token": TOKEN, "role": "auditor"}}),
    }
    code = ("from provline.sink.serve import run_serve; from provline.sink.settings import ServeSettings; "
            "run_serve(ServeSettings())")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2])
    try:
        yield f"http://127.0.0.1:{port}"
        assert process.poll() is None, "provline serve exited early"
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def poll_cli(*args: str) -> Any:
    """The CLI's answer once it exits 0, polled until the sink has stored the events."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        result = cli(*args)
        if result.exit_code == 0:
            return result
        assert time.monotonic() < deadline, f"{args}: still {result.exit_code} {result.output}"
        time.sleep(0.2)  # polling interval


def test_a_request_through_the_sidecar_is_found_by_its_otel_trace_id(
    upstream_url: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path, serve: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = sidecar_settings(upstream_url, kafka_bootstrap, topics)
    shared_a, shared_b, single, untraced = send_through_sidecar(
        plain, [traceparent(SHARED, 1), traceparent(SHARED, 2), traceparent(SINGLE, 3), None])
    policy = tmp_path / "policy.yaml"
    policy.write_text("headers:\n  hash: [traceparent]\n")
    hashing = sidecar_settings(upstream_url, kafka_bootstrap, topics,
                               capture={"policy_file": policy, "redaction_key": KEY})
    (hidden,) = send_through_sidecar(hashing, [traceparent(HIDDEN, 4)])

    monkeypatch.setenv("PROVLINE_CLIENT__API_TOKEN", TOKEN)
    listed = poll_cli("trace", "--otel-trace-id", SHARED, "--json", "--api", serve)
    assert sorted(json.loads(listed.output)["prediction_ids"]) == sorted([shared_a, shared_b])
    text = cli("trace", "--otel-trace-id", SHARED, "--api", serve)
    assert text.exit_code == 0 and shared_a in text.output and shared_b in text.output

    # one prediction: the CLI goes on to show its trace, which the processors (not running here) would join
    one = cli("trace", "--otel-trace-id", SINGLE, "--api", serve)
    assert one.exit_code == 1 and f"no trace for prediction {single}" in " ".join(one.output.split())

    poll_answer = httpx.get(f"{serve}/v1/predictions", params={"otel_trace_id": HIDDEN},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while poll_answer.json()["traceparent_redacted"] is None:  # until the hashing sidecar's event is stored
        assert time.monotonic() < deadline, poll_answer.text
        time.sleep(0.2)
        poll_answer = httpx.get(f"{serve}/v1/predictions", params={"otel_trace_id": HIDDEN},
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert poll_answer.json() == {"otel_trace_id": HIDDEN, "prediction_ids": [], "traceparent_redacted": "hash"}
    redacted = cli("trace", "--otel-trace-id", HIDDEN, "--api", serve)
    output = " ".join(redacted.output.split())
    assert redacted.exit_code == 1 and "keyed hash" in output and "x-prediction-id" in output
    assert hidden and untraced not in (shared_a, shared_b, single)

    for bad, message in (("0" * 32, "all-zero trace id"), (SHARED.upper(), "use lower case"),
                         (traceparent(SHARED, 1), "32 lower-case hex")):
        refused = cli("trace", "--otel-trace-id", bad, "--api", serve)
        assert refused.exit_code == 2 and message in " ".join(refused.output.split()), refused.output
        answer = httpx.get(f"{serve}/v1/predictions", params={"otel_trace_id": bad},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert answer.status_code == 400 and message in answer.json()["detail"]
    both = httpx.get(f"{serve}/v1/predictions", params={"otel_trace_id": SHARED, "request_id": "x"},
                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert both.status_code == 400
    assert cli("trace", "p", "--otel-trace-id", SHARED, "--api", serve).exit_code == 2


def test_the_lookup_reads_the_bloom_filter_not_every_payload(store: Client) -> None:
    for number in range(3):
        header = traceparent(SHARED if number == 0 else SINGLE, number + 1)
        stored_row(store, "InferenceRequest", event(
            "InferenceRequest", prediction_id=f"p{number}", endpoint="/predict", method="POST", path="/predict",
            body_sha256="0" * 64, body_size=2, traceparent=header), offset=number)
    assert queries.predictions_with_otel_trace_id(store, SHARED).prediction_ids == ["p0"]
    plan = "\n".join(row[0] for row in store.query(
        "EXPLAIN indexes = 1 SELECT prediction_id FROM inference_requests WHERE otel_trace_id = {t:String}",
        parameters={"t": SHARED}).result_rows)
    assert "inference_requests_otel_trace_id" in plan, plan
