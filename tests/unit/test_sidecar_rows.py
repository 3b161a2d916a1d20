"""Every row of a batch becomes features (issue 14, items 5 and 6): each format, 1-D column tensors,
metadata names, the caps, and redaction of every row."""

from __future__ import annotations

import json
from typing import Any

from provline.sidecar.events import Capture, describe_body, request_fields, response_fields
from provline.sidecar.payload import Extraction, ObservedBody, extract_features, metadata_columns
from provline.sidecar.policy import MASK, FieldRules, Redactor

KEY = b"k" * 32
IRIS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def rows(document: Any, role: str = "input", **options: Any) -> tuple[str | None, int, list[dict]]:
    extraction = extract_features(document, role=role, **options)  # type: ignore[arg-type]
    assert extraction.error is None, extraction.error
    return extraction.format, extraction.row_count, extraction.rows


def test_a_v2_tensor_of_shape_n_by_k_gives_n_rows() -> None:
    tensor = {"inputs": [{"name": "input-0", "shape": [3, 2], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]}
    assert rows(tensor) == ("kserve_v2", 3, [
        {"input-0[0]": 1.0, "input-0[1]": 2.0}, {"input-0[0]": 3.0, "input-0[1]": 4.0},
        {"input-0[0]": 5.0, "input-0[1]": 6.0}])
    nested = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [[1, 2], [3, 4]]}]}
    assert rows(nested)[1:] == (2, [{"x[0]": 1.0, "x[1]": 2.0}, {"x[0]": 3.0, "x[1]": 4.0}])


def test_pandas_coded_and_equal_length_1d_tensors_are_columns() -> None:
    pandas = {"parameters": {"content_type": "pd"}, "inputs": [
        {"name": "age", "shape": [3], "datatype": "INT64", "data": [41, 17, 60]},
        {"name": "city", "shape": [3], "datatype": "BYTES", "data": ["Oslo", "Rome", "Pau"]},
    ]}
    expected = [{"age": 41.0, "city": "Oslo"}, {"age": 17.0, "city": "Rome"}, {"age": 60.0, "city": "Pau"}]
    assert rows(pandas) == ("kserve_v2", 3, expected)
    del pandas["parameters"]  # several 1-D tensors of one length: columns too
    assert rows(pandas) == ("kserve_v2", 3, expected)
    single_pandas = {"parameters": {"content_type": "pd"}, "inputs": [
        {"name": "age", "shape": [2], "datatype": "INT64", "data": [41, 17]}]}
    assert rows(single_pandas)[1:] == (2, [{"age": 41.0}, {"age": 17.0}])


def test_a_lone_1d_tensor_is_one_row_and_a_1d_tensor_of_the_batch_length_is_a_column() -> None:
    assert rows({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]})[1:] == (
        1, [{"x[0]": 1.0, "x[1]": 2.0, "x[2]": 3.0}])
    mixed = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
                        {"name": "id", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                        {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["Oslo"]}]}
    assert rows(mixed)[1:] == (2, [{"x[0]": 1.0, "x[1]": 2.0, "id": "a", "city": "Oslo"},
                                   {"x[0]": 3.0, "x[1]": 4.0, "id": "b"}])


def test_a_1d_output_of_the_requests_row_count_is_one_output_per_row() -> None:
    reply = {"outputs": [{"name": "predict", "shape": [3], "datatype": "INT64", "data": [0, 1, 2]}]}
    assert rows(reply, "output", batch_hint=3)[1:] == (3, [{"predict": 0.0}, {"predict": 1.0}, {"predict": 2.0}])
    probabilities = {"outputs": [{"name": "proba", "shape": [3], "datatype": "FP64", "data": [0.1, 0.2, 0.7]}]}
    assert rows(probabilities, "output", batch_hint=1)[1:] == (
        1, [{"proba[0]": 0.1, "proba[1]": 0.2, "proba[2]": 0.7}])


def test_mlserver_and_mlflow_replies_give_a_row_per_prediction() -> None:
    mlserver = {"model_name": "iris", "model_version": "v1", "id": "5b0f", "parameters": {}, "outputs": [
        {"name": "predict", "shape": [3, 1], "datatype": "INT64", "parameters": {"content_type": "np"},
         "data": [0, 1, 2]}]}
    assert rows(mlserver, "output") == ("kserve_v2", 3, [{"predict": 0.0}, {"predict": 1.0}, {"predict": 2.0}])
    assert rows({"predictions": [0, 1]}, "output") == ("predictions", 2, [{"output": 0.0}, {"output": 1.0}])
    assert rows([0, 1, 1], "output") == ("json_list", 3, [{"output": 0.0}, {"output": 1.0}, {"output": 1.0}])
    frame = [{"label": "a", "score": 0.5}, {"label": "b", "score": 0.25}]
    assert rows(frame, "output") == ("json_list", 2, [{"label": "a", "score": 0.5}, {"label": "b", "score": 0.25}])


