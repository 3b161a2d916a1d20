"""What the sidecar records about a body: digest, captured prefix, and extracted feature values.

Pure functions; no I/O. :func:`extract_features` understands the common model-server payloads
and gives the named scalar values of every row of a batch (up to a cap), row 0 first:

=====================  ==============================================================
format                 recognised by
=====================  ==============================================================
``kserve_v2``          ``inputs`` / ``outputs``: a list of tensors ``{"name", "shape", "data"}``
``dataframe_split``    MLflow ``{"dataframe_split": {"columns": [...], "data": [[...]]}}``
``dataframe_records``  MLflow ``{"dataframe_records": [{...}, ...]}``
``instances``          TF Serving / MLflow row format ``{"instances": [...]}``
``inputs``             TF Serving / MLflow columnar format ``{"inputs": {name: [...]}}`` or a list
``predictions``        TF Serving / MLflow replies ``{"predictions": [...]}``, columnar ``outputs``
``json_list``          a top-level JSON list (pandas records, MLflow replies)
``json_object``        any other JSON object: its top-level number, string and boolean fields (one row)
=====================  ==============================================================

Rows: each item of a list format is a row; a columnar object ``{name: [...]}`` has a row per
index. A KServe V2 tensor of shape ``[N, ...]`` (two or more dimensions) has N rows. A 1-D tensor
is a column (one value per row) when the request is pandas-coded (``parameters.content_type:
"pd"``, MLServer's pandas codec), or when its length is the batch size: that of the tensors with
two or more dimensions, else (a reply) the request's row count, else the common length of
several 1-D tensors; otherwise it is one row of its values. Row ``i`` has the values of every
tensor that has a row ``i``.

Feature names: a named scalar is its name; a named vector gives ``name[0]``, ``name[1]``...;
unnamed values are called ``input`` (requests) or ``output`` (responses). A single 2-D tensor
``[N, K]`` (K > 1) takes the K input (output) names of the model's KServe V2 metadata instead
of ``name[0]``.. when the metadata lists exactly K (:func:`metadata_columns`).

Hostile bodies are bounded here, so that nothing downstream (redaction, extraction, the event
encoder) can fail on them: a document nested deeper than :data:`MAX_JSON_DEPTH` is not parsed,
text is made valid Unicode (:func:`valid_text`) before it goes into an event, and a compressed
body is decoded to at most ``max_parse_bytes`` (:mod:`provline.sidecar.encodings`).
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

from provline.sidecar.encodings import NotDecoded, decode_content

Scalar = float | str | bool
Row = dict[str, Scalar]
Role = Literal["input", "output"]
DEFAULT_MAX_FEATURES = 256
DEFAULT_MAX_ROWS = 1000
# Deeper JSON documents are not parsed: redaction and extraction walk documents level by level, and
# no real model payload comes near it (a batch of tensors is four or five levels).
MAX_JSON_DEPTH = 64
_SURROGATES = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: each surrogate code point becomes U+FFFD.

    JSON may escape lone surrogates (``"\\ud800"``), and Python decodes them into strings that
    UTF-8 (and so the Avro encoder) refuses. Pure; the result has the length of ``text``.
    """
    if text.isascii():  # nearly every string, and CPython knows it without a scan
        return text
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


class CapturedRows:
    """What a body's extracted rows give an event, for the dataclasses that hold ``rows`` and ``row_count``."""

    rows: list[Row]  # the captured rows, row 0 first
    row_count: int  # rows the payload had; more than len(rows) when rows were cut

    @property
    def values(self) -> Row:
        """Row 0: what an event's ``features`` / ``outputs`` hold."""
        return self.rows[0] if self.rows else {}

    @property
    def rows_truncated(self) -> bool:
        return self.row_count > len(self.rows)


@dataclass(frozen=True)
class Extraction(CapturedRows):
    rows: list[Row] = field(default_factory=list)
    row_count: int = 0
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
               max_parse_bytes: int, content_encoding: str | None = None) -> Any:
    """The JSON document of ``body``, or :class:`NotParsed` saying why not; never raises.

    ``size``: the full body size when ``body`` is only its head (then it is not parsed). A document
    nested deeper than :data:`MAX_JSON_DEPTH` is not parsed either. ``content_encoding``: the
    body's ``Content-Encoding``; it is decoded to at most ``max_parse_bytes`` first.
    """
    size = len(body) if size is None else size
    if size == 0:
        return NotParsed("empty body")
    if not is_json_content_type(content_type):
        return NotParsed(f"content type {content_type!r} is not JSON")
    if size > max_parse_bytes or size > len(body):
        return NotParsed(f"body of {size} bytes exceeds max_parse_bytes {max_parse_bytes}")
    if content_encoding is not None:
        try:
            body = decode_content(body, content_encoding, limit=max_parse_bytes)
        except NotDecoded as exc:
            return NotParsed(valid_text(str(exc)[:300]))
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
                    role: Role = "input", max_features: int = DEFAULT_MAX_FEATURES,
                    max_rows: int = DEFAULT_MAX_ROWS, content_encoding: str | None = None) -> Extraction:
    """Parse ``body`` and extract its features (see the module docstring); never raises."""
    document = parse_json(body, content_type, max_parse_bytes=max_parse_bytes, content_encoding=content_encoding)
    if isinstance(document, NotParsed):
        return Extraction(error=document.error)
    return extract_features(document, role=role, max_features=max_features, max_rows=max_rows)


