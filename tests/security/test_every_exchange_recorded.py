"""Issue 13, finding 4: every exchange the sidecar serves leaves a record.

A body the recorder cannot capture (a lone surrogate, JSON nested a thousand deep, any hostile
input) still gives its InferenceRequest and InferenceResponse, at worst without the body and
with the reason; a drop only ever happens by policy and is then counted in a DeliveryGap.
Real sidecars (uvicorn on a socket) in front of a real upstream that echoes each request body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from provline.producers import Emitter, MemoryTransport
from provline.schemas import default_catalog
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sidecar.errors import UpstreamUnreachable
from provline.sidecar.events import Capture
from provline.sidecar.model_version import ModelVersionResolver
from provline.sidecar.policy import FieldRules, Policy, Redactor
from provline.sidecar.recorder import Exchange, Recorder
from tests.helpers import LoopThread, decoded, events_of, memory_emitter, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server, wait_for

KEY = "finding-4-redaction-key-0123456789"
POLICY = "inputs:\n  drop: [ssn]\n  hash: [customer_id]\noutputs:\n  drop: [ssn]\n"
LONE_SURROGATE = b'{"note":"\\ud800"}'
DEEP = b'{"a":' * 1000 + b"1" + b"}" * 1000
NORMAL = b'{"age": 41, "city": "Oslo"}'


async def echo(request: web.Request) -> web.Response:
    """The model server double: replies with the request body, so the reply is hostile too."""
    return web.Response(body=await request.read(), content_type="application/json")


@dataclass
class Sidecar:
    url: str
    emitter: Emitter
    client: httpx.Client
    _decoded: list[tuple[str, dict]] = field(default_factory=list)
    _read: int = 0

    def events(self) -> list[tuple[str, dict]]:
        """Every event the sidecar has sent so far; each message decoded once (the transport only appends),
        so polling stays cheap however many exchanges the module's tests have made."""
        transport: MemoryTransport = self.emitter.transport  # type: ignore[assignment]
        new = transport.messages[self._read:]
        self._read += len(new)
        catalog = default_catalog()
        self._decoded += [(d.record, d.value) for d in (catalog.decode(raw) for raw in events_of(new))]
        return list(self._decoded)

    def missing(self, prediction_ids: list[str]) -> int:
        """Events missing for these predictions, waiting a little for the recorder."""
        def count() -> int:
            kinds = {(kind, value["prediction_id"]) for kind, value in self.events()
                 if kind in ("InferenceRequest", "InferenceResponse")}
            return sum((kind, pid) not in kinds for pid in prediction_ids
                       for kind in ("InferenceRequest", "InferenceResponse"))
        return wait_for(count, lambda left: left == 0, 5.0)

    def dropped(self) -> int:
        return sum(value["dropped"] for kind, value in self.events() if kind == "DeliveryGap")

    def pair(self, prediction_id: str) -> dict[str, dict]:
        assert self.missing([prediction_id]) == 0, f"prediction {prediction_id} was served but not recorded"
        return {kind: value for kind, value in self.events() if value.get("prediction_id") == prediction_id}


@pytest.fixture(scope="module")
def upstream_url(loop: LoopThread) -> Iterator[str]:
    async def start() -> web.AppRunner:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", echo)
        return (await serve_app(app))[0]

    runner = loop.run(start())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    loop.run(runner.cleanup())


def serve(loop: LoopThread, settings: SidecarSettings) -> Iterator[Sidecar]:
    emitter, _ = memory_emitter("finding-4")
    server, task, url = loop.run(start_server(SidecarApp(settings, emitter)))
    # One client per sidecar, so its TLS context (the CA bundle, tens of ms to load) is built once rather
    # than per request as httpx.post does; no keep-alive, so every exchange still has a connection of its own.
    client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)
    try:
        yield Sidecar(url, emitter, client)
    finally:
        client.close()
        loop.run(stop_server(server, task))
        emitter.close()


@pytest.fixture(scope="module")
def plain(loop: LoopThread, upstream_url: str) -> Iterator[Sidecar]:
    """The default sidecar: full capture, no policy."""
    yield from serve(loop, SidecarSettings(sidecar={"upstream": upstream_url, "kserve_metadata": False}))


