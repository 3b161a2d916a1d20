"""Feature extraction from the payload formats of common model servers, and the body tap."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st

from provline.sidecar.payload import BodyTap, ObservedBody, extract_features, extract_scalars

LIMIT = 1 << 20


def features(document: object, role: str = "input", **options: int) -> tuple[str | None, dict]:
    extraction = extract_scalars(json.dumps(document).encode(), "application/json", max_parse_bytes=LIMIT,
                                 role=role, **options)  # type: ignore[arg-type]
    assert extraction.error is None, extraction.error
    return extraction.format, extraction.values


def test_kserve_v2_tensors_give_the_first_row_by_name() -> None:
    request = {"inputs": [
        {"name": "age", "shape": [2, 1], "datatype": "INT64", "data": [41, 17]},
        {"name": "pixels", "shape": [2, 3], "datatype": "FP32", "data": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]},
        {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["Oslo"]},
    ]}
    assert features(request) == ("kserve_v2", {
        "age": 41.0, "pixels[0]": 0.1, "pixels[1]": 0.2, "pixels[2]": 0.3, "city": "Oslo"})
    response = {"model_name": "churn", "model_version": "3",
                "outputs": [{"name": "score", "shape": [1, 1], "datatype": "FP32", "data": [0.8]}]}
    assert features(response, "output") == ("kserve_v2", {"score": 0.8})


def test_tf_serving_row_and_columnar_formats() -> None:
    assert features({"instances": [{"a": 1, "b": [1, 2]}, {"a": 5, "b": [3, 4]}]}) == (
        "instances", {"a": 1.0, "b[0]": 1.0, "b[1]": 2.0})
    assert features({"instances": [[1, 2, 3], [4, 5, 6]]}) == (
        "instances", {"input[0]": 1.0, "input[1]": 2.0, "input[2]": 3.0})
    assert features({"instances": [7.5, 8.5]}) == ("instances", {"input": 7.5})
    assert features({"inputs": {"tag": ["foo", "bar"], "signal": [[1, 2], [3, 4]]}}) == (
        "inputs", {"tag": "foo", "signal[0]": 1.0, "signal[1]": 2.0})
    assert features({"predictions": [[0.2, 0.8]]}, "output") == (
        "predictions", {"output[0]": 0.2, "output[1]": 0.8})
    assert features({"outputs": {"score": [0.9, 0.1]}}, "output") == ("predictions", {"score": 0.9})


def test_mlflow_scoring_formats() -> None:
    split = {"dataframe_split": {"columns": ["age", "city"], "data": [[41, "Oslo"], [17, "Rome"]]}}
    assert features(split) == ("dataframe_split", {"age": 41.0, "city": "Oslo"})
    records = {"dataframe_records": [{"age": 41, "member": True}, {"age": 17, "member": False}]}
    assert features(records) == ("dataframe_records", {"age": 41.0, "member": True})
    assert features({"inputs": [[1.5, 2.5]]}) == ("inputs", {"input[0]": 1.5, "input[1]": 2.5})
    assert features([{"age": 3}, {"age": 4}]) == ("json_list", {"age": 3.0})
    assert features({"predictions": [1, 0]}, "output") == ("predictions", {"output": 1.0})


def test_plain_objects_keep_top_level_scalars_and_nulls_are_skipped() -> None:
    assert features({"x": 1, "inputs": 3, "nested": {"y": 2}, "none": None}) == (
        "json_object", {"x": 1.0, "inputs": 3.0})


def test_feature_count_is_capped() -> None:
    tensor = {"inputs": [{"name": "image", "shape": [1, 10000], "datatype": "FP32", "data": [0.5] * 10000}]}
    _, values = features(tensor, max_features=16)
    assert len(values) == 16 and values["image[15]"] == 0.5


def test_odd_shapes_are_noted_not_fatal() -> None:
    extraction = extract_features({"dataframe_split": {"columns": ["a"], "data": 5}})
    assert extraction.error is None or "not understood" in extraction.error
    for document in (3, "x", None, {"instances": []}, {"inputs": [{"name": "a", "data": [[[]]]}]}):
        extract_features(document)  # must not raise


@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(0, 120), st.sampled_from([None, b"k", b"x" * 100]))
def test_a_tap_sees_what_the_whole_body_is(chunks: list[bytes], keep: int, key: bytes | None) -> None:
    tap = BodyTap(keep, key=key)
    for chunk in chunks:
        tap.feed(chunk)
    body = b"".join(chunks)
    observed = ObservedBody.tapped(tap)
    expected = (hashlib.sha256(body).hexdigest() if key is None
                else "hmac-sha256:" + hmac.new(key, body, hashlib.sha256).hexdigest())
    assert observed.size == len(body) and observed.digest == expected
    assert observed.head == body[:keep] and observed.complete == (len(body) <= keep)
    assert ObservedBody.whole(body, key=key) == observed if len(body) <= keep else ObservedBody.whole(body).complete
