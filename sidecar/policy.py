"""The capture policy: which fields to redact, how much of each route to capture, what to sample.

Pure logic apart from :func:`load_policy`, which reads the YAML file::

    inputs:                      # request bodies
      drop: [ssn]                # removed
      hash: [customer_id]        # replaced by HMAC-SHA256 under PROVLINE_CAPTURE__REDACTION_KEY: joinable, unreadable
      mask: [phone]              # replaced by "****"
    outputs:                     # response bodies
      drop: [internal_score]
    headers:                     # what the sidecar records from request headers
      hash: [x-request-id]       # the prediction id (and Kafka key) becomes its HMAC: joinable, unreadable
      drop: [x-client-id]        # not recorded; a dropped x-request-id gives a fresh UUIDv7 prediction id
      mask: [traceparent]
    capture: redacted            # default mode: full | redacted | hash-only
    sample_rate: 1.0             # default share of predictions recorded
    routes:                      # first match wins; path is a glob on the request path
      - path: /v2/models/*/infer
        methods: [POST]
        capture: hash-only
        sample_rate: 0.1

Names match case-insensitively. A field name matches that key at any depth of a JSON body, a
KServe V2 tensor of that name (in ``inputs`` and ``outputs``: its data and its parameters), a
column of a single 2-D tensor that the model's KServe V2 metadata gives that name (its cells; a
dropped cell becomes null, so the tensor keeps its shape), and a ``dataframe_split`` column of
that name; a dotted name (``customer.email``) matches keys whose path ends with it, at any depth
(list levels are skipped: ``instances[0].customer.email``). A string value that is itself JSON is
parsed, redacted inside and serialised again. Headers: only those the sidecar records may be
named (:data:`RECORDED_HEADERS`); the request ids events record (``request_id``) follow the
stronger of the rules for the ``x-request-id`` header and for a top-level body field ``id``.

Modes: ``full`` records the body as sent (up to the size cap) and the headers as sent;
``redacted`` records the body with the policy applied, and nothing of a body that cannot be
parsed (or redacted) as JSON; ``hash-only`` records size and digest only. The digest always
covers the exact bytes exchanged: in ``full`` mode a plain SHA-256, where redaction applies a
keyed one (see :mod:`provline.sidecar.events`), so both of those modes need the redaction key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provline.sidecar.errors import PolicyError, RedactionError
from provline.sidecar.payload import KEYED_DIGEST_PREFIX, MAX_JSON_DEPTH, deeper_than

Mode = Literal["full", "redacted", "hash-only"]
Action = Literal["drop", "hash", "mask"]
MASK = "****"
KEYED_MODES: frozenset[Mode] = frozenset({"redacted", "hash-only"})  # where redaction applies: digests are keyed
RECORDED_HEADERS = ("x-request-id", "x-client-id", "traceparent")  # the request headers events record
_STRENGTH: dict[Action, int] = {"mask": 0, "hash": 1, "drop": 2}  # a name matched twice gets the stronger
_LOOKS_LIKE_JSON = re.compile(r'\s*[\[{"]')


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop: list[str] = Field(default_factory=list)
    hash: list[str] = Field(default_factory=list)
    mask: list[str] = Field(default_factory=list)


class _Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    methods: list[str] | None = None
    capture: Mode | None = None
    sample_rate: float | None = Field(None, ge=0.0, le=1.0)


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: _Fields = Field(default_factory=_Fields)
    outputs: _Fields = Field(default_factory=_Fields)
    headers: _Fields = Field(default_factory=_Fields)
    capture: Mode | None = None
    sample_rate: float | None = Field(None, ge=0.0, le=1.0)
    routes: list[_Route] = Field(default_factory=list)


@dataclass(frozen=True)
class FieldRules:
    """What to do with named fields of one direction (request or response bodies, or headers).

    Names are matched case-insensitively (``actions`` is kept case-folded); a dotted name also
    matches by the end of a key path (:meth:`action`).
    """

    actions: dict[str, Action] = field(default_factory=dict)
    # tensor name -> the names of its columns, from the model's metadata (payload.metadata_columns)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    _dotted: dict[str, tuple[tuple[tuple[str, ...], Action], ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        folded: dict[str, Action] = {}
        for name, action in self.actions.items():
            folded[name.casefold()] = _stronger(folded.get(name.casefold()), action)
        dotted: dict[str, list[tuple[tuple[str, ...], Action]]] = {}
        for name, action in folded.items():
            parts = tuple(name.split("."))
            if len(parts) > 1:
                dotted.setdefault(parts[-1], []).append((parts, action))
        object.__setattr__(self, "actions", folded)
        object.__setattr__(self, "_dotted", {last: tuple(rules) for last, rules in dotted.items()})

    @classmethod
    def of(cls, *, drop: Iterable[str] = (), hash: Iterable[str] = (), mask: Iterable[str] = ()) -> FieldRules:
        actions: dict[str, Action] = {}
        ordered: tuple[tuple[Action, Iterable[str]], ...] = (("mask", mask), ("hash", hash), ("drop", drop))
        for action, names in ordered:  # drop wins over hash, hash over mask
            for name in names:
                actions[name.casefold()] = action
        return cls(actions)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def naming(self, columns: dict[str, tuple[str, ...]]) -> FieldRules:
        """These rules, applied also to the columns of tensors ``columns`` names (tensor -> column names)."""
        return FieldRules(self.actions, columns)

    def named(self, name: str) -> Action | None:
        """The action for a tensor, column or header called ``name``."""
        return self.actions.get(name.casefold())

    def action(self, path: tuple[str, ...]) -> Action | None:
        """The action for the key at the end of ``path``: case-folded keys from the top, list levels skipped.

        The key's own name matches; a dotted name matches when ``path`` ends with its parts.
        """
        name = path[-1]
        found = self.actions.get(name)
        for parts, action in self._dotted.get(name, ()):
            if path[-len(parts):] == parts:
                found = _stronger(found, action)
        return found

    @property
    def needs_key(self) -> bool:
        return "hash" in self.actions.values()


def _stronger(first: Action | None, second: Action) -> Action:
    return second if first is None or _STRENGTH[second] > _STRENGTH[first] else first


@dataclass(frozen=True)
class RouteRule:
    pattern: str
    methods: frozenset[str] | None
    capture: Mode | None
    sample_rate: float | None

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and fnmatch.fnmatchcase(path, self.pattern)


@dataclass(frozen=True)
class RouteDecision:
    capture: Mode
    sample_rate: float


@dataclass(frozen=True)
class Policy:
    inputs: FieldRules = field(default_factory=FieldRules)
    outputs: FieldRules = field(default_factory=FieldRules)
    headers: FieldRules = field(default_factory=FieldRules)
    capture: Mode | None = None
    sample_rate: float | None = None
    routes: tuple[RouteRule, ...] = ()

    @property
    def needs_key(self) -> bool:
        """Whether the policy hashes fields or headers."""
        return self.inputs.needs_key or self.outputs.needs_key or self.headers.needs_key

    def key_needed(self, *, default_capture: Mode) -> str | None:
        """Why this policy needs the redaction key (with ``default_capture`` where it names no mode), or None."""
        if self.needs_key:
            return "hashes fields or headers"
        modes = {self.capture or default_capture} | {route.capture for route in self.routes if route.capture}
        keyed = sorted(modes & KEYED_MODES)
        if keyed:
            return f"records in {' and '.join(keyed)} mode, whose body digests are keyed"
        return None

    def request_id_action(self, body: FieldRules) -> Action | None:
        """How a recorded request id is redacted: the stronger of the ``headers`` rule for x-request-id and
        the ``body`` rule for a top-level ``id`` (a model server echoes one as the other)."""
        header, field_rule = self.headers.named("x-request-id"), body.action(("id",))
        if header is None or field_rule is None:
            return header or field_rule
        return _stronger(header, field_rule)

    def decide(self, method: str, path: str, *, default_capture: Mode, default_rate: float) -> RouteDecision:
        """Capture mode and sampling rate for one request: the first matching route, else the defaults."""
        capture = self.capture or default_capture
        rate = default_rate if self.sample_rate is None else self.sample_rate
        for route in self.routes:
            if route.matches(method, path):
                return RouteDecision(route.capture or capture, rate if route.sample_rate is None else route.sample_rate)
        return RouteDecision(capture, rate)


def parse_policy(text: str, *, source: str = "policy") -> Policy:
    """A :class:`Policy` from YAML text; PolicyError names the file and the faulty entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source} is not valid YAML: {exc}") from exc
    try:
        parsed = _PolicyFile.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(
            f"{source} is not a valid capture policy: {problems}. Allowed keys: inputs, outputs, headers "
            "(each with drop, hash, mask lists), capture, sample_rate, routes (path, methods, capture, sample_rate)"
        ) from exc
    headers = FieldRules.of(**parsed.headers.model_dump())
    unknown = sorted(set(headers.actions) - set(RECORDED_HEADERS))
    if unknown:
        raise PolicyError(
            f"{source}: headers names {', '.join(unknown)}, which the sidecar never records; it records only "
            f"{', '.join(RECORDED_HEADERS)}"
        )
    if headers.named("x-request-id") == "mask":
        raise PolicyError(
            f"{source}: headers masks x-request-id, which would give every prediction the same id; hash it "
            "(a keyed id, still joinable) or drop it (a fresh id each time)"
        )
    return Policy(
        inputs=FieldRules.of(**parsed.inputs.model_dump()),
        outputs=FieldRules.of(**parsed.outputs.model_dump()),
        headers=headers,
        capture=parsed.capture,
        sample_rate=parsed.sample_rate,
        routes=tuple(
            RouteRule(r.path, frozenset(m.upper() for m in r.methods) if r.methods else None, r.capture, r.sample_rate)
            for r in parsed.routes
        ),
    )