def extract_features(document: Any, *, role: Role = "input", max_features: int = DEFAULT_MAX_FEATURES,
                     max_rows: int = DEFAULT_MAX_ROWS, batch_hint: int | None = None,
                     columns: Columns | None = None) -> Extraction:
    """Named scalar values of each row of a parsed payload, row 0 first; never raises.

    At most ``max_rows`` rows and ``max_features`` values per row are kept, so a large batch or
    tensor cannot blow up an event. ``batch_hint``: for a reply, the request's row count (a 1-D
    output tensor of that length is one output per row). ``columns``: names for the columns of
    tensors (:func:`metadata_columns`).
    """
    rows: list[Row] = []
    try:
        found = _recognise(document, role, batch_hint, columns or {})
        if isinstance(found, str):
            return Extraction(error=found)
        kind, row_count, batch = found
        for pairs in batch:  # lazy: odd shapes fail here, inside the try
            if len(rows) >= max_rows:
                break
            values: Row = {}
            for name, value in pairs:
                if len(values) >= max_features:
                    break
                scalar = _as_scalar(value)
                if scalar is not None:
                    values[name] = scalar
            rows.append(values)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        return Extraction(error=valid_text(f"payload not understood: {type(exc).__name__}: {exc}"[:300]))
    return Extraction(rows=rows, row_count=row_count, format=kind)


Columns = dict[str, tuple[str, ...]]  # tensor name -> names of its columns


def metadata_columns(document: Any, role: Role, names: tuple[str, ...]) -> Columns:
    """Names for the columns of a request's (``role`` output: a reply's) single 2-D tensor ``[N, K]``:
    the model metadata's K input (output) ``names`` when it lists exactly K, K > 1; else none."""
    tensors = document.get("inputs" if role == "input" else "outputs") if isinstance(document, dict) else None
    if len(names) < 2 or not _is_tensor_list(tensors) or len(tensors) != 1:
        return {}
    shape = tensors[0].get("shape")
    if _valid_shape(shape) and len(shape) == 2 and shape[1] == len(names):
        return {str(tensors[0]["name"]): names}
    return {}


def request_id(document: Any) -> str | None:
    """A KServe V2 request's or reply's own ``id``."""
    found = document.get("id") if isinstance(document, dict) else None  # most bodies have none: the cheap test first
    if isinstance(found, str) and found and _is_tensor_list(document.get("inputs") or document.get("outputs")):
        return valid_text(found)
    return None


Pairs = Iterator[tuple[str, Any]]
Batch = tuple[str, int, Iterator[Pairs]]  # format, row count, the rows' (name, value) pairs


def _recognise(document: Any, role: Role, batch_hint: int | None, columns: Columns) -> Batch | str:
    """The format, the row count and each row's (name, value) pairs, or why the document is not understood."""
    unnamed = role
    if isinstance(document, list):
        return "json_list", len(document), (_row(unnamed, row) for row in document)
    if not isinstance(document, dict):
        return f"JSON {type(document).__name__} is not an object"
    if _FORMAT_KEYS.isdisjoint(document):  # the common plain object: one set operation instead of ten lookups
        return _plain_object(document)
    for key in ("inputs", "outputs"):
        tensors = document.get(key)
        if _is_tensor_list(tensors):
            return ("kserve_v2", *_tensors(tensors, pandas=_pandas_coded(document), batch_hint=batch_hint,
                                           columns=columns))
    split = document.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list):
        data = split.get("data") or []
        names = [str(name) for name in split["columns"]]
        return "dataframe_split", len(data), (
            zip(names, row if isinstance(row, list) else [row], strict=False) for row in data)
    records = document.get("dataframe_records")
    if isinstance(records, list):
        return "dataframe_records", len(records), (_row(unnamed, row) for row in records)
    for key, kind in (("instances", "instances"), ("inputs", "inputs"), ("predictions", "predictions"),
                      ("outputs", "predictions")):
        rows = document.get(key)
        if isinstance(rows, list):
            name = unnamed if key != "predictions" else "output"
            return kind, len(rows), (_row(name, row) for row in rows)
        if isinstance(rows, dict):  # columnar: name -> batch of values
            return (kind, *_columns(rows))
    return _plain_object(document)