@pytest.fixture(scope="module")
def redacting(loop: LoopThread, upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """A sidecar under a capture policy (redacted mode)."""
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(POLICY)
    yield from serve(loop, SidecarSettings(sidecar={"upstream": upstream_url, "kserve_metadata": False},
                                           capture={"policy_file": policy, "redaction_key": KEY}))


def post(sidecar: Sidecar, body: bytes, *, path: str = "/predict", content_type: str = "application/json") -> str:
    prediction_id = str(uuid.uuid4())
    reply = sidecar.client.post(f"{sidecar.url}{path}", content=body,
                        headers={"Content-Type": content_type, "X-Request-ID": prediction_id})
    assert reply.status_code == 200 and reply.content == body
    assert reply.headers["x-prediction-id"] == prediction_id
    return prediction_id


def test_a_lone_surrogate_is_served_and_recorded(plain: Sidecar) -> None:
    pair = plain.pair(post(plain, LONE_SURROGATE))
    request, response = pair["InferenceRequest"], pair["InferenceResponse"]
    assert request["body_size"] == response["body_size"] == len(LONE_SURROGATE)
    assert request["body"] == LONE_SURROGATE  # full mode keeps the exact bytes
    assert request["features"] == {"note": "\ufffd"}  # the text is valid Unicode, the rest of the record kept
    assert response["status"] == 200


@pytest.mark.parametrize("body", [LONE_SURROGATE, DEEP, b"[" * 1000 + b"]" * 1000],
                         ids=["lone-surrogate", "deep-object", "deep-list"])
def test_hostile_bodies_under_a_policy_are_served_and_recorded(redacting: Sidecar, body: bytes) -> None:
    pair = redacting.pair(post(redacting, body))
    request = pair["InferenceRequest"]
    assert request["body_size"] == len(body) and request["body_sha256"]
    if body.startswith(b"{\"a\""):
        assert request["body"] is None and "nested deeper than" in request["parse_error"]


def test_a_surrogate_model_version_in_the_reply_is_recorded(plain: Sidecar) -> None:
    body = b'{"model_version": "\\udfff", "outputs": []}'  # a KServe V2 reply names its model's version
    pair = plain.pair(post(plain, body, path="/v2/models/m/infer"))
    assert pair["InferenceResponse"]["model_version"] == "\ufffd"


def json_text() -> st.SearchStrategy[str]:
    return st.text(st.characters(categories=["Cs", "L", "N", "P", "Zs", "Cc"]), max_size=12)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | json_text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_text(), children, max_size=4),
    max_leaves=25,
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "ascii-json", "deep", "string-in-string", "bytes", "numbers", "utf16"]))
    if kind == "json":  # lone surrogates written as escapes, NaN and Infinity allowed
        return json.dumps(draw(json_values)).encode()
    if kind == "ascii-json":
        tensor = {"name": draw(json_text()), "data": [draw(json_values)]}
        return json.dumps({"ssn": draw(json_text()), "inputs": [tensor],
                           "model_version": draw(json_text())}).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 100, 999, 1023, 1025, 5000, 50_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"ssn":', b"}"), (b'{"a":[', b"]}")]))
        return opener * depth + b"1" + closer * depth
    if kind == "string-in-string":
        inner = json.dumps({"ssn": draw(json_text()), "v": draw(json_values)})
        for _ in range(draw(st.integers(1, 12))):  # each level doubles the backslashes
            inner = json.dumps(inner if draw(st.booleans()) else [inner])
        return inner.encode()
    if kind == "numbers":
        return draw(st.sampled_from([b"1" * 5000, b"[1e999, -1e999]", b'{"x": NaN}', b"-0", b"[" + b"9" * 4301 + b"]"]))
    if kind == "utf16":
        return json.dumps({"k": draw(json_text())}, ensure_ascii=False).encode("utf-16", "surrogatepass")
    return draw(st.binary(max_size=512))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(bodies=st.lists(hostile_bodies(), min_size=1, max_size=4))
def test_every_hostile_exchange_leaves_a_record_and_others_are_served(
    plain: Sidecar, redacting: Sidecar, bodies: list[bytes]
) -> None:
    for sidecar in (plain, redacting):
        gaps_before = sidecar.dropped()
        served = [post(sidecar, body, path=path) for body in bodies for path in ("/predict", "/v2/models/m/infer")]
        normal = post(sidecar, NORMAL)  # another client, served meanwhile and recorded in full
        missing = sidecar.missing(served)
        assert missing <= sidecar.dropped() - gaps_before, f"{missing} events of served exchanges are missing"
        assert sidecar.pair(normal)["InferenceRequest"]["features"] == {"age": 41.0, "city": "Oslo"}


# The recorder's last resorts, driven with injected faults: after the fixes above no known body makes
# the full record fail, yet an unforeseen failure must still leave a record (or a DeliveryGap).

class FaultyEmitter:
    """A real emitter whose ``emit_exchange`` raises when ``fails`` picks one of its events (an encoder bug, say)."""

    def __init__(self, emitter: Emitter, fails: Callable[[str, dict], bool]) -> None:
        self.real, self.fails = emitter, fails

    @property
    def drops(self) -> Any:
        return self.real.drops

    def emit_exchange(self, request: dict, response: dict, **times: Any) -> tuple[dict, dict]:
        for kind, fields in (("InferenceRequest", request), ("InferenceResponse", response)):
            if self.fails(kind, fields):
                raise RuntimeError(f"injected failure emitting {kind}")
        return self.real.emit_exchange(request, response, **times)


class FaultyRedactor(Redactor):
    def redact(self, document: Any, rules: FieldRules) -> Any:
        raise RuntimeError("injected redaction failure")


def record(emitter: Any, *, redactor: Redactor | None = None, policy: Policy | None = None,
           upstream_error: bool = False) -> Exchange:
    """Record one exchange with the production Recorder; returns the exchange."""
    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"content-type", b"application/json"), (b"x-client-id", b"client-7")]}
    exchange = Exchange(scope, str(uuid.uuid4()), "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                        "redacted" if policy else "full", True, NORMAL, status=200,
                        headers=[(b"content-type", b"application/json")], reply=b'{"score": 0.5}',
                        upstream_ns=3_000_000,
                        error=UpstreamUnreachable("upstream gone") if upstream_error else None)
    recorder = Recorder(emitter, policy=policy or Policy(), redactor=redactor or Redactor(None),
                        capture=Capture(65536, 1 << 20),
                        resolver=ModelVersionResolver(static="9", fetch_metadata=None, deployments=None, ttl_s=60),
                        endpoint=lambda scope: "churn", model_name="churn-model")
    asyncio.run(recorder.record(exchange))
    return exchange


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_degraded(events: dict[str, dict], exchange: Exchange, reason: str) -> None:
    request, response = events["InferenceRequest"], events["InferenceResponse"]
    assert request["body"] is None and request["features"] == {} and reason in request["parse_error"]
    assert request["parse_error"].startswith("body not captured: RuntimeError: ")
    assert (request["prediction_id"], request["endpoint"], request["method"], request["path"]) == (
        exchange.prediction_id, "churn", "POST", "/predict")
    assert (request["body_size"], request["body_sha256"]) == (len(NORMAL), hashlib.sha256(NORMAL).hexdigest())
    assert (request["client_id"], request["traceparent"]) == ("client-7", exchange.traceparent)
    assert (request["model_name"], request["model_version"]) == ("churn-model", "9")
    assert response["body"] is None and response["outputs"] == {} and reason in response["error"]
    assert (response["status"], response["latency_us"], response["body_size"]) == (200, 3000, 14)
    assert response["body_sha256"] == hashlib.sha256(b'{"score": 0.5}').hexdigest()


