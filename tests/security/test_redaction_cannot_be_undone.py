"""Issue 13, finding 12: nothing stored lets a reader recover a redacted value.

The attack: a viewer sees the redacted body and the digest of the original; when the digest is a
plain SHA-256, trying every 9-digit SSN in the dropped field's place finds it. Where redaction
applies, digests of original content are keyed (HMAC under PROVLINE_CAPTURE__REDACTION_KEY, which
the store never sees), so the same search finds nothing. And the policy's field names match what
clients really send: any case, KServe V2 tensors in requests and replies (their parameters too),
JSON inside strings, dotted names below lists, and the headers the sidecar records.
"""

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

from provline.schemas import Topics, default_catalog
from provline.schemas.frames import events_in
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sidecar.errors import PolicyError
from tests.helpers import LoopThread, memory_emitter, sent, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server

pytestmark = pytest.mark.integration

KEY = "finding-12-redaction-key-0123456789abcdef"
SSN = "123-45-6789"
FULL = b'{"x": 1}'
SECRETS = {
    "upper": "SSN-UPPER-SECRET", "mixed": "SSN-MIXED-SECRET", "email-upper": "EMAIL-UPPER-SECRET",
    "tensor-in": "TENSOR-SSN-SECRET", "tensor-param": "TENSOR-PARAM-SECRET", "tensor-out": "TENSOR-OUT-SECRET",
    "score": "SCORE-SECRET", "in-string": "STRING-SSN-SECRET", "in-string-email": "STRING-EMAIL-SECRET",
    "twice-encoded": "TWICE-ENCODED-SECRET", "instances-email": "INSTANCES-EMAIL-SECRET",
    "deep-email": "DEEP-EMAIL-SECRET", "request-id": "REQUEST-ID-SECRET", "client-id": "CLIENT-ID-SECRET",
}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
REQUESTS: dict[str, object] = {
    "case": {"SSN": SECRETS["upper"], "Ssn": SECRETS["mixed"], "Customer": {"EMAIL": SECRETS["email-upper"]},
             "age": 41},
    "kserve": {"inputs": [
        {"name": "SSN", "shape": [1], "datatype": "BYTES", "data": [SECRETS["tensor-in"]]},
        {"name": "phone", "shape": [1], "datatype": "BYTES", "data": ["5550100"],
         "parameters": {"raw": SECRETS["tensor-param"]}},
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]},
    ]},
    "in-string": {
        "payload": json.dumps({"ssn": SECRETS["in-string"], "customer": {"email": SECRETS["in-string-email"]}}),
        "twice": json.dumps(json.dumps({"ssn": SECRETS["twice-encoded"]})), "note": "[not json",
    },
    "instances": {"instances": [{"customer": {"email": SECRETS["instances-email"]}, "age": 41}],
                  "meta": {"owner": {"customer": {"email": SECRETS["deep-email"]}}}},
}


