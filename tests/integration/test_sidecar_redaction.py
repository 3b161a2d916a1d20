"""Redaction end to end: no redacted value reaches Kafka, in any payload format; modes and sampling per route."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from confluent_kafka import Consumer
from prometheus_client import REGISTRY

from provline.schemas import Topics, default_catalog
from provline.schemas.frames import events_in
from provline.sidecar import SidecarApp, SidecarSettings
from tests.helpers import LoopThread, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server

pytestmark = pytest.mark.integration

KEY = "test-redaction-key-0123456789abcdef"
SSN, PHONE, EMAIL, CUSTOMER = "SSN-731-SECRET", "PHONE-555-SECRET", "EMAIL-SECRET@x.y", "CUSTOMER-4242"
SCORE = "SCORE-SECRET-9"
SECRETS = [SSN, PHONE, EMAIL, CUSTOMER, SCORE]
POLICY = """
inputs:
  drop: [ssn]
  hash: [customer_id]
  mask: [phone, customer.email]
outputs:
  drop: [internal_score]
routes:
  - path: /hashonly/*
    capture: hash-only
  - path: /sampled
    sample_rate: 0
"""
REQUESTS = {
    "plain": {"ssn": SSN, "phone": PHONE, "customer": {"email": EMAIL, "customer_id": CUSTOMER}, "age": 41},
    "kserve": {"inputs": [
        {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": [SSN]},
        {"name": "phone", "shape": [1, 1], "datatype": "BYTES", "data": [[PHONE]]},
        {"name": "customer_id", "shape": [1], "datatype": "BYTES", "data": [CUSTOMER]},
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]},
    ]},
    "mlflow": {"dataframe_split": {"columns": ["ssn", "phone", "customer_id", "age"],
                                   "data": [[SSN, PHONE, CUSTOMER, 41], [SSN, PHONE, CUSTOMER, 42]]}},
    "tf": {"instances": [{"ssn": SSN, "phone": PHONE, "customer_id": CUSTOMER, "age": 41}]},
}


async def model(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"score": 0.5, "internal_score": SCORE, "echo_free": "ok"})


def keyed(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "hmac-sha256:" + hmac.new(KEY.encode(), canonical, hashlib.sha256).hexdigest()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"redaction-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    raw: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(raw) < expected and time.monotonic() < deadline:
            raw.extend(event for m in consumer.consume(100, 0.5) if m.error() is None
                       for event in events_in(default_catalog(), m.value()))
        raw.extend(event for m in consumer.consume(100, 1.0) if m.error() is None  # nothing more expected
                   for event in events_in(default_catalog(), m.value()))
    finally:
        consumer.close()
    return raw


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


def test_no_redacted_value_reaches_the_inference_topic(
    upstream_url: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = SidecarSettings(
        sidecar={"upstream": upstream_url, "kserve_metadata": False},
        capture={"policy_file": policy, "redaction_key": KEY},
        emitter={"close_timeout_s": 60},  # shutdown delivers every event: this test reads them all back
        kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
    )
    loop = LoopThread()
    app = SidecarApp(settings)
    sampled_before = REGISTRY.get_sample_value("provline_sidecar_sampled_out_total") or 0.0
    server, task, url = loop.run(start_server(app))
    sent: list[str] = []
    try:
        with httpx.Client(base_url=url) as client:
            for name, document in REQUESTS.items():
                for _ in range(2):  # twice: hashed values must be equal across events (joinable)
                    reply = client.post(f"/{name}", json=document)
                    assert reply.status_code == 200 and reply.json()["internal_score"] == SCORE  # client: untouched
                    sent.append(reply.headers["x-prediction-id"])
            for body in (f"ssn={SSN}&phone={PHONE}".encode(), b'{"ssn": "' + SSN.encode() + b'", broken'):
                reply = client.post("/opaque", content=body, headers={"Content-Type": "application/json"})
                sent.append(reply.headers["x-prediction-id"])
            reply = client.post("/hashonly/x", content=json.dumps(REQUESTS["plain"]).encode())
            hash_only = reply.headers["x-prediction-id"]
            sent.append(hash_only)
            skipped = client.post("/sampled", json=REQUESTS["plain"])
            assert skipped.status_code == 200 and skipped.headers["x-prediction-id"]
    finally:
        loop.run(stop_server(server, task), timeout=30)  # flushes the app's emitter
        loop.close()
    assert (REGISTRY.get_sample_value("provline_sidecar_sampled_out_total") or 0.0) == sampled_before + 1

    raw = read_topic(kafka_bootstrap, topics.inference, 2 * len(sent))
    assert len(raw) == 2 * len(sent)
    for message in raw:
        for secret in SECRETS:
            assert secret.encode() not in message, secret
    events = [default_catalog().decode(message).value for message in raw]
    assert {event["prediction_id"] for event in events} == set(sent)
    requests = {e["prediction_id"]: e for e in events if "features" in e}
    responses = {e["prediction_id"]: e for e in events if "outputs" in e}

    by_format = [requests[pid] for pid in sent[: 2 * len(REQUESTS)]]
    for first, second in zip(by_format[::2], by_format[1::2], strict=True):
        assert first["features"] == second["features"] and first["body"] == second["body"]
    plain, kserve, mlflow, tf = by_format[::2]
    assert json.loads(plain["body"]) == {
        "phone": "****", "customer": {"email": "****", "customer_id": keyed(CUSTOMER)}, "age": 41}
    assert kserve["features"] == {"phone": "****", "customer_id": keyed(CUSTOMER), "age": 41.0}
    assert mlflow["features"] == {"phone": "****", "customer_id": keyed(CUSTOMER), "age": 41.0}
    assert tf["features"] == {"phone": "****", "customer_id": keyed(CUSTOMER), "age": 41.0}
    assert responses[sent[0]]["outputs"] == {"score": 0.5, "echo_free": "ok"}

    for opaque in sent[2 * len(REQUESTS): 2 * len(REQUESTS) + 2]:
        assert requests[opaque]["body"] is None and requests[opaque]["features"] == {}
        assert "redaction policy applies to JSON bodies only" in requests[opaque]["parse_error"]
    assert requests[hash_only]["body"] is None and requests[hash_only]["features"] == {}
    assert responses[hash_only]["body"] is None and responses[hash_only]["outputs"] == {}
    # where redaction applies the digest of the exact bytes is keyed (issue 13, finding 12)
    assert requests[hash_only]["body_sha256"] == "hmac-sha256:" + hmac.new(
        KEY.encode(), json.dumps(REQUESTS["plain"]).encode(), hashlib.sha256).hexdigest()
