"""W3C Trace Context (``traceparent``) parsing and OpenTelemetry trace id checks.

Pure functions, no I/O. InferenceRequest events record the caller's ``traceparent``; these rules
say which recorded values carry a trace id (the sink's migration 0010 applies the same rule in SQL,
see ``sink/sql/0010_otel_trace_id.sql``) and which ids a reader may look up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACE_ID_HEX = 32  # 16 bytes, lower-case hex
SPAN_ID_HEX = 16  # 8 bytes
INVALID_TRACE_ID = "0" * TRACE_ID_HEX
INVALID_SPAN_ID = "0" * SPAN_ID_HEX
SAMPLED_FLAG = 0x01

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class TraceParent:
    """One valid ``traceparent``: the caller's trace id, its span id (our parent) and its flags."""

    version: int
    trace_id: str  # 32 lower-case hex, not all zeros
    span_id: str  # 16 lower-case hex, not all zeros
    flags: int

    @property
    def sampled(self) -> bool:
        """Whether the caller sampled this trace (the W3C ``sampled`` flag)."""
        return bool(self.flags & SAMPLED_FLAG)

    def header(self) -> str:
        return f"{self.version:02x}-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The parsed ``traceparent``, or None when ``value`` is absent or not valid W3C Trace Context.

    Rules: lower-case hex, version not ff, non-zero trace and span ids; version 00 has exactly four
    fields; a later version may append fields after a dash (ignored, as the specification asks).
    """
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == INVALID_TRACE_ID or span_id == INVALID_SPAN_ID:
        return None
    return TraceParent(int(version, 16), trace_id, span_id, int(flags, 16))


def check_trace_id(value: str) -> str:
    """``value`` when it is an OpenTelemetry trace id (32 lower-case hex, not all zeros).

    Raises ValueError naming what is wrong and the expected form.
    """
    if not _TRACE_ID.fullmatch(value):
        hint = " (use lower case)" if _TRACE_ID.fullmatch(value.lower()) else ""
        raise ValueError(
            f"{value!r} is not an OpenTelemetry trace id: expected {TRACE_ID_HEX} lower-case hex digits{hint}, "
            "the second field of a traceparent (00-<trace id>-<span id>-<flags>)")
    if value == INVALID_TRACE_ID:
        raise ValueError(f"{value!r} is the all-zero trace id, which W3C Trace Context defines as invalid; "
                         "no request carries it")
    return value