async def model(request: web.Request) -> web.Response:
    """A KServe V2 reply with tensors the output rules name, in any case."""
    await request.read()
    return web.json_response({"model_name": "churn", "outputs": [
        {"name": "score", "shape": [1], "datatype": "FP32", "data": [0.5]},
        {"name": "Internal_Score", "shape": [1], "datatype": "BYTES", "data": [SECRETS["score"]]},
        {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": [SECRETS["tensor-out"]]},
    ]})


@pytest.fixture
def upstream_url() -> Iterator[str]:
    loop = LoopThread()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", model)
        return (await serve_app(app))[0]

    runner = loop.run(start())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    loop.run(runner.cleanup())
    loop.close()


def keyed_digest(body: bytes) -> str:
    return "hmac-sha256:" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()


def keyed_value(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "hmac-sha256:" + hmac.new(KEY.encode(), canonical, hashlib.sha256).hexdigest()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """(key, event) of every event on ``topic`` (an exchange frame's two one after the other)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"finding-12-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages.extend((m.key(), e) for m in consumer.consume(100, 0.5) if m.error() is None
                            for e in events_in(default_catalog(), m.value()))
        messages.extend((m.key(), e) for m in consumer.consume(100, 1.0) if m.error() is None
                        for e in events_in(default_catalog(), m.value()))
    finally:
        consumer.close()
    return messages


Sent = list[tuple[str, str, bytes, dict[str, str]]]  # (name, path, body, headers)


def serve_and_read(policy_text: str, exchanges: Sent, *, upstream_url: str, kafka_bootstrap: str, topics: Topics,
                   tmp_path: Path) -> tuple[dict[str, str], list[tuple[bytes, bytes]]]:
    """Send ``exchanges`` through a sidecar under the policy; the prediction ids by name, and every
    (key, value) that reached the inference topic."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    settings = SidecarSettings(
        sidecar={"upstream": upstream_url, "kserve_metadata": False},
        capture={"policy_file": policy, "redaction_key": KEY},
        emitter={"close_timeout_s": 60}, kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
    )
    loop = LoopThread()
    server, task, url = loop.run(start_server(SidecarApp(settings)))
    ids: dict[str, str] = {}
    try:
        with httpx.Client(base_url=url) as client:
            for name, path, body, headers in exchanges:
                reply = client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
                assert reply.status_code == 200 and SECRETS["score"] in reply.text  # the client's reply is untouched
                ids[name] = reply.headers["x-prediction-id"]
    finally:
        loop.run(stop_server(server, task), timeout=60)  # delivers every event
        loop.close()
    messages = read_topic(kafka_bootstrap, topics.inference, 2 * len(ids))
    assert len(messages) == 2 * len(ids)
    return ids, messages


def by_kind(messages: list[tuple[bytes, bytes]]) -> tuple[dict[str, dict], dict[str, dict]]:
    events = [default_catalog().decode(value).value for _, value in messages]
    return ({e["prediction_id"]: e for e in events if "features" in e},
            {e["prediction_id"]: e for e in events if "outputs" in e})


def assert_no_secret_stored(messages: list[tuple[bytes, bytes]], secrets: dict[str, str]) -> None:
    for key, value in messages:
        for name, secret in secrets.items():
            assert secret.encode() not in key + value, name


def test_a_dropped_ssn_cannot_be_recovered_from_the_redacted_body_and_its_digest(
    upstream_url: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    policy = "inputs:\n  drop: [ssn]\nroutes:\n  - path: /hash-only\n    capture: hash-only\n" \
             "  - path: /full\n    capture: full\n"
    victim = json.dumps({"name": "Ada", "ssn": SSN, "age": 41}).encode()
    ids, messages = serve_and_read(policy, [
        ("victim", "/predict", victim, {}), ("hash-only", "/hash-only", victim, {}),
        ("full", "/full", FULL, {}),  # full capture: recorded as sent
    ], upstream_url=upstream_url, kafka_bootstrap=kafka_bootstrap, topics=topics, tmp_path=tmp_path)
    requests, responses = by_kind(messages)

    # What a viewer sees: the redacted body and the digest of the original.
    seen = requests[ids["victim"]]
    seen_body = json.loads(seen["body"])
    assert seen_body == {"name": "Ada", "age": 41}
    digests = {event["body_sha256"] for event in [*requests.values(), *responses.values()]}
    true_number = int(SSN.replace("-", ""))
    for number in range(true_number - 20_000, true_number + 20_000):  # a window of the 10^9 an attacker tries
        digits = f"{number:09d}"
        guess = {"name": seen_body["name"], "ssn": f"{digits[:3]}-{digits[3:5]}-{digits[5:]}", "age": seen_body["age"]}
        assert hashlib.sha256(json.dumps(guess).encode()).hexdigest() not in digests, "the dropped SSN was recovered"

    assert seen["body_sha256"] == keyed_digest(victim)  # an HMAC: the key holder can still check the bytes
    plain = hashlib.sha256(victim).hexdigest()
    assert not any(plain.encode() in key + value for key, value in messages)
    hash_only = requests[ids["hash-only"]]
    assert hash_only["body_sha256"] == keyed_digest(victim) and hash_only["body"] is None
    for name in ("victim", "hash-only"):
        assert responses[ids[name]]["body_sha256"].startswith("hmac-sha256:")
    # full capture keeps the plain digest of the exact bytes, request and reply
    assert requests[ids["full"]]["body_sha256"] == hashlib.sha256(FULL).hexdigest()
    assert len(responses[ids["full"]]["body_sha256"]) == 64
    assert_no_secret_stored(messages, {"ssn": SSN})


def test_field_names_match_in_any_case_tensor_string_and_depth(
    upstream_url: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    policy = "inputs:\n  drop: [ssn]\n  mask: [phone, customer.email]\noutputs:\n  drop: [ssn, internal_score]\n"
    exchanges = [(name, f"/{name}", json.dumps(document).encode(), {}) for name, document in REQUESTS.items()]
    ids, messages = serve_and_read(policy, exchanges, upstream_url=upstream_url, kafka_bootstrap=kafka_bootstrap,
                                   topics=topics, tmp_path=tmp_path)
    requests, responses = by_kind(messages)
    body_secrets = {k: v for k, v in SECRETS.items() if k not in ("request-id", "client-id")}
    assert_no_secret_stored(messages, body_secrets)

    assert json.loads(requests[ids["case"]]["body"]) == {"Customer": {"EMAIL": "****"}, "age": 41}
    kserve = json.loads(requests[ids["kserve"]]["body"])
    assert kserve["inputs"][0] == {"name": "phone", "shape": [1], "datatype": "BYTES", "data": ["****"],
                                   "parameters": {"raw": "****"}}
    assert requests[ids["kserve"]]["features"] == {"phone": "****", "age": 41.0}
    assert responses[ids["kserve"]]["outputs"] == {"score": 0.5}
    in_string = json.loads(requests[ids["in-string"]]["body"])
    assert json.loads(in_string["payload"]) == {"customer": {"email": "****"}} and in_string["note"] == "[not json"
    assert json.loads(json.loads(in_string["twice"])) == {}
    instances = json.loads(requests[ids["instances"]]["body"])
    assert instances == {"instances": [{"customer": {"email": "****"}, "age": 41}],
                         "meta": {"owner": {"customer": {"email": "****"}}}}


def test_hashed_headers_give_keyed_ids_and_nothing_of_the_client(
    upstream_url: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    policy = "headers:\n  hash: [X-Request-ID, x-client-id]\n  drop: [traceparent]\n"
    headers = {"X-Request-ID": SECRETS["request-id"], "X-Client-ID": SECRETS["client-id"], "traceparent": TRACEPARENT}
    ids, messages = serve_and_read(policy, [("client", "/predict", b'{"x": 1}', headers)], upstream_url=upstream_url,
                                   kafka_bootstrap=kafka_bootstrap, topics=topics, tmp_path=tmp_path)
    # the prediction id, returned to the client and used as the Kafka key, is the keyed HMAC of its id:
    # the same client id always gives the same prediction id, so events stay joinable
    assert ids["client"] == keyed_value(SECRETS["request-id"])
    assert {key.decode() for key, _ in messages} == {ids["client"]}
    requests, _ = by_kind(messages)
    request = requests[ids["client"]]
    assert (request["client_id"], request["traceparent"]) == (keyed_value(SECRETS["client-id"]), None)
    assert_no_secret_stored(messages, {"request id": SECRETS["request-id"], "client id": SECRETS["client-id"],
                                       "trace id": TRACE_ID})


def test_dropped_headers_leave_fresh_ids_and_nothing_of_the_client(upstream_url: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("headers:\n  drop: [x-request-id, X-Client-Id]\n  mask: [traceparent]\n")
    emitter, _ = memory_emitter("finding-12")
    settings = SidecarSettings(sidecar={"upstream": upstream_url, "kserve_metadata": False},
                               capture={"policy_file": policy, "redaction_key": KEY})
    loop = LoopThread()
    server, task, url = loop.run(start_server(SidecarApp(settings, emitter)))
    try:
        reply = httpx.post(f"{url}/predict", json={"x": 1}, headers={
            "X-Request-ID": SECRETS["request-id"], "X-Client-ID": SECRETS["client-id"], "traceparent": TRACEPARENT})
    finally:
        loop.run(stop_server(server, task), timeout=60)
        loop.close()
    prediction_id = reply.headers["x-prediction-id"]
    assert uuid.UUID(prediction_id).version == 7  # a fresh UUIDv7, not the client's id
    raw = sent(emitter)
    for value in raw:
        for secret in (SECRETS["request-id"], SECRETS["client-id"], TRACE_ID):
            assert secret.encode() not in value
    request = next(e for e in (default_catalog().decode(v).value for v in raw) if "features" in e)
    assert (request["prediction_id"], request["client_id"], request["traceparent"]) == (prediction_id, None, "****")


@pytest.mark.parametrize("capture", [
    {"mode": "hash-only"},
    {"mode": "redacted"},
    {"policy_file": "policy.yaml"},  # redacted, the default with a policy, even without hash rules
])
def test_a_mode_that_keys_digests_refuses_to_start_without_the_key(
    tmp_path: Path, capture: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.yaml").write_text("inputs:\n  drop: [ssn]\n")
    with pytest.raises(PolicyError, match="PROVLINE_CAPTURE__REDACTION_KEY"):
        SidecarApp(SidecarSettings(sidecar={"upstream": "http://127.0.0.1:9"}, capture=capture))
    SidecarApp(SidecarSettings(sidecar={"upstream": "http://127.0.0.1:9"}, capture={**capture, "redaction_key": KEY}))


def test_full_capture_needs_no_key() -> None:
    SidecarApp(SidecarSettings(sidecar={"upstream": "http://127.0.0.1:9"}, capture={"mode": "full"}))