def test_a_record_that_cannot_be_built_is_emitted_without_its_bodies() -> None:
    emitter, _ = memory_emitter("finding-4-recorder")
    degraded = metric("provline_sidecar_degraded_records_total", reason="RuntimeError")
    exchange = record(emitter, redactor=FaultyRedactor(None), policy=Policy(inputs=FieldRules.of(drop=["ssn"])))
    events = {kind: value for kind, value in decoded(emitter)}
    assert_degraded(events, exchange, "injected redaction failure")
    assert metric("provline_sidecar_degraded_records_total", reason="RuntimeError") == degraded + 1


def test_a_record_that_cannot_be_emitted_is_emitted_without_its_bodies() -> None:
    emitter, _ = memory_emitter("finding-4-recorder")
    exchange = record(FaultyEmitter(emitter, lambda kind, fields: fields.get("body") is not None))
    assert_degraded({kind: value for kind, value in decoded(emitter)}, exchange, "injected failure emitting")


def test_only_the_half_that_failed_is_degraded() -> None:
    emitter, _ = memory_emitter("finding-4-recorder")
    record(FaultyEmitter(emitter, lambda kind, fields: kind == "InferenceResponse" and fields["body"] is not None),
           upstream_error=True)
    events = decoded(emitter)
    assert [kind for kind, _ in events] == ["InferenceRequest", "InferenceResponse"]
    request, response = events[0][1], events[1][1]
    assert request["body"] == NORMAL and request["features"] == {"age": 41.0, "city": "Oslo"}  # the full one
    assert response["body"] is None and response["error"].startswith("upstream gone; body not captured: ")


def test_a_record_that_cannot_be_emitted_at_all_becomes_a_delivery_gap() -> None:
    emitter, _ = memory_emitter("finding-4-recorder")
    errors = metric("provline_sidecar_event_errors_total")
    record(FaultyEmitter(emitter, lambda kind, fields: kind.startswith("Inference")))
    assert metric("provline_sidecar_event_errors_total") == errors + 1
    exchange = record(emitter)  # delivery resumes: the gap is reported
    events = decoded(emitter)
    gaps = [value for kind, value in events if kind == "DeliveryGap"]
    assert [(gap["reason"], gap["dropped"]) for gap in gaps] == [("record_failed", 2)]
    assert {value["prediction_id"] for kind, value in events if kind != "DeliveryGap"} == {exchange.prediction_id}
