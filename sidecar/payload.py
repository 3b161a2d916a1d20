"""What the sidecar records about a body: digest, captured prefix, and extracted feature values.

Pure functions; no I/O. :func:`extract_features` understands the common model-server payloads
and gives the named scalar values of the FIRST row of a batch (one sample per request is what
drift monitoring needs, and it bounds the event size):

=====================  ==============================================================
format                 recognised by
=====================  ==============================================================
``kserve_v2``          ``inputs`` / ``outputs``: a list of tensors ``{"name", "shape", "data"}``
``dataframe_split``    MLflow ``{"dataframe_split": {"columns": [...], "data": [[...]]}}``
``dataframe_records``  MLflow ``{"dataframe_records": [{...}, ...]}``
``instances``          TF Serving / MLflow row format ``{"instances": [...]}``
``inputs``             TF Serving / MLflow columnar format ``{"inputs": {name: [...]}}`` or a list
``predictions``        TF Serving / MLflow replies ``{"predictions": [...]}``, columnar ``outputs``
``json_list``          a top-level JSON list (pandas records, MLflow 1 replies)
``json_object``        any other JSON object: its top-level number, string and boolean fields
=====================  ==============================================================

Feature names: a named scalar is its name; a named vector gives ``name[0]``, ``name[1]``...;
unnamed values are called ``input`` (requests) or ``output`` (responses).

Hostile bodies are bounded here, so that nothing downstream (redaction, extraction, the event
encoder) can fail on them: a document nested deeper than :data:`MAX_JSON_DEPTH` is not parsed,
and text is made valid Unicode (:func:`valid_text`) before it goes into an event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

import orjson

Scalar = float | str | bool
Role = Literal["input", "output"]
DEFAULT_MAX_FEATURES = 256
# Deeper JSON documents are not parsed: redaction and extraction walk documents level by level, and
# no real model payload comes near it (a batch of tensors is four or five levels).
MAX_JSON_DEPTH = 64
_SURROGATES = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: each surrogate code point becomes U+FFFD.

    JSON may escape lone surrogates (``"\\ud800"``), and Python decodes them into strings that
    UTF-8 (and so the Avro encoder) refuses. Pure; the result has the length of ``text``.
    """
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def deeper_than(document: Any, limit: int) -> bool:
    """Whether ``document`` nests lists and objects more than ``limit`` levels; iterative, so any depth is safe."""
    if not isinstance(document, _CONTAINERS):
        return False
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


