"""Client and server request ids are recorded on the events (issue 14, item 12 in part), redacted like
x-request-id where the policy redacts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from provline.sidecar.events import Capture
from provline.sidecar.model_version import ModelVersionResolver
from provline.sidecar.policy import MASK, FieldRules, Mode, Policy, Redactor
from provline.sidecar.recorder import Exchange, Recorder
from tests.helpers import decoded, memory_emitter

KEY = b"k" * 32
V2_REQUEST = json.dumps({"id": "client-7", "inputs": [
    {"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.5]}]}).encode()
V2_REPLY = json.dumps({"model_name": "iris", "id": "client-7", "outputs": [
    {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}).encode()


def recorded(request: bytes, reply: bytes, *, request_headers: Sequence[tuple[bytes, bytes]] = (),
             reply_headers: Sequence[tuple[bytes, bytes]] = (), mode: Mode = "full",
             policy: Policy | None = None) -> dict[str, dict[str, Any]]:
    emitter, _ = memory_emitter("request-ids")
    scope = {"type": "http", "method": "POST", "path": "/v2/models/iris/infer",
             "headers": [(b"content-type", b"application/json"), *request_headers]}
    exchange = Exchange(scope, "p-1", "00-" + "a" * 32 + "-" + "b" * 16 + "-01", mode, True, request, status=200,
                        headers=[(b"content-type", b"application/json"), *reply_headers], reply=reply)
    recorder = Recorder(emitter, policy=policy or Policy(), redactor=Redactor(KEY), capture=Capture(65536, 1 << 20),
                        resolver=ModelVersionResolver(static=None, fetch_metadata=None, deployments=None),
                        endpoint=lambda scope: scope["path"], model_name=None)
    asyncio.run(recorder.record(exchange))
    return {kind: value for kind, value in decoded(emitter)}


def ids(events: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    return events["InferenceRequest"]["request_id"], events["InferenceResponse"]["request_id"]


def test_the_v2_body_ids_are_recorded() -> None:
    assert ids(recorded(V2_REQUEST, V2_REPLY)) == ("client-7", "client-7")


def test_headers_name_the_ids_of_bodies_without_one() -> None:
    events = recorded(b'{"x": 1}', b'{"y": 2}', request_headers=[(b"x-request-id", b"req-9")],
                      reply_headers=[(b"ce-id", b"ce-1"), (b"ce-requestid", b"server-3")])
    assert ids(events) == ("req-9", "server-3")
    assert ids(recorded(b'{"x": 1}', b'{"y": 2}', reply_headers=[(b"ce-id", b"ce-1")])) == (None, "ce-1")
    assert ids(recorded(b'{"id": "customer-1"}', b"{}")) == (None, None)  # a plain object's id is a field


def test_where_the_policy_redacts_request_ids_follow_its_x_request_id_and_id_rules() -> None:
    hashed = Policy(headers=FieldRules.of(hash=["x-request-id"]))
    expected = Redactor(KEY).keyed_hash("client-7")
    assert ids(recorded(V2_REQUEST, V2_REPLY, mode="redacted", policy=hashed)) == (expected, expected)
    dropped = Policy(outputs=FieldRules.of(drop=["id"]), inputs=FieldRules.of(mask=["id"]))
    events = recorded(V2_REQUEST, V2_REPLY, mode="redacted", policy=dropped,
                      reply_headers=[(b"ce-requestid", b"client-7")])
    assert ids(events) == (MASK, None)  # not even from the reply's header, which names the same id
    assert ids(recorded(V2_REQUEST, V2_REPLY, mode="hash-only", policy=hashed,
                        request_headers=[(b"x-request-id", b"client-7")])) == (expected, None)
    assert ids(recorded(V2_REQUEST, V2_REPLY, mode="full", policy=hashed)) == ("client-7", "client-7")
