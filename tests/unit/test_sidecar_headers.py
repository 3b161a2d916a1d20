from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provline.sidecar.errors import UpstreamTimeout, UpstreamUnreachable, upstream_error_from
from provline.sidecar.headers import (
    HOP_BY_HOP,
    choose_prediction_id,
    downstream_response_headers,
    host_header,
    is_valid_traceparent,
    new_traceparent,
    strip_hop_by_hop,
    traceparent_for_upstream,
    upstream_request_headers,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_fixed_hop_by_hop_headers_are_dropped_in_any_case() -> None:
    headers = [(name.upper(), b"v") for name in HOP_BY_HOP] + [(b"Content-Type", b"application/json")]
    assert strip_hop_by_hop(headers) == [(b"Content-Type", b"application/json")]


def test_headers_named_by_connection_are_dropped_and_order_is_kept() -> None:
    headers = [
        (b"x-a", b"1"), (b"Connection", b"keep-alive, X-Secret ,  x-other"), (b"X-Secret", b"s"),
        (b"x-b", b"2"), (b"X-Other", b"o"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-a", b"1"), (b"x-b", b"2"), (b"set-cookie", b"a=1"),
                                         (b"set-cookie", b"b=2")]


def test_upstream_request_headers() -> None:
    client = [
        (b"host", b"sidecar.example:8080"), (b"content-type", b"application/json"),
        (b"content-length", b"9"), (b"transfer-encoding", b"chunked"), (b"te", b"trailers"),
        (b"proxy-authorization", b"Basic eA=="), (b"x-forwarded-for", b"10.0.0.1"),
        (b"traceparent", b"garbage"), (b"x-prediction-id", b"spoofed"), (b"expect", b"100-continue"),
        (b"authorization", b"Bearer t"),
    ]
    out = upstream_request_headers(
        client, upstream_host="model:8000", client_ip="10.0.0.2", scheme="https", traceparent=VALID,
        prediction_id="p1",
    )
    assert out == [
        (b"host", b"model:8000"), (b"content-type", b"application/json"), (b"authorization", b"Bearer t"),
        (b"x-forwarded-for", b"10.0.0.1, 10.0.0.2"), (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"sidecar.example:8080"), (b"traceparent", VALID.encode()),
        (b"x-prediction-id", b"p1"),
    ]


def test_forwarded_proto_and_host_from_an_outer_proxy_are_kept() -> None:
    client = [(b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"public.example"), (b"host", b"inner")]
    out = upstream_request_headers(
        client, upstream_host="m", client_ip=None, scheme="http", traceparent=VALID, prediction_id="p"
    )
    assert (b"x-forwarded-proto", b"https") in out and (b"x-forwarded-host", b"public.example") in out
    assert [k for k, _ in out].count(b"x-forwarded-proto") == 1
    assert not any(k == b"x-forwarded-for" for k, _ in out)


def test_downstream_headers_get_prediction_id_and_model_version() -> None:
    upstream = [(b"content-type", b"application/json"), (b"keep-alive", b"timeout=5"),
                (b"x-prediction-id", b"from-upstream")]
    out = downstream_response_headers(upstream, prediction_id="p1", model_version="3")
    assert out == [(b"content-type", b"application/json"), (b"x-prediction-id", b"p1"), (b"x-model-version", b"3")]
    with_version = downstream_response_headers([(b"X-Model-Version", b"7")], prediction_id="p", model_version="3")
    assert with_version == [(b"X-Model-Version", b"7"), (b"x-prediction-id", b"p")]
    assert downstream_response_headers([], prediction_id="p", model_version=None) == [(b"x-prediction-id", b"p")]


@pytest.mark.parametrize(
    ("host", "port", "scheme", "expected"),
    [("m", 80, "http", "m"), ("m", 8000, "http", "m:8000"), ("m", 443, "https", "m"),
     ("m", 80, "https", "m:80"), ("::1", 8000, "http", "[::1]:8000")],
)
def test_host_header(host: str, port: int, scheme: str, expected: str) -> None:
    assert host_header(host, port, scheme) == expected


def test_prediction_id_is_the_request_id_when_usable_else_a_uuid7() -> None:
    assert choose_prediction_id(b"req-42") == "req-42"
    assert choose_prediction_id(b"  req-42 ") == "req-42"
    for unusable in (None, b"", b"has space", b"x" * 129, "caf\u00e9".encode()):
        assert UUID7.fullmatch(choose_prediction_id(unusable)), unusable
    assert choose_prediction_id(None) != choose_prediction_id(None)


def test_valid_traceparent_is_propagated_unchanged() -> None:
    assert traceparent_for_upstream([VALID.encode()]) == VALID
    future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
    assert traceparent_for_upstream([future.encode()]) == future


@pytest.mark.parametrize("bad", [
    "", "garbage", VALID.upper(), VALID + "-extra",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
])
def test_invalid_traceparent_starts_a_new_trace(bad: str) -> None:
    assert not is_valid_traceparent(bad)
    created = traceparent_for_upstream([bad.encode()])
    assert is_valid_traceparent(created) and created != bad


def test_missing_or_repeated_traceparent_starts_a_new_trace() -> None:
    assert is_valid_traceparent(traceparent_for_upstream([]))
    assert traceparent_for_upstream([VALID.encode(), VALID.encode()]) != VALID
    assert traceparent_for_upstream([b"\xff"]) != VALID


@given(st.integers(min_value=0, max_value=30))
def test_new_traceparents_are_valid_and_distinct(_: int) -> None:
    a, b = new_traceparent(), new_traceparent()
    assert is_valid_traceparent(a) and a != b and a.startswith("00-") and a.endswith("-01")


def test_upstream_errors_map_to_502_and_504() -> None:
    from provline.sidecar.upstream import UpstreamProtocolError

    assert isinstance(upstream_error_from(TimeoutError("no bytes"), upstream="u"), UpstreamTimeout)
    assert upstream_error_from(TimeoutError(), upstream="u").status == 504  # type: ignore[union-attr]
    refused = upstream_error_from(ConnectionRefusedError(111, "Connection refused"), upstream="http://m:1")
    assert isinstance(refused, UpstreamUnreachable) and refused.status == 502
    assert "http://m:1" in refused.reason and "refused" in refused.reason
    closed = upstream_error_from(UpstreamProtocolError("closed before replying"), upstream="u")
    assert isinstance(closed, UpstreamUnreachable) and "closed before replying" in closed.reason
    assert upstream_error_from(ValueError("bug"), upstream="u") is None