def too_deep(body: bytes, document: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """:func:`deeper_than` for a document parsed from ``body``, skipping the walk when ``body`` has too
    few brackets to nest that deep (every ``[`` or ``{`` in any encoding contains its byte)."""
    return body.count(b"[") + body.count(b"{") > limit and deeper_than(document, limit)


KEYED_DIGEST_PREFIX = "hmac-sha256:"


@dataclass(frozen=True)
class BodyDigest:
    size: int
    sha256: str  # hex, over every byte
    captured: bytes  # the first ``max_capture`` bytes
    truncated: bool


def body_digest(body: bytes, key: bytes | None) -> str:
    """The digest an event records of ``body``: hex SHA-256, or with ``key`` ``hmac-sha256:<hex>``."""
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return KEYED_DIGEST_PREFIX + hmac.digest(key, body, "sha256").hex()


@dataclass(frozen=True)
class Extraction:
    values: dict[str, Scalar] = field(default_factory=dict)
    error: str | None = None  # why nothing could be extracted
    format: str | None = None  # which payload format was recognised


class BodyTap:
    """Follows a body chunk by chunk: size, digest over every byte (:func:`body_digest`, keyed when
    ``key`` is given), and the first ``keep`` bytes.

    Used for bodies the proxy streams instead of holding whole; not thread-safe.
    """

    def __init__(self, keep: int, *, key: bytes | None = None) -> None:
        self.keep = keep
        self.size = 0
        self._prefix = "" if key is None else KEYED_DIGEST_PREFIX
        self._hash: Any = hashlib.sha256() if key is None else hmac.new(key, digestmod=hashlib.sha256)
        self._head: list[bytes] = []
        self._kept = 0

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._kept < self.keep:
            part = chunk[: self.keep - self._kept]
            self._head.append(part)
            self._kept += len(part)

    @property
    def digest(self) -> str:
        return self._prefix + self._hash.hexdigest()

    @property
    def head(self) -> bytes:
        return b"".join(self._head)


@dataclass(frozen=True)
class ObservedBody:
    """A body as the proxy saw it: its size and digest (:func:`body_digest`), and its first bytes
    (all of it when ``complete``)."""

    size: int
    digest: str
    head: bytes

    @property
    def complete(self) -> bool:
        return len(self.head) == self.size

    @classmethod
    def whole(cls, body: bytes, *, key: bytes | None = None) -> ObservedBody:
        return cls(len(body), body_digest(body, key), body)

    @classmethod
    def tapped(cls, tap: BodyTap) -> ObservedBody:
        return cls(tap.size, tap.digest, tap.head)


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


class NotParsed:
    """Marker for a body that gave no JSON document; ``error`` says why."""

    def __init__(self, error: str) -> None:
        self.error = error


def parse_json(body: bytes, content_type: str | None, *, size: int | None = None,
               max_parse_bytes: int) -> Any:
    """The JSON document of ``body``, or :class:`NotParsed` saying why not; never raises.

    ``size``: the full body size when ``body`` is only its head (then it is not parsed). A document
    nested deeper than :data:`MAX_JSON_DEPTH` is not parsed either.
    """
    size = len(body) if size is None else size
    if size == 0:
        return NotParsed("empty body")
    if not is_json_content_type(content_type):
        return NotParsed(f"content type {content_type!r} is not JSON")
    if size > max_parse_bytes or size > len(body):
        return NotParsed(f"body of {size} bytes exceeds max_parse_bytes {max_parse_bytes}")
    try:
        document = orjson.loads(body)  # ~4x faster; it accepts only strict UTF-8 JSON, which json.loads reads alike
    except orjson.JSONDecodeError:
        try:  # what orjson refuses but Python reads: NaN, Infinity, huge integers, UTF-16/32, a BOM, lone surrogates
            document = json.loads(body)
        except RecursionError:
            return NotParsed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
        except ValueError as exc:  # bad JSON and bad UTF-8
            return NotParsed(valid_text(f"not valid JSON: {exc}"[:300]))
    if too_deep(body, document):
        return NotParsed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
    return document


def extract_scalars(body: bytes, content_type: str | None, *, max_parse_bytes: int,
                    role: Role = "input", max_features: int = DEFAULT_MAX_FEATURES) -> Extraction:
    """Parse ``body`` and extract its features (see the module docstring); never raises."""
    document = parse_json(body, content_type, max_parse_bytes=max_parse_bytes)
    if isinstance(document, NotParsed):
        return Extraction(error=document.error)
    return extract_features(document, role=role, max_features=max_features)


def extract_features(document: Any, *, role: Role = "input",
                     max_features: int = DEFAULT_MAX_FEATURES) -> Extraction:
    """Named scalar values of the first row of a parsed payload; never raises.

    At most ``max_features`` values are kept, so a large tensor cannot blow up an event.
    """
    values: dict[str, Scalar] = {}
    try:
        found = _recognise(document, role)
        if isinstance(found, str):
            return Extraction(error=found)
        kind, pairs = found
        for name, value in pairs:  # lazy: odd shapes fail here, inside the try
            if len(values) >= max_features:
                break
            scalar = _as_scalar(value)
            if scalar is not None:
                values[name] = scalar
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        return Extraction(error=valid_text(f"payload not understood: {type(exc).__name__}: {exc}"[:300]))
    return Extraction(values=values, format=kind)


Pairs = Iterator[tuple[str, Any]]


def _recognise(document: Any, role: Role) -> tuple[str, Pairs] | str:
    """The format and the (name, value) pairs of the first row, or why the document is not understood."""
    unnamed = role
    if isinstance(document, list):
        return "json_list", _row(unnamed, document[0]) if document else iter(())
    if not isinstance(document, dict):
        return f"JSON {type(document).__name__} is not an object"
    if _FORMAT_KEYS.isdisjoint(document):  # the common plain object: one set operation instead of ten lookups
        return _plain_object(document)
    for key in ("inputs", "outputs"):
        tensors = document.get(key)
        if _is_tensor_list(tensors):
            return "kserve_v2", _tensors(tensors)
    split = document.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list):
        rows = split.get("data") or []
        first = rows[0] if rows else []
        first = first if isinstance(first, list) else [first]
        return "dataframe_split", ((str(name), value) for name, value in zip(split["columns"], first, strict=False))
    records = document.get("dataframe_records")
    if isinstance(records, list):
        return "dataframe_records", _row(unnamed, records[0]) if records else iter(())
    for key, kind in (("instances", "instances"), ("inputs", "inputs"), ("predictions", "predictions"),
                      ("outputs", "predictions")):
        rows = document.get(key)
        if isinstance(rows, list):
            return kind, _row(unnamed if key != "predictions" else "output", rows[0]) if rows else iter(())
        if isinstance(rows, dict):  # columnar: name -> batch of values
            return kind, _columns(rows)
    return _plain_object(document)


