"""Property test: whatever goes through the sidecar, the client gets exactly what the upstream sent.

One sidecar and one upstream serve the whole module; each generated exchange is told apart by its
X-Request-ID, which the sidecar makes the prediction id. The upstream answers with a generated
reply (status, headers, body, fixed length or chunked) and records the headers it put on the wire.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provline.schemas import default_catalog
from provline.schemas.frames import events_in
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sidecar.headers import HOP_BY_HOP
from tests.helpers import LoopThread, memory_emitter, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server

pytestmark = pytest.mark.integration

EXAMPLES = 500
UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
STATUSES = [200, 201, 202, 301, 400, 401, 404, 409, 418, 422, 500, 502, 503]
LARGE_SIZES = [70_000, 300_000, 1_100_000]  # around the 256 KiB streaming threshold
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PURGE"]


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool


@dataclass
class Received:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes
    sent_headers: list[tuple[str, str]] = field(default_factory=list)
    sent_body: bytes = b""


@dataclass
class ScriptedUpstream:
    """Answers each request with the reply registered under its X-Prediction-ID."""

    replies: dict[str, Reply] = field(default_factory=dict)
    received: dict[str, Received] = field(default_factory=dict)
    port: int = 0

    async def start(self) -> web.AppRunner:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner, self.port = await serve_app(app)
        return runner

    async def handle(self, request: web.Request) -> web.StreamResponse:
        prediction_id = request.headers["X-Prediction-ID"]
        seen = Received(request.method, request.raw_path,
                        [(k.decode(), v.decode()) for k, v in request.raw_headers], await request.read())
        self.received[prediction_id] = seen
        reply = self.replies[prediction_id]
        response = web.StreamResponse(status=reply.status)
        for name, value in reply.headers:
            response.headers.add(name, value)
        if reply.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(reply.body)
        await response.prepare(request)
        if request.method != "HEAD":
            for start in range(0, len(reply.body), 65536):
                await response.write(reply.body[start:start + 65536])
            seen.sent_body = reply.body
        await response.write_eof()
        seen.sent_headers = list(response.headers.items())  # as finalised and written by aiohttp
        return response


class EventIndex:
    """The memory emitter's events by prediction id, decoded incrementally."""

    def __init__(self, messages: list) -> None:
        self.messages = messages
        self.seen = 0
        self.by_id: dict[str, list[tuple[str, dict]]] = defaultdict(list)

    def events(self, prediction_id: str, count: int = 2, timeout: float = 10.0) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while True:
            while self.seen < len(self.messages):
                for event in events_in(default_catalog(), self.messages[self.seen].value):
                    decoded = default_catalog().decode(event)
                    self.by_id[decoded.value["prediction_id"]].append((decoded.record, decoded.value))
                self.seen += 1
            found = self.by_id.get(prediction_id, [])
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.001)


@dataclass
class Proxy:
    url: str
    upstream: ScriptedUpstream
    index: EventIndex
    client: httpx.Client


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    loop = LoopThread()
    upstream = ScriptedUpstream()
    runner = loop.run(upstream.start())
    emitter, transport = memory_emitter("sidecar-properties")
    app = SidecarApp(SidecarSettings(sidecar={"upstream": f"http://127.0.0.1:{upstream.port}/base",
                                              "kserve_metadata": False},
                                     capture={"max_capture_bytes": 1024}), emitter)
    server, task, url = loop.run(start_server(app))
    client = httpx.Client(timeout=30)
    try:
        yield Proxy(url, upstream, EventIndex(transport.messages), client)
    finally:
        client.close()
        loop.run(stop_server(server, task))
        loop.run(runner.cleanup())
        loop.close()


def end_to_end(headers: list[tuple[str, str]], *, ignore: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Header values by lower-case name, in order, without hop-by-hop headers."""
    connection = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
    drop = {h.decode() for h in HOP_BY_HOP} | connection | ignore
    out: dict[str, list[str]] = defaultdict(list)
    for name, value in headers:
        if name.lower() not in drop:
            out[name.lower()].append(value)
    return dict(out)


segment = st.lists(st.one_of(st.sampled_from(list(UNRESERVED)), st.sampled_from(["%20", "%2F", "%C3%A9", "%25"])),
                   min_size=1, max_size=12).map("".join)
paths = st.lists(segment, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
queries = st.one_of(st.just(""), st.lists(st.tuples(segment, segment), min_size=1, max_size=4).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)))
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
header_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["json", "json", "binary", "binary", "empty", "large"]))
    if kind == "json":
        import json

        return json.dumps(draw(json_value)).encode(), "application/json"
    if kind == "binary":
        return draw(st.binary(max_size=4096)), draw(st.sampled_from([None, "application/octet-stream"]))
    if kind == "empty":
        return b"", None
    size, seed = draw(st.sampled_from(LARGE_SIZES)), draw(st.integers(0, 2**32))
    return random.Random(seed).randbytes(size), "application/octet-stream"


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes, Reply]:
    method = draw(st.sampled_from(METHODS))
    target = draw(paths)
    query = draw(queries)
    if query:
        target += "?" + query
    headers = [(f"x-h-{name}", value) for name, value in draw(st.lists(st.tuples(token, header_value), max_size=5))]
    body, content_type = draw(bodies())
    if content_type:
        headers.append(("content-type", content_type))
    reply_body, reply_type = draw(bodies())
    reply_headers = [(f"x-r-{name}", value) for name, value in draw(st.lists(st.tuples(token, header_value),
                                                                             max_size=5))]
    reply_headers.append(("content-type", reply_type or "application/octet-stream"))
    if draw(st.booleans()):
        reply_headers += [("set-cookie", "a=1"), ("set-cookie", "b=2")]
    reply = Reply(draw(st.sampled_from(STATUSES)), reply_headers, reply_body, draw(st.booleans()))
    return method, target, headers, body, reply


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(exchange=exchanges())
def test_the_client_gets_exactly_what_the_upstream_sent_and_each_exchange_is_recorded_once(
    proxy: Proxy, exchange: tuple[str, str, list[tuple[str, str]], bytes, Reply]
) -> None:
    method, target, headers, body, reply = exchange
    prediction_id = f"prop-{uuid.uuid4().hex}"
    proxy.upstream.replies[prediction_id] = reply
    url = httpx.URL(proxy.url + target)
    answer = proxy.client.request(method, url, content=body, headers=[*headers, ("X-Request-ID", prediction_id)])

    seen = proxy.upstream.received[prediction_id]
    assert (seen.method, seen.body) == (method, body)
    assert seen.raw_path == "/base" + url.raw_path.decode()
    forwarded = end_to_end(seen.headers)
    for name, value in headers:
        assert value in forwarded.get(name, []), (name, forwarded)

    assert answer.status_code == reply.status
    assert answer.content == seen.sent_body
    assert end_to_end(list(answer.headers.multi_items()), ignore=frozenset({"x-prediction-id"})) == end_to_end(
        seen.sent_headers)
    assert answer.headers["x-prediction-id"] == prediction_id

    events = proxy.index.events(prediction_id)
    assert sorted(kind for kind, _ in events) == ["InferenceRequest", "InferenceResponse"]
    recorded = dict(events)
    assert recorded["InferenceRequest"]["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert recorded["InferenceRequest"]["body_size"] == len(body)
    assert recorded["InferenceResponse"]["body_sha256"] == hashlib.sha256(seen.sent_body).hexdigest()
    assert recorded["InferenceResponse"]["status"] == reply.status
