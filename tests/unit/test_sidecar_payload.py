from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from provline.sidecar.events import Capture, request_fields, response_fields
from provline.sidecar.payload import digest_body, extract_scalars, is_json_content_type

LIMIT = 1 << 20


def test_top_level_scalars_of_a_json_object_become_features() -> None:
    body = json.dumps({"age": 41, "income": 5.5, "city": "Oslo", "member": True, "tags": ["a"],
                       "address": {"zip": "0150"}, "missing": None}).encode()
    extraction = extract_scalars(body, "application/json; charset=utf-8", max_parse_bytes=LIMIT)
    assert extraction.error is None
    assert extraction.values == {"age": 41.0, "income": 5.5, "city": "Oslo", "member": True}
    assert isinstance(extraction.values["age"], float)
    assert extraction.values["member"] is True  # a bool is not turned into 1.0


def test_vendor_json_and_missing_content_type_are_parsed() -> None:
    assert extract_scalars(b'{"x": 1}', "application/vnd.api+json", max_parse_bytes=LIMIT).values == {"x": 1.0}
    assert extract_scalars(b'{"x": 1}', None, max_parse_bytes=LIMIT).values == {"x": 1.0}


def test_an_integer_beyond_the_double_range_is_skipped_not_fatal() -> None:
    extraction = extract_scalars(b'{"big": 1' + b"0" * 400 + b', "x": 2}', None, max_parse_bytes=LIMIT)
    assert extraction.values == {"x": 2.0} and extraction.error is None


def test_anything_but_a_json_object_gives_no_features_and_says_why() -> None:
    cases = {
        (b"", "application/json"): "empty body",
        (b'"text"', "application/json"): "not an object",
        (b"{oops", "application/json"): "not valid JSON",
        (b"\xff\xfe\x00", None): "not valid JSON",
        (b"x=1", "application/x-www-form-urlencoded"): "is not JSON",
        (b"[" * 100_000, None): "nested deeper than 64 levels",  # past MAX_JSON_DEPTH, and the recursion limit
    }
    for (body, content_type), reason in cases.items():
        extraction = extract_scalars(body, content_type, max_parse_bytes=LIMIT)
        assert extraction.values == {}, body[:10]
        assert extraction.error is not None and reason in extraction.error, extraction.error


def test_bodies_over_the_parse_limit_are_not_parsed() -> None:
    extraction = extract_scalars(b'{"x": 1}', "application/json", max_parse_bytes=4)
    assert extraction.values == {} and "exceeds max_parse_bytes 4" in (extraction.error or "")


def test_content_type_detection() -> None:
    assert is_json_content_type("Application/JSON")
    assert not is_json_content_type("text/plain")
    assert not is_json_content_type("application/jsonl")


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_digest_covers_every_byte_and_captures_a_prefix(body: bytes, limit: int) -> None:
    digest = digest_body(body, limit)
    assert digest.sha256 == hashlib.sha256(body).hexdigest()
    assert digest.size == len(body)
    assert digest.captured == body[:limit]
    assert digest.truncated == (len(body) > limit)


@given(st.binary(max_size=200), st.sampled_from([None, "application/json", "text/plain"]))
def test_extraction_never_raises(body: bytes, content_type: str | None) -> None:
    extraction = extract_scalars(body, content_type, max_parse_bytes=LIMIT)
    assert (extraction.error is None) or extraction.values == {}


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.booleans(), st.text(max_size=5),
                       st.floats(allow_nan=False), st.integers(-(2**53), 2**53)), max_size=6))
def test_every_scalar_of_a_flat_object_is_kept(document: dict) -> None:
    extraction = extract_scalars(json.dumps(document).encode(), "application/json", max_parse_bytes=LIMIT)
    assert extraction.values == {k: (v if isinstance(v, bool | str) else float(v)) for k, v in document.items()}


def test_event_fields_are_valid_for_the_schemas() -> None:
    from provline.schemas import default_catalog
    from provline.schemas.events import new_envelope, producer_identity
    from provline.sidecar.events import describe_body
    from provline.sidecar.payload import ObservedBody
    from provline.sidecar.policy import FieldRules, Redactor

    capture = Capture(max_capture_bytes=4, max_parse_bytes=LIMIT)
    body = ObservedBody.whole(b'{"x": 1}')
    record = describe_body(body, "application/json", mode="full", rules=FieldRules(), redactor=Redactor(None),
                           capture=capture, role="input")
    request = request_fields(
        prediction_id="p1", endpoint="/predict", method="POST", path="/predict", observed=body, record=record,
        content_type="application/json", client_id="c", traceparent=None, model_name=None, model_version=None,
    )
    assert request["body"] == b'{"x"' and request["body_truncated"] and request["features"] == {"x": 1.0}
    reply = ObservedBody.whole(b"ok")
    reply_record = describe_body(reply, "text/plain", mode="full", rules=FieldRules(), redactor=Redactor(None),
                                 capture=capture, role="output")
    response = response_fields(
        prediction_id="p1", endpoint="/predict", status=200, observed=reply, record=reply_record,
        model_name="m", model_version="1", latency_us=5, error=None,
    )
    assert response["outputs"] == {} and not response["body_truncated"] and response["body"] == b"ok"
    catalog = default_catalog()
    for kind, fields in (("InferenceRequest", request), ("InferenceResponse", response)):
        value = {**new_envelope(producer_identity("t", "s")), **fields}
        assert catalog.decode(catalog.encode(kind, value)).value["prediction_id"] == "p1"
