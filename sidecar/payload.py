"""What the sidecar records about a body: digest, captured prefix, and extracted scalar values.

Pure functions; no I/O. The one extraction rule for now: the top-level number, string and boolean
fields of a JSON object. Format-specific parsers (KServe V2, TF Serving...) and redaction will be
added here, behind :func:`extract_scalars`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

Scalar = float | str | bool


@dataclass(frozen=True)
class BodyDigest:
    size: int
    sha256: str  # hex, over every byte
    captured: bytes  # the first ``max_capture`` bytes
    truncated: bool


@dataclass(frozen=True)
class Extraction:
    values: dict[str, Scalar] = field(default_factory=dict)
    error: str | None = None  # why nothing could be extracted


def digest_body(body: bytes, max_capture: int) -> BodyDigest:
    """SHA-256 and size of the full body, and its first ``max_capture`` bytes."""
    return BodyDigest(
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        captured=body[:max_capture],
        truncated=len(body) > max_capture,
    )


def is_json_content_type(content_type: str | None) -> bool:
    """True for ``application/json``, ``application/*+json`` and a missing content type (try anyway)."""
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def extract_scalars(body: bytes, content_type: str | None, *, max_parse_bytes: int) -> Extraction:
    """Top-level number/string/boolean fields of a JSON object body; never raises.

    Numbers become floats (Avro double); nested objects, arrays and nulls are skipped. Anything
    that is not a JSON object gives no values and an ``error`` saying why.
    """
    if not body:
        return Extraction(error="empty body")
    if not is_json_content_type(content_type):
        return Extraction(error=f"content type {content_type!r} is not JSON")
    if len(body) > max_parse_bytes:
        return Extraction(error=f"body of {len(body)} bytes exceeds max_parse_bytes {max_parse_bytes}")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
        return Extraction(error=f"not valid JSON: {exc}"[:300])
    if not isinstance(document, dict):
        return Extraction(error=f"JSON {type(document).__name__} is not an object")
    values: dict[str, Scalar] = {}
    for name, value in document.items():
        if isinstance(value, bool | str):
            values[name] = value
        elif isinstance(value, int | float):
            number = _as_float(value)
            if number is not None:
                values[name] = number
    return Extraction(values=values)


def _as_float(value: int | float) -> float | None:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the double range
        return None