def test_mlflow_and_tf_serving_batches_give_every_row() -> None:
    split = {"dataframe_split": {"columns": ["age", "city"], "data": [[41, "Oslo"], [17, "Rome"]]}}
    assert rows(split) == ("dataframe_split", 2, [{"age": 41.0, "city": "Oslo"}, {"age": 17.0, "city": "Rome"}])
    records = {"dataframe_records": [{"age": 41}, {"age": 17}, {"age": 5}]}
    assert rows(records) == ("dataframe_records", 3, [{"age": 41.0}, {"age": 17.0}, {"age": 5.0}])
    assert rows({"instances": [[1, 2], [3, 4]]}) == (
        "instances", 2, [{"input[0]": 1.0, "input[1]": 2.0}, {"input[0]": 3.0, "input[1]": 4.0}])
    assert rows({"inputs": [[1.5], [2.5]]}) == ("inputs", 2, [{"input": 1.5}, {"input": 2.5}])
    columnar = {"inputs": {"age": [41, 17], "city": ["Oslo", "Rome"], "scale": 2}}
    assert rows(columnar) == ("inputs", 2, [{"age": 41.0, "city": "Oslo", "scale": 2.0},
                                            {"age": 17.0, "city": "Rome"}])
    assert rows({"outputs": {"score": [0.9, 0.1]}}, "output")[1:] == (2, [{"score": 0.9}, {"score": 0.1}])


def test_a_plain_object_is_one_row_and_an_empty_batch_none() -> None:
    assert rows({"age": 41}) == ("json_object", 1, [{"age": 41.0}])
    assert rows({"instances": []}) == ("instances", 0, [])
    assert rows({"dataframe_records": []}) == ("dataframe_records", 0, [])


def test_rows_past_the_cap_are_counted_not_kept_and_features_are_capped_per_row() -> None:
    batch = {"instances": [{"a": i, "b": i, "c": i} for i in range(50)]}
    extraction = extract_features(batch, max_rows=10, max_features=2)
    assert (extraction.row_count, len(extraction.rows), extraction.rows_truncated) == (50, 10, True)
    assert extraction.rows[9] == {"a": 9.0, "b": 9.0} and extraction.values == {"a": 0.0, "b": 0.0}
    tensor = {"inputs": [{"name": "x", "shape": [100000, 1], "datatype": "FP32", "data": [0.5] * 100000}]}
    capped = extract_features(tensor, max_rows=3)
    assert (capped.row_count, capped.rows, capped.rows_truncated) == (100000, [{"x": 0.5}] * 3, True)
    assert not extract_features(batch).rows_truncated and Extraction().rows_truncated is False


def test_the_v2_metadata_names_a_single_2d_tensors_columns() -> None:
    request = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                           "data": [5.1, 3.5, 1.4, 0.2, 6.2, 2.9, 4.3, 1.3]}]}
    columns = metadata_columns(request, "input", IRIS)
    assert columns == {"input-0": IRIS}
    assert rows(request, columns=columns)[2] == [dict(zip(IRIS, (5.1, 3.5, 1.4, 0.2), strict=True)),
                                                 dict(zip(IRIS, (6.2, 2.9, 4.3, 1.3), strict=True))]
    assert metadata_columns(request, "input", IRIS[:3]) == {}  # counts differ: positional names stay
    assert metadata_columns(request, "output", IRIS) == {}
    two = {"inputs": [*request["inputs"], {"name": "b", "shape": [2, 4], "datatype": "FP64", "data": [0] * 8}]}
    assert metadata_columns(two, "input", IRIS) == {}  # not a single tensor
    reply = {"outputs": [{"name": "proba", "shape": [1, 2], "datatype": "FP64", "data": [0.3, 0.7]}]}
    assert rows(reply, "output", columns=metadata_columns(reply, "output", ("no", "yes")))[2] == [
        {"no": 0.3, "yes": 0.7}]


CAPTURE = Capture(max_capture_bytes=1 << 16, max_parse_bytes=1 << 20, max_rows=1000)


def described(document: Any, rules: FieldRules, *, names: tuple[str, ...] = ()) -> Any:
    body = ObservedBody.whole(json.dumps(document).encode())
    return describe_body(body, "application/json", mode="redacted", rules=rules, redactor=Redactor(KEY),
                         capture=CAPTURE, role="input", names=names)


