"""The demo, end to end: a prediction sent through the sidecar is traceable in ClickHouse.

Everything is real: the Kafka broker, `provline serve` (sink + API over chDB), the Faust
processors, the model server and the sidecar run as separate processes, as in `make demo`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.demo.stack import DEMO_API_TOKEN, ENDPOINT, MODEL_NAME, MODEL_VERSION, REPO, DemoStack
from provline.producers import JobSettings, Lineage
from provline.schemas import Topics

pytestmark = pytest.mark.e2e

CUSTOMERS = [
    {"tenure_months": 2, "monthly_charges": 99.9, "support_calls": 5},
    {"tenure_months": 60, "monthly_charges": 30.0, "support_calls": 0},
]


def promote(stack: DemoStack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provline", "promote", MODEL_NAME, MODEL_VERSION, "--to", "production",
         "--endpoint", ENDPOINT, "--reason", "e2e", "--api", stack.api_url],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PROVLINE_CLIENT__API_TOKEN": DEMO_API_TOKEN,
             "PROVLINE_KAFKA__BOOTSTRAP": stack.kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": stack.topics.prefix,
             "COLUMNS": "200"},
    )


def check_promotion_guardrail(stack: DemoStack, dataset_digest: str) -> None:
    """`provline promote` refuses while evaluation and approval are missing, then records PROMOTE."""
    refused = promote(stack)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"no passing evaluation of {MODEL_NAME}@{MODEL_VERSION}" in refused.stdout
    assert f"no approval by role risk-officer for model:{MODEL_NAME}@{MODEL_VERSION} -> production" in refused.stdout

    settings = JobSettings(kafka={"bootstrap": stack.kafka_bootstrap}, topics={"prefix": stack.topics.prefix})
    with Lineage(settings=settings, producer_name="e2e-review") as lineage:
        lineage.evaluate(MODEL_NAME, MODEL_VERSION, metrics={"accuracy": 0.8}, minimums={"accuracy": 0.6},
                         dataset=dataset_digest)
        lineage.decide(f"model:{MODEL_NAME}@{MODEL_VERSION}", transition="staging->production", approved=True,
                       actor="e2e", role="risk-officer", rationale="passes")
    deadline = time.monotonic() + 60
    while not stack.sql("SELECT event_id FROM decisions") and time.monotonic() < deadline:
        time.sleep(0.3)

    accepted = promote(stack)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    while not stack.sql("SELECT event_id FROM deployments WHERE JSONExtractString(payload, 'action') = 'PROMOTE'"):
        assert time.monotonic() < deadline, "the PROMOTE deployment never reached the store"
        time.sleep(0.3)


def test_a_prediction_is_traced_to_its_input_model_run_commit_and_dataset(
    tmp_path: Path, kafka_bootstrap: str, topics: Topics
) -> None:
    with DemoStack(tmp_path, kafka_bootstrap=kafka_bootstrap, topics=topics) as stack:
        stack.start_broker()
        stack.start_platform()
        facts = stack.train()
        stack.start_serving(facts.model_path)
        predictions = stack.predict(CUSTOMERS)
        direct = [
            httpx.post(f"http://127.0.0.1:{stack.model_port}{ENDPOINT}", content=p.request_body,
                       headers={"Content-Type": "application/json"}).content
            for p in predictions
        ]
        for prediction in predictions:
            stack.wait_for_trace(prediction.prediction_id)

        chosen = predictions[0]
        cli = subprocess.run(
            [sys.executable, "-m", "provline", "trace", chosen.prediction_id, "--json", "--api", stack.api_url],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PROVLINE_CLIENT__API_TOKEN": DEMO_API_TOKEN},
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == stack.wait_for_trace(chosen.prediction_id)
        check_promotion_guardrail(stack, facts.dataset_digest)
        [audit] = stack.sql(f"""
            SELECT t.request_sha256 AS request_sha256, t.model_name AS model_name,
                   t.model_version AS model_version, t.artifact_sha256 AS artifact_sha256,
                   t.training_run_id AS training_run_id, t.dataset_digests AS dataset_digests,
                   r.code_commit AS run_commit,
                   m.artifact_sha256 AS registered_artifact_sha256,
                   JSONExtract(r.payload, 'inputs', 'Array(String)') AS run_inputs,
                   q.body_sha256 AS stored_request_sha256, s.body_sha256 AS stored_response_sha256
            FROM prediction_traces AS t FINAL
            JOIN run_events AS r FINAL ON r.run_id = t.training_run_id AND r.state = 'COMPLETED'
            JOIN model_versions AS m FINAL ON m.model_name = t.model_name AND m.model_version = t.model_version
            JOIN inference_requests AS q FINAL ON q.prediction_id = t.prediction_id
            JOIN inference_responses AS s FINAL ON s.prediction_id = t.prediction_id
            WHERE t.prediction_id = '{chosen.prediction_id}'
        """)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    request_sha256 = hashlib.sha256(chosen.request_body).hexdigest()
    assert audit["request_sha256"] == request_sha256
    assert audit["stored_request_sha256"] == request_sha256
    assert (audit["model_name"], audit["model_version"]) == (MODEL_NAME, MODEL_VERSION)
    assert audit["artifact_sha256"] == facts.artifact_sha256
    assert audit["artifact_sha256"] == hashlib.sha256(facts.model_path.read_bytes()).hexdigest()
    assert audit["registered_artifact_sha256"] == facts.artifact_sha256
    assert audit["training_run_id"] == facts.run_id
    assert audit["run_commit"] == commit == facts.commit
    assert audit["dataset_digests"] == [facts.dataset_digest]
    assert audit["run_inputs"] == [facts.dataset_digest]

    # The client got exactly the bytes the model server sends for that input, and the sidecar
    # recorded the hash of those same bytes.
    assert [p.response_body for p in predictions] == direct
    assert all(p.status == 200 and p.model_version == MODEL_VERSION for p in predictions)
    assert audit["stored_response_sha256"] == hashlib.sha256(chosen.response_body).hexdigest()
