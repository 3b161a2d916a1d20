"""Hostile bodies cannot make a record fail: text becomes valid Unicode, deep JSON is not parsed (issue 13 #4)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from provline.schemas import default_catalog
from provline.schemas.events import new_envelope, producer_identity
from provline.sidecar.events import Capture, describe_body, request_fields, response_fields
from provline.sidecar.payload import MAX_JSON_DEPTH, NotParsed, ObservedBody, deeper_than, parse_json, valid_text
from provline.sidecar.policy import FieldRules, Redactor

LIMIT = 1 << 20
any_text = st.text(st.characters(codec=None, categories=None))  # surrogates included
surrogate_text = st.text(st.characters(categories=["Cs", "Lu", "Nd", "Po"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | surrogate_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(surrogate_text, children, max_size=4),
    max_leaves=30,
)
RULES = FieldRules.of(drop=["ssn"], hash=["customer_id"], mask=["phone"])


@given(any_text)
def test_valid_text_is_encodable_keeps_its_length_and_changes_only_surrogates(text: str) -> None:
    valid = valid_text(text)
    valid.encode("utf-8")  # never raises
    assert len(valid) == len(text)
    for before, after in zip(text, valid, strict=True):
        assert after == ("\ufffd" if 0xD800 <= ord(before) <= 0xDFFF else before)


@given(st.text())  # hypothesis' default text has no surrogates
def test_valid_text_leaves_valid_text_alone(text: str) -> None:
    assert valid_text(text) is text


def depth(document: Any) -> int:
    """The reference: nesting of lists and objects, recursively (the generated documents are shallow)."""
    if isinstance(document, dict):
        return 1 + max((depth(v) for v in document.values()), default=0)
    if isinstance(document, list):
        return 1 + max((depth(v) for v in document), default=0)
    return 0


@given(json_values, st.integers(0, 8))
def test_deeper_than_agrees_with_the_recursive_depth(document: Any, limit: int) -> None:
    assert deeper_than(document, limit) == (depth(document) > limit)


def test_json_nested_past_the_bound_is_not_parsed_at_any_depth() -> None:
    for nesting in (MAX_JSON_DEPTH + 1, 1000, 1025, 100_000):
        for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
            document = parse_json(opener * nesting + b"1" + closer * nesting, None, max_parse_bytes=LIMIT)
            assert isinstance(document, NotParsed) and "nested deeper than 64 levels" in document.error
    at_the_bound = parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, None, max_parse_bytes=LIMIT)
    assert not isinstance(at_the_bound, NotParsed)


def encodes(kind: str, fields: dict[str, Any]) -> None:
    catalog = default_catalog()
    catalog.decode(catalog.encode(kind, {**new_envelope(producer_identity("t", "s")), **fields}))


@given(json_values, st.sampled_from(["full", "redacted", "hash-only"]), st.booleans())
def test_any_json_body_gives_events_that_encode(document: Any, mode: Any, ascii_only: bool) -> None:
    """Lone surrogates escaped in JSON (``"\\ud800"``) in keys, values and a reply's model_version."""
    text = json.dumps({"model_version": document, "v": document} if ascii_only else document, ensure_ascii=ascii_only)
    body = ObservedBody.whole(text.encode("utf-8", "surrogatepass"))
    capture = Capture(max_capture_bytes=1024, max_parse_bytes=LIMIT)
    for role in ("input", "output"):
        record = describe_body(body, "application/json", mode=mode, rules=RULES, redactor=Redactor(b"k"),
                               capture=capture, role=role)
        if role == "input":
            encodes("InferenceRequest", request_fields(
                prediction_id="p", endpoint="/e", method="POST", path="/e", observed=body, record=record,
                content_type=None, client_id=None, traceparent=None, model_name=None, model_version=None))
        else:
            encodes("InferenceResponse", response_fields(
                prediction_id="p", endpoint="/e", status=200, observed=body, record=record, model_name=None,
                model_version=record.model_version, latency_us=1, error=None))