def test_redaction_applies_to_every_row_of_every_format() -> None:
    rules = FieldRules.of(drop=["ssn"], hash=["card"], mask=["phone"])
    batches = {
        "kserve": {"inputs": [{"name": "ssn", "shape": [3], "datatype": "BYTES", "data": ["s1", "s2", "s3"]},
                              {"name": "card", "shape": [3], "datatype": "BYTES", "data": ["c1", "c2", "c3"]},
                              {"name": "phone", "shape": [3], "datatype": "BYTES", "data": ["p1", "p2", "p3"]},
                              {"name": "age", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]},
        "split": {"dataframe_split": {"columns": ["ssn", "card", "phone", "age"],
                                      "data": [[f"s{i}", f"c{i}", f"p{i}", i] for i in (1, 2, 3)]}},
        "records": {"dataframe_records": [{"ssn": f"s{i}", "card": f"c{i}", "phone": f"p{i}", "age": i}
                                          for i in (1, 2, 3)]},
        "instances": {"instances": [{"ssn": f"s{i}", "card": f"c{i}", "phone": f"p{i}", "age": i} for i in (1, 2, 3)]},
    }
    for kind, document in batches.items():
        record = described(document, rules)
        assert record.row_count == 3 and len(record.rows) == 3, kind
        for index, row in enumerate(record.rows, start=1):
            assert "ssn" not in row and row["phone"] == MASK and row["age"] == float(index), (kind, row)
            assert row["card"] == Redactor(KEY).keyed_hash(f"c{index}"), kind
        fields = request_fields(prediction_id="p", endpoint="/e", method="POST", path="/e",
                                observed=ObservedBody.whole(b"{}"), record=record, content_type=None, client_id=None,
                                traceparent=None, model_name=None, model_version=None)
        text = json.dumps(fields["feature_rows"]) + json.dumps(fields["features"]) + fields["body"].decode()
        assert not any(secret in text for secret in ("s1", "s2", "s3", "p1", "p3", '"c2"')), kind


def test_redaction_follows_the_column_names_the_metadata_gives() -> None:
    request = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                           "data": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]}]}
    record = described(request, FieldRules.of(drop=["sepal_length"], mask=["petal_width"]), names=IRIS)
    assert record.rows == [{"sepal_width": 3.5, "petal_length": 1.4, "petal_width": MASK},
                           {"sepal_width": 2.9, "petal_length": 4.3, "petal_width": MASK}]
    assert json.loads(record.body)["inputs"][0]["data"] == [[None, 3.5, 1.4, MASK], [None, 2.9, 4.3, MASK]]
    flat = {"inputs": [{**request["inputs"][0], "data": [5.1, 3.5, 1.4, 0.2, 6.2, 2.9, 4.3, 1.3]}]}
    record = described(flat, FieldRules.of(drop=["sepal_length"]), names=IRIS)
    assert json.loads(record.body)["inputs"][0]["data"] == [None, 3.5, 1.4, 0.2, None, 2.9, 4.3, 1.3]
    assert [row.get("sepal_length") for row in record.rows] == [None, None]


def test_events_carry_every_row_and_row_0_as_features() -> None:
    batch = ObservedBody.whole(json.dumps({"instances": [{"a": 1}, {"a": 2}, {"a": 3}]}).encode())
    record = describe_body(batch, "application/json", mode="full", rules=FieldRules(), redactor=Redactor(None),
                           capture=Capture(1 << 16, 1 << 20, max_rows=2), role="input")
    request = request_fields(prediction_id="p", endpoint="/e", method="POST", path="/e", observed=batch,
                             record=record, content_type=None, client_id=None, traceparent=None, model_name=None,
                             model_version=None, request_id="r-1", content_encoding="gzip")
    assert (request["features"], request["feature_rows"]) == ({"a": 1.0}, [{"a": 1.0}, {"a": 2.0}])
    assert (request["row_count"], request["rows_truncated"]) == (3, True)
    assert (request["request_id"], request["content_encoding"]) == ("r-1", "gzip")
    unparsed = describe_body(ObservedBody.whole(b"x"), "text/plain", mode="full", rules=FieldRules(),
                             redactor=Redactor(None), capture=CAPTURE, role="output")
    response = response_fields(prediction_id="p", endpoint="/e", status=200, observed=ObservedBody.whole(b"x"),
                               record=unparsed, model_name=None, model_version=None, latency_us=1, error=None)
    assert (response["output_rows"], response["row_count"], response["rows_truncated"]) == ([], 0, False)