# Tuples, not ``X | Y``: isinstance checks run per value, and a union type is built anew at each evaluation.
_CONTAINERS = (dict, list)
_KEPT_AS_IS = (bool, str)
_NUMBERS = (int, float)
# Keys that make a JSON object one of the formats above rather than a plain object.
_FORMAT_KEYS = frozenset({"inputs", "outputs", "dataframe_split", "dataframe_records", "instances", "predictions"})


def _plain_object(document: dict[Any, Any]) -> tuple[str, Pairs]:
    return "json_object", ((str(k), v) for k, v in document.items() if not isinstance(v, _CONTAINERS))


def _is_tensor_list(value: Any) -> TypeGuard[list[dict[str, Any]]]:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, dict) and "name" in t and "data" in t for t in value))


def _tensors(tensors: list[dict[str, Any]]) -> Pairs:
    for tensor in tensors:
        flat = list(_flatten(tensor["data"]))
        shape = tensor.get("shape")
        per_row = len(flat)
        if isinstance(shape, list) and len(shape) >= 2 and all(isinstance(d, int) and d >= 0 for d in shape):
            per_row = math.prod(shape[1:])
        yield from _named(str(tensor["name"]), flat[:per_row])


def _row(unnamed: str, row: Any) -> Pairs:
    if isinstance(row, dict):
        for name, value in row.items():
            yield from _named(str(name), list(_flatten(value)) if isinstance(value, list) else [value])
    else:
        yield from _named(unnamed, list(_flatten(row)) if isinstance(row, list) else [row])


def _columns(columns: dict[str, Any]) -> Pairs:
    for name, batch in columns.items():
        first = batch[0] if isinstance(batch, list) and batch else batch
        yield from _named(str(name), list(_flatten(first)) if isinstance(first, list) else [first])


def _named(name: str, values: list[Any]) -> Pairs:
    if len(values) == 1:
        yield name, values[0]
    else:
        for index, value in enumerate(values):
            yield f"{name}[{index}]", value


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _as_scalar(value: Any) -> Scalar | None:
    if isinstance(value, _KEPT_AS_IS):
        return value
    if isinstance(value, _NUMBERS):
        try:
            return float(value)
        except OverflowError:  # an integer beyond the double range
            return None
    return None  # null, objects
