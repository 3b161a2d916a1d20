"""The fields of the InferenceRequest and InferenceResponse events, built from one exchange.

Pure functions; no I/O. The emitter adds the envelope (event id, time, producer, hash chain).
The capture mode and the redaction rules decide what of each body goes into an event; the
body's size and digest (``body_sha256``) are always those of the exact bytes exchanged:

- ``full`` mode: the hex SHA-256 of the bytes, which anyone holding them can check;
- where redaction applies (``redacted``, ``hash-only``): ``hmac-sha256:<hex>``, the HMAC-SHA256 of
  the bytes under ``PROVLINE_CAPTURE__REDACTION_KEY``, a secret the store never sees. A plain hash
  would undo the redaction: whoever sees the redacted body and the hash of the original can try
  every value of a dropped field (every 9-digit SSN takes seconds) until the hash matches. The
  key holder can still check the exact bytes. PredictionTrace's ``request_sha256`` and
  ``response_sha256`` are these digests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from provline.sidecar.errors import PolicyError, RedactionError
from provline.sidecar.payload import (
    DEFAULT_MAX_FEATURES,
    DEFAULT_MAX_ROWS,
    CapturedRows,
    NotParsed,
    ObservedBody,
    Role,
    Row,
    extract_features,
    metadata_columns,
    parse_json,
    request_id,
    valid_text,
)
from provline.sidecar.policy import FieldRules, Mode, Policy, Redactor, load_policy
from provline.sidecar.settings import CaptureSettings

REDACTION_NEEDS_JSON = "body not captured: the redaction policy applies to JSON bodies only"


@dataclass(frozen=True)
class CaptureRules:
    """What the ``capture`` settings mean for recording: limits, policy, redactor and the default mode."""

    capture: Capture
    policy: Policy
    redactor: Redactor
    default_mode: Mode


def capture_rules(settings: CaptureSettings, *, max_rows: int) -> CaptureRules:
    """Read the capture policy and key once, at start-up (the sidecar's and ``provline ingest``'s);
    raises PolicyError when the policy cannot be read or needs a key that is not set."""
    policy = load_policy(settings.policy_file) if settings.policy_file else Policy()
    key = settings.redaction_key.get_secret_value().encode() if settings.redaction_key else None
    default_mode: Mode = settings.mode or ("redacted" if settings.policy_file else "full")
    needs_key = policy.key_needed(default_capture=default_mode)
    if needs_key and not key:
        source = f"the capture policy {settings.policy_file}" if settings.policy_file else "the capture settings"
        raise PolicyError(
            f"{source} {needs_key} but PROVLINE_CAPTURE__REDACTION_KEY is not set; set it to a long random "
            "secret, the same for every worker and sidecar whose events you join (or record everything in "
            "full mode, PROVLINE_CAPTURE__MODE=full, where nothing is redacted)"
        )
    capture = Capture(settings.max_capture_bytes, settings.max_parse_bytes, settings.max_features, max_rows)
    return CaptureRules(capture, policy, Redactor(key), default_mode)


@dataclass(frozen=True)
class Capture:
    """How much of each body goes into events."""

    max_capture_bytes: int
    max_parse_bytes: int
    max_features: int = DEFAULT_MAX_FEATURES  # per row
    max_rows: int = DEFAULT_MAX_ROWS

    @property
    def keep_bytes(self) -> int:
        """How many leading bytes of a streamed body must be kept to capture and parse it."""
        return max(self.max_capture_bytes, self.max_parse_bytes)


@dataclass(frozen=True)
class BodyRecord(CapturedRows):
    """What an event records of one body besides its size and hash."""

    body: bytes | None = None
    truncated: bool = False
    rows: list[Row] = field(default_factory=list)  # extracted values of each captured row, row 0 first
    row_count: int = 0  # rows the body had: 0 when it was not parsed
    error: str | None = None
    model_version: str | None = None  # a KServe V2 reply's own ``model_version``
    request_id: str | None = None  # a KServe V2 body's own ``id``, as sent: the recorder redacts it


def describe_body(
    observed: ObservedBody, content_type: str | None, *, mode: Mode, rules: FieldRules, redactor: Redactor,
    capture: Capture, role: Role, content_encoding: str | None = None, batch_hint: int | None = None,
    names: tuple[str, ...] = (),
) -> BodyRecord:
    """Captured bytes, feature rows and parse error of one body under ``mode``; never raises for bad input.

    ``content_encoding``: the body's ``Content-Encoding``, decoded (bounded) for parsing; the captured
    bytes of ``full`` mode are those exchanged. ``batch_hint``: for a reply, the request's row count.
    ``names``: the model metadata's input (output) names, for the columns of a single 2-D tensor.

    In ``redacted`` mode with rules for this direction, a body that is not a complete JSON document
    is not captured at all: what cannot be parsed cannot be redacted.
    """
    if mode == "hash-only":
        return BodyRecord()
    document = parse_json(observed.head, content_type, size=observed.size, max_parse_bytes=capture.max_parse_bytes,
                          content_encoding=content_encoding)
    parsed = not isinstance(document, NotParsed)
    error = document.error if isinstance(document, NotParsed) else None
    columns = metadata_columns(document, role, names) if parsed and names else {}
    own_id = request_id(document) if parsed else None
    if mode == "redacted" and rules:
        if not parsed:
            return BodyRecord(error=f"{error}; {REDACTION_NEEDS_JSON}")
        try:
            document = redactor.redact(document, rules.naming(columns) if columns else rules)
        except RedactionError as exc:
            return BodyRecord(error=f"{exc}; {REDACTION_NEEDS_JSON}")
        text = valid_text(json.dumps(document, separators=(",", ":"), ensure_ascii=False)).encode()
        body, truncated = text[: capture.max_capture_bytes], len(text) > capture.max_capture_bytes
    else:
        body = observed.head[: capture.max_capture_bytes]
        truncated = observed.size > capture.max_capture_bytes
    if not parsed:
        return BodyRecord(body=body, truncated=truncated, error=error)
    extraction = extract_features(document, role=role, max_features=capture.max_features, max_rows=capture.max_rows,
                                  batch_hint=batch_hint, columns=columns)
    version = _model_version(document) if role == "output" else None  # after redaction, which may drop it
    return BodyRecord(body=body, truncated=truncated, rows=extraction.rows, row_count=extraction.row_count,
                      error=extraction.error, model_version=version, request_id=own_id)


def _model_version(document: Any) -> str | None:
    if isinstance(document, dict):
        version = document.get("model_version")
        if isinstance(version, str) and version:
            return valid_text(version)
    return None


def not_captured(exc: BaseException) -> str:
    """The parse error of a degraded record: why its body could not be captured."""
    return valid_text(f"body not captured: {type(exc).__name__}: {exc}"[:300])


def _text(value: str | None) -> str | None:
    return None if value is None else valid_text(value)


def _values(values: Row) -> Row:
    return {valid_text(k): valid_text(v) if isinstance(v, str) else v for k, v in values.items()}


def request_fields(
    *,
    prediction_id: str,
    endpoint: str,
    method: str,
    path: str,
    observed: ObservedBody,
    record: BodyRecord,
    content_type: str | None,
    client_id: str | None,
    traceparent: str | None,
    model_name: str | None,
    model_version: str | None,
    request_id: str | None = None,
    content_encoding: str | None = None,
    mlflow_model_uuid: str | None = None,
) -> dict[str, Any]:
    """InferenceRequest fields; every string made valid Unicode (:func:`valid_text`), so the event encodes."""
    rows = [_values(row) for row in record.rows]
    return {
        "prediction_id": valid_text(prediction_id),
        "endpoint": valid_text(endpoint),
        "method": valid_text(method),
        "path": valid_text(path),
        "model_name": _text(model_name),
        "model_version": _text(model_version),
        "content_type": _text(content_type),
        "body_size": observed.size,
        "body_sha256": observed.digest,
        "body": record.body,
        "body_truncated": record.truncated,
        "features": rows[0] if rows else {},
        "parse_error": _text(record.error),
        "client_id": _text(client_id),
        "traceparent": _text(traceparent),
        "feature_rows": rows if len(rows) > 1 else [],  # one row is ``features`` alone: not stored twice
        "row_count": record.row_count,
        "rows_truncated": record.rows_truncated,
        "request_id": _text(request_id),
        "content_encoding": _text(content_encoding),
        "mlflow_model_uuid": _text(mlflow_model_uuid),
    }


def response_fields(
    *,
    prediction_id: str,
    endpoint: str,
    status: int,
    observed: ObservedBody,
    record: BodyRecord,
    model_name: str | None,
    model_version: str | None,
    latency_us: int,
    error: str | None,
    request_id: str | None = None,
    content_encoding: str | None = None,
    mlflow_model_uuid: str | None = None,
) -> dict[str, Any]:
    """InferenceResponse fields; every string made valid Unicode (:func:`valid_text`), so the event encodes."""
    rows = [_values(row) for row in record.rows]
    return {
        "prediction_id": valid_text(prediction_id),
        "endpoint": valid_text(endpoint),
        "status": status,
        "model_name": _text(model_name),
        "model_version": _text(model_version),
        "body_size": observed.size,
        "body_sha256": observed.digest,
        "body": record.body,
        "body_truncated": record.truncated,
        "outputs": rows[0] if rows else {},
        "latency_us": latency_us,
        "error": _text(error),
        "output_rows": rows if len(rows) > 1 else [],
        "row_count": record.row_count,
        "rows_truncated": record.rows_truncated,
        "request_id": _text(request_id),
        "content_encoding": _text(content_encoding),
        "mlflow_model_uuid": _text(mlflow_model_uuid),
    }