# Tuples, not ``X | Y``: isinstance checks run per value, and a union type is built anew at each evaluation.
_CONTAINERS = (dict, list)
_KEPT_AS_IS = (bool, str)
_NUMBERS = (int, float)
# Keys that make a JSON object one of the formats above rather than a plain object.
_FORMAT_KEYS = frozenset({"inputs", "outputs", "dataframe_split", "dataframe_records", "instances", "predictions"})
PANDAS_CONTENT_TYPE = "pd"  # MLServer's pandas codec: one 1-D tensor per column


def _plain_object(document: dict[Any, Any]) -> Batch:
    pairs = ((str(k), v) for k, v in document.items() if not isinstance(v, _CONTAINERS))
    return "json_object", 1, iter((pairs,))


def _is_tensor_list(value: Any) -> TypeGuard[list[dict[str, Any]]]:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, dict) and "name" in t and "data" in t for t in value))


def _valid_shape(shape: Any) -> TypeGuard[list[int]]:
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _pandas_coded(holder: dict[str, Any]) -> bool:
    parameters = holder.get("parameters")
    return isinstance(parameters, dict) and parameters.get("content_type") == PANDAS_CONTENT_TYPE


def _tensors(tensors: list[dict[str, Any]], *, pandas: bool, batch_hint: int | None,
             columns: Columns) -> tuple[int, Iterator[Pairs]]:
    """Row count and rows of a list of KServe V2 tensors (the rules are in the module docstring)."""
    shapes = [t.get("shape") for t in tensors]
    batched = [shape[0] for shape in shapes if _valid_shape(shape) and len(shape) >= 2]
    flats = [list(_flatten(t["data"])) for t in tensors]
    one_d = [len(flat) for flat, shape in zip(flats, shapes, strict=True)
             if not (_valid_shape(shape) and len(shape) >= 2)]
    batch = (max(batched) if batched else batch_hint if batch_hint
             else one_d[0] if len(one_d) > 1 and len(set(one_d)) == 1 else None)
    laid_out: list[tuple[str, list[Any], int, tuple[str, ...] | None]] = []  # name, values, per row, column names
    for tensor, shape, flat in zip(tensors, shapes, flats, strict=True):
        name = str(tensor["name"])
        if _valid_shape(shape) and len(shape) >= 2:
            per_row = math.prod(shape[1:])
        elif pandas or _pandas_coded(tensor) or len(flat) == batch:
            per_row = 1  # a column: one value per row
        else:
            per_row = len(flat)  # one row of all its values
        laid_out.append((name, flat, per_row, columns.get(name)))
    row_count = max((math.ceil(len(flat) / per_row) if per_row else 0 for _, flat, per_row, _ in laid_out),
                    default=0)
    return row_count, (_tensor_row(laid_out, index) for index in range(row_count))


def _tensor_row(laid_out: list[tuple[str, list[Any], int, tuple[str, ...] | None]], index: int) -> Pairs:
    for name, flat, per_row, names in laid_out:
        values = flat[index * per_row:(index + 1) * per_row]
        if values:
            yield from _named(name, values, names)


def _row(unnamed: str, row: Any) -> Pairs:
    if isinstance(row, dict):
        for name, value in row.items():
            yield from _named(str(name), list(_flatten(value)) if isinstance(value, list) else [value])
    else:
        yield from _named(unnamed, list(_flatten(row)) if isinstance(row, list) else [row])


def _columns(columns: dict[str, Any]) -> tuple[int, Iterator[Pairs]]:
    """A columnar object, name -> batch of values: a row per index; a value that is not a list is in row 0."""
    lengths = [len(batch) if isinstance(batch, list) else 1 for batch in columns.values()]
    row_count = max(lengths, default=0)
    return row_count, (_column_row(columns, index) for index in range(row_count))


def _column_row(columns: dict[str, Any], index: int) -> Pairs:
    for name, batch in columns.items():
        if not isinstance(batch, list):
            if index == 0:
                yield str(name), batch
        elif index < len(batch):
            value = batch[index]
            yield from _named(str(name), list(_flatten(value)) if isinstance(value, list) else [value])


def _named(name: str, values: list[Any], names: tuple[str, ...] | None = None) -> Pairs:
    if names is not None and len(names) == len(values):
        yield from zip(names, values, strict=True)
    elif len(values) == 1:
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
