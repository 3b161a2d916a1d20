"""W3C traceparent parsing and OpenTelemetry trace id checks (provline.schemas.tracecontext)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provline.schemas.tracecontext import INVALID_TRACE_ID, TraceParent, check_trace_id, parse_traceparent
from provline.sidecar.headers import is_valid_traceparent, new_traceparent

HEX = "0123456789abcdef"
trace_ids = st.text(HEX, min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
span_ids = st.text(HEX, min_size=16, max_size=16).filter(lambda s: s != "0" * 16)
flags = st.integers(0, 255)


@given(trace_ids, span_ids, flags)
def test_a_valid_version_00_traceparent_round_trips(trace_id: str, span_id: str, flag: int) -> None:
    header = f"00-{trace_id}-{span_id}-{flag:02x}"
    parsed = parse_traceparent(header)
    assert parsed == TraceParent(0, trace_id, span_id, flag)
    assert parsed.header() == header and parsed.sampled == bool(flag & 1)
    assert check_trace_id(parsed.trace_id) == trace_id
    assert is_valid_traceparent(header)


@given(trace_ids, span_ids, st.text(HEX + "-", max_size=20))
def test_a_later_version_may_append_fields_but_00_may_not(trace_id: str, span_id: str, tail: str) -> None:
    assert parse_traceparent(f"01-{trace_id}-{span_id}-01-{tail}") is not None
    assert parse_traceparent(f"00-{trace_id}-{span_id}-01-{tail}") is None


@given(st.text(max_size=80))
def test_arbitrary_text_is_only_accepted_in_the_w3c_form(value: str) -> None:
    parsed = parse_traceparent(value)
    if parsed is not None:
        assert value.startswith(f"{parsed.version:02x}-{parsed.trace_id}-{parsed.span_id}-")
        assert parsed.trace_id != INVALID_TRACE_ID and parsed.version != 0xFF


@pytest.mark.parametrize("header", [
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "hmac-sha256:" + "a" * 64, "****", "",
])
def test_invalid_traceparents_are_refused(header: str) -> None:
    assert parse_traceparent(header) is None and not is_valid_traceparent(header)


def test_the_sidecars_new_traceparents_parse_as_sampled() -> None:
    for _ in range(100):
        parsed = parse_traceparent(new_traceparent())
        assert parsed is not None and parsed.sampled


@given(trace_ids)
def test_upper_case_trace_ids_are_refused_with_a_hint(trace_id: str) -> None:
    if trace_id.upper() != trace_id:
        with pytest.raises(ValueError, match="use lower case"):
            check_trace_id(trace_id.upper())


@pytest.mark.parametrize(("value", "message"), [
    (INVALID_TRACE_ID, "all-zero trace id"),
    ("4bf92f3577b34da6a3ce929d0e0e473", "32 lower-case hex"),
    ("4bf92f3577b34da6a3ce929d0e0e47361", "32 lower-case hex"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "second field of a traceparent"),
    ("zzf92f3577b34da6a3ce929d0e0e4736", "32 lower-case hex"),
])
def test_invalid_trace_ids_get_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_trace_id(value)


def test_span_attributes_name_the_recorded_fields_and_leave_out_unknown_ones() -> None:
    from provline.sidecar.otel import ExchangeSpan, is_failure, span_attributes

    span = ExchangeSpan(prediction_id="p1", endpoint="/predict", start_ns=1, end_ns=2, model_name="churn",
                        model_version=None, status=200, input_sha256="ab" * 32)
    assert span_attributes(span) == {"provline.prediction_id": "p1", "provline.endpoint": "/predict",
                                     "provline.model_name": "churn", "provline.input_sha256": "ab" * 32,
                                     "http.response.status_code": 200}
    assert not is_failure(span)
    assert is_failure(ExchangeSpan(prediction_id="p", endpoint="/", start_ns=1, end_ns=2, status=502))
    assert is_failure(ExchangeSpan(prediction_id="p", endpoint="/", start_ns=1, end_ns=2, status=0,
                                   error="upstream unreachable"))