def load_policy(path: Path) -> Policy:
    """Read the policy file; PolicyError when it is missing or invalid (raised at start-up)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read the capture policy {path}: {exc}; check PROVLINE_CAPTURE__POLICY_FILE") from exc
    return parse_policy(text, source=str(path))


class Redactor:
    """Applies :class:`FieldRules` to parsed JSON documents and recorded headers; ``hash`` uses
    HMAC-SHA256 under ``key``, which also keys the body digests where redaction applies.

    Equal values give equal hashes under one key (joinable across events and workers), and
    without the key a hash reveals nothing, not even for short or guessable values.
    """

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    def digest_key(self, mode: Mode) -> bytes | None:
        """The key body digests are made with in ``mode``: None (a plain SHA-256) in ``full`` mode."""
        return self._key if mode in KEYED_MODES else None

    def keyed_hash(self, value: Any) -> str:
        if self._key is None:
            raise PolicyError("the capture policy hashes fields but no key is set; set PROVLINE_CAPTURE__REDACTION_KEY")
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
        return KEYED_DIGEST_PREFIX + hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def header(self, action: Action | None, value: str | None) -> str | None:
        """A recorded header value under ``action``: dropped (None), hashed, masked, or as it is."""
        if value is None or action is None:
            return value
        return None if action == "drop" else self._apply(action, value)

    def redact(self, document: Any, rules: FieldRules) -> Any:
        """A redacted copy of ``document``; the original is not changed.

        Raises RedactionError when a JSON string inside it nests past MAX_JSON_DEPTH (the document
        itself is bounded by :func:`~provline.sidecar.payload.parse_json`).
        """
        if not rules:
            return document
        return self._walk(document, (), rules, 0)

    def _apply(self, action: Action, value: Any) -> Any:
        return self.keyed_hash(value) if action == "hash" else MASK

    def _leaves(self, action: Action, value: Any) -> Any:
        """``action`` on every leaf of nested lists and objects, keeping their shape: tensor data and
        parameters, columns."""
        if isinstance(value, list):
            return [self._leaves(action, item) for item in value]
        if isinstance(value, dict):
            return {key: self._leaves(action, item) for key, item in value.items()}
        return self._apply(action, value)

    def _walk(self, node: Any, path: tuple[str, ...], rules: FieldRules, depth: int) -> Any:
        if isinstance(node, str):
            return self._string(node, path, rules, depth)
        if isinstance(node, list):
            out = []
            for item in node:
                if _is_tensor(item) and rules.named(item["name"]) == "drop":
                    continue
                out.append(self._walk(item, path, rules, depth + 1))
            return out
        if not isinstance(node, dict):
            return node
        tensor_action = rules.named(node["name"]) if _is_tensor(node) else None
        cell_actions = _tensor_column_actions(node, rules) if tensor_action is None and rules.columns else {}
        split_actions = _column_actions(node, rules)
        result: dict[str, Any] = {}
        for key, value in node.items():
            key_path = (*path, str(key).casefold())
            action = rules.action(key_path)
            if action == "drop":
                continue
            if action is not None:
                result[key] = self._apply(action, value)
            elif tensor_action is not None and key in ("data", "parameters"):
                result[key] = self._leaves(tensor_action, value)
            elif cell_actions and key == "data":
                result[key] = self._cells(value, cell_actions, len(rules.columns[node["name"]]))
            elif split_actions and key in ("columns", "data"):
                result[key] = self._split(key, value, split_actions)
            else:
                result[key] = self._walk(value, key_path, rules, depth + 1)
        return result

    def _string(self, text: str, path: tuple[str, ...], rules: FieldRules, depth: int) -> str:
        """A string that is itself JSON, redacted inside and serialised again; any other string as it is."""
        if not _LOOKS_LIKE_JSON.match(text):
            return text
        inner = _inner_json(text)
        if not isinstance(inner, _INNER_JSON):
            return text
        if depth >= MAX_JSON_DEPTH or deeper_than(inner, MAX_JSON_DEPTH - depth):
            raise RedactionError(f"JSON inside a string of the body nests deeper than {MAX_JSON_DEPTH} levels "
                                 "(MAX_JSON_DEPTH); it cannot be redacted")
        redacted = self._walk(inner, path, rules, depth + 1)
        if redacted == inner:
            return text
        return json.dumps(redacted, separators=(",", ":"), ensure_ascii=False)

    def _cells(self, data: Any, actions: dict[int, Action], width: int) -> Any:
        """Redact the columns of a 2-D tensor's data by position: rows of ``width`` values, or a flat list
        of them; a dropped cell becomes null, so the data keeps its shape."""
        if not isinstance(data, list):
            return self._apply("mask", data)  # malformed: do not risk leaking it
        out = []
        for index, item in enumerate(data):
            if isinstance(item, list):
                out.append([self._cell(actions.get(column), cell) for column, cell in enumerate(item)])
            else:
                out.append(self._cell(actions.get(index % width), item))
        return out

    def _cell(self, action: Action | None, value: Any) -> Any:
        if action is None:
            return value
        return None if action == "drop" else self._leaves(action, value)

    def _split(self, key: str, value: Any, actions: dict[int, Action]) -> Any:
        """Redact the columns of a ``dataframe_split`` (``columns`` names, ``data`` rows) by position."""
        dropped = {index for index, action in actions.items() if action == "drop"}
        if key == "columns":
            return [name for index, name in enumerate(value) if index not in dropped]
        if not isinstance(value, list):
            return self._apply("mask", value)
        rows = []
        for row in value:
            if not isinstance(row, list):
                rows.append(self._apply("mask", row))  # a malformed row: do not risk leaking it
                continue
            kept = []
            for index, cell in enumerate(row):
                action = actions.get(index)
                if action == "drop":
                    continue
                kept.append(cell if action is None else self._leaves(action, cell))
            rows.append(kept)
        return rows


_NOT_JSON = object()
_INNER_JSON = (dict, list, str)


def _inner_json(text: str) -> Any:
    """The JSON value ``text`` holds, or ``_NOT_JSON``."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:  # lone surrogates, NaN and the like, as parse_json reads them
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _is_tensor(node: Any) -> bool:
    """A KServe V2 tensor: a name, and data or a datatype (binary tensors carry no data)."""
    return isinstance(node, dict) and isinstance(node.get("name"), str) and ("data" in node or "datatype" in node)


def _tensor_column_actions(node: dict[str, Any], rules: FieldRules) -> dict[int, Action]:
    """Actions by column index for a tensor whose columns the model's metadata names."""
    names = rules.columns.get(node["name"]) if _is_tensor(node) else None
    found: dict[int, Action] = {}
    for index, name in enumerate(names or ()):
        action = rules.named(name)
        if action is not None:
            found[index] = action
    return found


def _column_actions(node: dict[str, Any], rules: FieldRules) -> dict[int, Action]:
    columns = node.get("columns")
    if not isinstance(columns, list) or "data" not in node:
        return {}
    found = {}
    for index, name in enumerate(columns):
        action = rules.named(str(name))
        if action is not None:
            found[index] = action
    return found
