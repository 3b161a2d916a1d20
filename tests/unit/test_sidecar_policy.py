"""The capture policy: YAML parsing, redaction of every payload format, modes and sampling per route."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provline.sidecar.errors import PolicyError, RedactionError
from provline.sidecar.events import BodyRecord, Capture, describe_body
from provline.sidecar.payload import ObservedBody
from provline.sidecar.policy import MASK, FieldRules, Mode, Redactor, load_policy, parse_policy

KEY = b"k" * 32
POLICY = """
inputs:
  drop: [ssn]
  hash: [customer_id, card]
  mask: [phone, customer.email]
outputs:
  drop: [internal_score]
capture: redacted
sample_rate: 0.5
routes:
  - path: /v2/models/*/infer
    methods: [post]
    capture: hash-only
    sample_rate: 0.1
  - path: /health*
    sample_rate: 0
"""


def keyed(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "hmac-sha256:" + hmac.new(KEY, canonical, hashlib.sha256).hexdigest()


def test_policy_file_is_parsed_and_routes_decide_mode_and_rate(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    policy = load_policy(path)
    assert policy.needs_key
    assert policy.inputs.action(("a", "ssn")) == "drop"
    assert policy.inputs.action(("customer", "email")) == "mask"
    assert policy.inputs.action(("other", "email")) is None
    infer = policy.decide("POST", "/v2/models/churn/infer", default_capture="full", default_rate=1.0)
    assert (infer.capture, infer.sample_rate) == ("hash-only", 0.1)
    get = policy.decide("GET", "/v2/models/churn/infer", default_capture="full", default_rate=1.0)
    assert (get.capture, get.sample_rate) == ("redacted", 0.5)  # the route names POST only
    health = policy.decide("GET", "/healthz", default_capture="full", default_rate=1.0)
    assert (health.capture, health.sample_rate) == ("redacted", 0.0)


def test_defaults_apply_without_a_policy_file() -> None:
    policy = parse_policy("")
    decision = policy.decide("POST", "/x", default_capture="full", default_rate=0.25)
    assert (decision.capture, decision.sample_rate) == ("full", 0.25) and not policy.needs_key


@pytest.mark.parametrize(("text", "message"), [
    ("inputs: {dorp: [a]}", "inputs.dorp"),
    ("capture: everything", "capture"),
    ("routes: [{path: /x, sample_rate: 2}]", "routes.0.sample_rate"),
    ("inputs: [", "not valid YAML"),
])
def test_invalid_policies_name_the_faulty_entry(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match="policy.yaml") as raised:
        parse_policy(text, source="policy.yaml")
    assert message in str(raised.value)


def test_a_missing_policy_file_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="PROVLINE_CAPTURE__POLICY_FILE"):
        load_policy(tmp_path / "nope.yaml")


def test_json_objects_are_redacted_at_any_depth_and_by_dotted_path() -> None:
    rules = FieldRules.of(drop=["ssn"], hash=["customer_id"], mask=["phone", "customer.email"])
    document = {"ssn": "123-45-6789", "customer": {"customer_id": 42, "email": "a@b.c", "ssn": "x"},
                "rows": [{"phone": "555-1234", "email": "keep@x.y"}], "age": 41}
    redacted = Redactor(KEY).redact(document, rules)
    assert redacted == {"customer": {"customer_id": keyed(42), "email": MASK},
                        "rows": [{"phone": MASK, "email": "keep@x.y"}], "age": 41}
    assert document["ssn"] == "123-45-6789"  # the original is untouched


def test_kserve_tensors_and_dataframe_columns_are_redacted_by_name() -> None:
    rules = FieldRules.of(drop=["ssn"], hash=["card"], mask=["phone"])
    kserve = {"inputs": [
        {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": ["123-45-6789"]},
        {"name": "card", "shape": [2], "datatype": "BYTES", "data": ["4111", "4111"]},
        {"name": "phone", "shape": [1, 1], "datatype": "BYTES", "data": [["555"]]},
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]},
    ]}
    redacted = Redactor(KEY).redact(kserve, rules)
    assert [t["name"] for t in redacted["inputs"]] == ["card", "phone", "age"]
    assert redacted["inputs"][0]["data"] == [keyed("4111"), keyed("4111")]  # equal values stay joinable
    assert redacted["inputs"][1]["data"] == [[MASK]] and redacted["inputs"][2]["data"] == [41]

    split = {"dataframe_split": {"columns": ["ssn", "phone", "age"], "data": [["1", "555", 41], ["2", "556", 17]]}}
    assert Redactor(KEY).redact(split, rules) == {
        "dataframe_split": {"columns": ["phone", "age"], "data": [[MASK, 41], [MASK, 17]]}}


def test_hashing_needs_a_key_and_differs_by_key() -> None:
    with pytest.raises(PolicyError, match="PROVLINE_CAPTURE__REDACTION_KEY"):
        Redactor(None).keyed_hash("x")
    assert Redactor(b"a").keyed_hash("x") != Redactor(b"b").keyed_hash("x")


CAPTURE = Capture(max_capture_bytes=1000, max_parse_bytes=1000)


def describe(body: bytes, mode: Mode, rules: FieldRules, capture: Capture = CAPTURE) -> BodyRecord:
    return describe_body(ObservedBody.whole(body), "application/json", mode=mode, rules=rules,
                         redactor=Redactor(KEY), capture=capture, role="input")


def test_modes_decide_what_of_a_body_is_recorded() -> None:
    rules = FieldRules.of(drop=["ssn"], mask=["phone"])
    body = json.dumps({"ssn": "123-45-6789", "phone": "555-1234", "age": 41}).encode()
    full = describe(body, "full", rules)
    assert full.body == body and full.values["phone"] == "555-1234"
    redacted = describe(body, "redacted", rules)
    assert json.loads(redacted.body) == {"phone": MASK, "age": 41}
    assert redacted.values == {"phone": MASK, "age": 41.0}
    hashed = describe(body, "hash-only", rules)
    assert (hashed.body, hashed.values, hashed.truncated) == (None, {}, False)


def test_redacted_mode_records_nothing_of_a_body_it_cannot_parse_and_truncates_with_a_marker() -> None:
    rules = FieldRules.of(drop=["ssn"])
    binary = describe(b"\x00ssn=123-45-6789", "redacted", rules)
    assert binary.body is None and binary.values == {}
    assert "redaction policy applies to JSON bodies only" in binary.error
    small = Capture(max_capture_bytes=10, max_parse_bytes=1000)
    long = describe(json.dumps({"ssn": "1", "text": "a" * 50}).encode(), "redacted", rules, capture=small)
    assert long.truncated and long.body == b'{"text":"a'
    no_rules = describe(b"\x00binary", "redacted", FieldRules())
    assert no_rules.body == b"\x00binary"  # nothing to redact: captured as sent


# Issue 13, finding 12: names as clients really send them, and nothing left to undo a redaction.

def test_names_match_in_any_case_and_dotted_names_by_the_end_of_the_path() -> None:
    rules = FieldRules.of(drop=["SSN"], mask=["customer.email"])
    document = {"ssn": "1", "Ssn": "2", "SSN": "3", "instances": [{"Customer": {"Email": "e", "name": "n"}}],
                "a": {"b": {"customer": {"email": "f"}}}, "email": "kept", "customer.email": "literal"}
    assert Redactor(KEY).redact(document, rules) == {
        "instances": [{"Customer": {"Email": MASK, "name": "n"}}], "a": {"b": {"customer": {"email": MASK}}},
        "email": "kept", "customer.email": MASK}
    assert FieldRules.of(drop=["a"], mask=["A"]).named("a") == "drop"  # the stronger action wins


def test_kserve_tensors_are_redacted_by_name_in_replies_with_their_parameters() -> None:
    rules = FieldRules.of(drop=["internal_score"], mask=["phone"])
    reply = {"model_name": "m", "outputs": [
        {"name": "Internal_Score", "shape": [1], "datatype": "FP32", "data": [0.9]},
        {"name": "internal_score", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}},
        {"name": "PHONE", "shape": [1], "datatype": "BYTES", "data": ["555"], "parameters": {"raw": "555"}},
    ]}
    assert Redactor(KEY).redact(reply, rules) == {"model_name": "m", "outputs": [
        {"name": "PHONE", "shape": [1], "datatype": "BYTES", "data": [MASK], "parameters": {"raw": MASK}}]}


def test_json_inside_strings_is_redacted_and_serialised_again() -> None:
    rules = FieldRules.of(drop=["ssn"], hash=["card"])
    inner = json.dumps({"ssn": "1", "card": "4111", "x": [1, 2]})
    document = {"payload": inner, "twice": json.dumps(inner), "plain": "[not json", "same": '{"x": 1}'}
    redacted = Redactor(KEY).redact(document, rules)
    assert json.loads(redacted["payload"]) == {"card": keyed("4111"), "x": [1, 2]}
    assert json.loads(json.loads(redacted["twice"])) == {"card": keyed("4111"), "x": [1, 2]}
    assert redacted["plain"] == "[not json" and redacted["same"] == '{"x": 1}'  # untouched when nothing matched


def test_json_nested_too_deep_inside_a_string_is_not_captured() -> None:
    rules = FieldRules.of(drop=["ssn"])
    deep = "[" * 70 + json.dumps({"ssn": "123-45-6789"}) + "]" * 70
    with pytest.raises(RedactionError, match="MAX_JSON_DEPTH"):
        Redactor(KEY).redact({"payload": deep}, rules)
    record = describe(json.dumps({"payload": deep}).encode(), "redacted", rules)
    assert record.body is None and record.values == {} and "cannot be redacted" in record.error


secrets = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=12, max_size=16).map(lambda s: "SECRET" + s)
spellings = st.sampled_from(["ssn", "SSN", "Ssn", "sSn"])
values = st.recursive(st.integers() | st.booleans() | st.text(alphabet="abc xyz", max_size=5),
                      lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(st.sampled_from(["a", "b", "customer", "row"]), children, max_size=3),
                      max_leaves=10)


@st.composite
def hiding(draw: st.DrawFn) -> tuple[Any, str]:
    """A document with a secret under a dropped name somewhere: any case, in lists, in JSON strings, in tensors."""
    secret = draw(secrets)
    node: Any = draw(st.sampled_from([
        {draw(spellings): secret},
        {"name": draw(spellings), "datatype": "BYTES", "shape": [1], "data": [secret]},
        {"customer": {draw(st.sampled_from(["email", "EMAIL"])): secret}},
    ]))
    for _ in range(draw(st.integers(0, 6))):
        wrap = draw(st.sampled_from(["list", "object", "string", "instances"]))
        if wrap == "list":
            node = [draw(values), node]
        elif wrap == "object":
            node = {"a": draw(values), draw(st.sampled_from(["b", "row", "parameters"])): node}
        elif wrap == "string":
            node = {"payload": json.dumps(node)}
        else:
            node = {"instances": [node]}
    return node, secret


@given(hiding())
def test_no_dropped_value_survives_redaction_wherever_it_hides(case: tuple[Any, str]) -> None:
    document, secret = case
    rules = FieldRules.of(drop=["ssn"], mask=["customer.email"])
    redacted = Redactor(KEY).redact(document, rules)
    assert secret not in json.dumps(redacted)


def test_the_policy_names_only_headers_the_sidecar_records() -> None:
    policy = parse_policy("headers:\n  hash: [X-Request-ID]\n  drop: [X-Client-Id]\n  mask: [traceparent]\n")
    assert (policy.headers.named("x-request-id"), policy.headers.named("X-CLIENT-ID")) == ("hash", "drop")
    assert policy.needs_key
    with pytest.raises(PolicyError, match="authorization, which the sidecar never records"):
        parse_policy("headers:\n  drop: [Authorization]\n")
    with pytest.raises(PolicyError, match="every prediction the same id"):
        parse_policy("headers:\n  mask: [x-request-id]\n")
    redactor = Redactor(KEY)
    assert redactor.header("drop", "c") is None and redactor.header("mask", "c") == MASK
    assert redactor.header("hash", "c") == keyed("c") and redactor.header(None, "c") == "c"


@pytest.mark.parametrize(("text", "default", "needed"), [
    ("", "full", None),
    ("", "redacted", "records in redacted mode"),
    ("capture: full\nroutes: [{path: /x, capture: hash-only}]", "redacted", "records in hash-only mode"),
    ("capture: full\ninputs: {hash: [a]}", "full", "hashes fields"),
])
def test_modes_where_redaction_applies_need_the_key(text: str, default: Mode, needed: str | None) -> None:
    reason = parse_policy(text).key_needed(default_capture=default)
    assert reason == needed if needed is None else needed in str(reason)
    assert Redactor(KEY).digest_key("full") is None
    assert Redactor(KEY).digest_key("redacted") == Redactor(KEY).digest_key("hash-only") == KEY


def test_a_dropped_model_version_does_not_come_back_as_the_replys_version() -> None:
    reply = json.dumps({"model_version": "secret-build-7", "outputs": []}).encode()
    record = describe_body(ObservedBody.whole(reply), "application/json", mode="redacted",
                           rules=FieldRules.of(drop=["model_version"]), redactor=Redactor(KEY), capture=CAPTURE,
                           role="output")
    assert record.model_version is None and b"secret-build-7" not in (record.body or b"")
