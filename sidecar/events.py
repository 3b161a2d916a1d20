"""The fields of the InferenceRequest and InferenceResponse events, built from one exchange.

Pure functions; no I/O. The emitter adds the envelope (event id, time, producer, hash chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.payload import digest_body, extract_scalars


@dataclass(frozen=True)
class Capture:
    """How much of each body goes into events."""

    max_capture_bytes: int
    max_parse_bytes: int


def request_fields(
    *,
    prediction_id: str,
    endpoint: str,
    method: str,
    path: str,
    body: bytes,
    content_type: str | None,
    client_id: str | None,
    traceparent: str | None,
    model_name: str | None,
    model_version: str | None,
    capture: Capture,
) -> dict[str, Any]:
    digest = digest_body(body, capture.max_capture_bytes)
    features = extract_scalars(body, content_type, max_parse_bytes=capture.max_parse_bytes)
    return {
        "prediction_id": prediction_id,
        "endpoint": endpoint,
        "method": method,
        "path": path,
        "model_name": model_name,
        "model_version": model_version,
        "content_type": content_type,
        "body_size": digest.size,
        "body_sha256": digest.sha256,
        "body": digest.captured,
        "body_truncated": digest.truncated,
        "features": features.values,
        "parse_error": features.error,
        "client_id": client_id,
        "traceparent": traceparent,
    }


def response_fields(
    *,
    prediction_id: str,
    endpoint: str,
    status: int,
    body: bytes,
    content_type: str | None,
    model_name: str | None,
    model_version: str | None,
    latency_us: int,
    error: str | None,
    capture: Capture,
) -> dict[str, Any]:
    digest = digest_body(body, capture.max_capture_bytes)
    outputs = extract_scalars(body, content_type, max_parse_bytes=capture.max_parse_bytes)
    return {
        "prediction_id": prediction_id,
        "endpoint": endpoint,
        "status": status,
        "model_name": model_name,
        "model_version": model_version,
        "body_size": digest.size,
        "body_sha256": digest.sha256,
        "body": digest.captured,
        "body_truncated": digest.truncated,
        "outputs": outputs.values,
        "latency_us": latency_us,
        "error": error,
    }
