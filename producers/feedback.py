"""Ground truth as a Feedback event's fields: one check shared by every path that sends a label.

``lineage.feedback(...)`` (jobs), ``POST /v1/feedback`` (the audit API) and ``provline feedback
import`` (files, through the API) all build their events with :func:`feedback_fields`, so a label
the API refuses is refused in the same words by the library. Pure, no I/O.

A Feedback names its prediction by exactly one id: provline's ``prediction_id`` (the sidecar's
``X-Prediction-ID``), or the ``client_request_id`` the client sent (a KServe V2 request ``id``,
``x-request-id``), which the sink resolves to prediction ids (:mod:`provline.sink.feedback`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

MAX_ID_CHARS = 1000  # as the API's request-id lookup (/v1/predictions)
MAX_LABEL_CHARS = 10_000
MAX_SOURCE_CHARS = 200
DEFAULT_SOURCE = "api"
FIELDS = frozenset({"prediction_id", "client_request_id", "label", "outcome", "source", "observed_time"})


class InvalidFeedbackError(ValueError):
    """A label that cannot be recorded; the message says which field and how to fix it."""


def _id(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidFeedbackError(f"{name} must be a string, not {type(value).__name__}")
    if not value or value != value.strip():
        raise InvalidFeedbackError(f"{name} {value!r} is empty or has surrounding whitespace")
    if len(value) > MAX_ID_CHARS:
        raise InvalidFeedbackError(f"{name} has {len(value)} characters; at most {MAX_ID_CHARS}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidFeedbackError(f"{name} {value[:40]!r} contains control characters")
    return value


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidFeedbackError(f"label must be a string (or an integer class), not {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_LABEL_CHARS:
        raise InvalidFeedbackError(f"label has {len(text)} characters; at most {MAX_LABEL_CHARS}")
    if "\x00" in text:
        raise InvalidFeedbackError("label contains a NUL character")
    return text


def _outcome(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | str | bytes) or not hasattr(value, "__float__"):  # NumPy scalars have it
        raise InvalidFeedbackError(f"outcome must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidFeedbackError(f"outcome must be a number, not {type(value).__name__}") from None
    if not math.isfinite(number):
        raise InvalidFeedbackError(f"outcome {number} is not a finite number")
    return number


def _observed(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidFeedbackError(f"observed_time {value[:40]!r} is not an ISO-8601 time") from None
    if not isinstance(value, datetime):
        raise InvalidFeedbackError(f"observed_time must be a datetime or ISO-8601 text, not {type(value).__name__}")
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # naive means UTC
    if not datetime(1970, 1, 1, tzinfo=UTC) <= value <= datetime(9999, 1, 1, tzinfo=UTC):
        raise InvalidFeedbackError(f"observed_time {value.isoformat()} is out of range")
    return value.astimezone(UTC)


def feedback_fields(
    *, prediction_id: Any = None, client_request_id: Any = None, label: Any = None, outcome: Any = None,
    source: Any = DEFAULT_SOURCE, observed_time: Any = None, now: datetime | None = None,
) -> dict[str, Any]:
    """The fields of one Feedback event (schema v2), checked; InvalidFeedbackError saying what is wrong.

    Exactly one of ``prediction_id`` and ``client_request_id``; ``label`` (text; an integer class is
    taken as its text) and/or ``outcome`` (a finite number); ``source`` says where the truth came
    from; ``observed_time`` (datetime or ISO-8601, naive means UTC) defaults to ``now``.
    """
    pid, rid = _id("prediction_id", prediction_id), _id("client_request_id", client_request_id)
    if (pid is None) == (rid is None):
        raise InvalidFeedbackError(
            "name the prediction by exactly one of prediction_id (provline's X-Prediction-ID) and client_request_id "
            f"(the client's own request id); got {'both' if pid else 'neither'}"
        )
    text, number = _label(label), _outcome(outcome)
    if text is None and number is None:
        raise InvalidFeedbackError("feedback needs a label or an outcome (or both); got neither")
    if not isinstance(source, str) or not source.strip() or len(source) > MAX_SOURCE_CHARS:
        raise InvalidFeedbackError(f"source must be a non-empty string of at most {MAX_SOURCE_CHARS} characters")
    return {
        "prediction_id": pid, "client_request_id": rid, "label": text, "outcome": number, "source": source,
        "observed_time": _observed(observed_time, now or datetime.now(UTC)),
    }


def feedback_item(item: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """:func:`feedback_fields` of one JSON object (an API body item); unknown keys are refused."""
    if not isinstance(item, Mapping):
        raise InvalidFeedbackError(f"a feedback item is a JSON object, not {type(item).__name__}")
    unknown = sorted(str(key)[:40] for key in item if key not in FIELDS)
    if unknown:
        raise InvalidFeedbackError(f"unknown fields {unknown}; a feedback item has {sorted(FIELDS)}")
    return feedback_fields(**{str(key): value for key, value in item.items()}, now=now)
