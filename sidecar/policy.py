"""The capture policy: which fields to redact, how much of each route to capture, what to sample.

Pure logic apart from :func:`load_policy`, which reads the YAML file::

    inputs:                      # request bodies
      drop: [ssn]                # removed
      hash: [customer_id]        # replaced by HMAC-SHA256 under PROVLINE_CAPTURE__REDACTION_KEY: joinable, unreadable
      mask: [phone]              # replaced by "****"
    outputs:                     # response bodies
      drop: [internal_score]
    capture: redacted            # default mode: full | redacted | hash-only
    sample_rate: 1.0             # default share of predictions recorded
    routes:                      # first match wins; path is a glob on the request path
      - path: /v2/models/*/infer
        methods: [POST]
        capture: hash-only
        sample_rate: 0.1

A field name matches that key at any depth of a JSON body, a KServe V2 tensor of that name, and
a ``dataframe_split`` column of that name; a dotted name (``customer.email``) matches that path
of keys from the top (list levels are skipped).

Modes: ``full`` records the body as sent (up to the size cap); ``redacted`` records the body with
the policy applied, and nothing of a body that cannot be parsed as JSON; ``hash-only`` records
size and SHA-256 only. The hash always covers the exact bytes exchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provline.sidecar.errors import PolicyError

Mode = Literal["full", "redacted", "hash-only"]
Action = Literal["drop", "hash", "mask"]
MASK = "****"
HASH_PREFIX = "hmac-sha256:"


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
    capture: Mode | None = None
    sample_rate: float | None = Field(None, ge=0.0, le=1.0)
    routes: list[_Route] = Field(default_factory=list)


@dataclass(frozen=True)
class FieldRules:
    """What to do with named fields of one direction (request or response bodies)."""

    actions: dict[str, Action] = field(default_factory=dict)

    @classmethod
    def of(cls, *, drop: Iterable[str] = (), hash: Iterable[str] = (), mask: Iterable[str] = ()) -> FieldRules:
        actions: dict[str, Action] = {}
        ordered: tuple[tuple[Action, Iterable[str]], ...] = (("mask", mask), ("hash", hash), ("drop", drop))
        for action, names in ordered:  # drop wins over hash, hash over mask
            for name in names:
                actions[name] = action
        return cls(actions)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def action(self, name: str, path: str) -> Action | None:
        return self.actions.get(path) or self.actions.get(name)

    @property
    def needs_key(self) -> bool:
        return "hash" in self.actions.values()


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
    capture: Mode | None = None
    sample_rate: float | None = None
    routes: tuple[RouteRule, ...] = ()

    @property
    def needs_key(self) -> bool:
        return self.inputs.needs_key or self.outputs.needs_key

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
            f"{source} is not a valid capture policy: {problems}. Allowed keys: inputs, outputs "
            "(each with drop, hash, mask lists), capture, sample_rate, routes (path, methods, capture, sample_rate)"
        ) from exc
    return Policy(
        inputs=FieldRules.of(**parsed.inputs.model_dump()),
        outputs=FieldRules.of(**parsed.outputs.model_dump()),
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
    """Applies :class:`FieldRules` to parsed JSON documents; ``hash`` uses HMAC-SHA256 under ``key``.

    Equal values give equal hashes under one key (joinable across events and workers), and
    without the key a hash reveals nothing, not even for short or guessable values.
    """

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    def keyed_hash(self, value: Any) -> str:
        if self._key is None:
            raise PolicyError("the capture policy hashes fields but no key is set; set PROVLINE_CAPTURE__REDACTION_KEY")
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return HASH_PREFIX + hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def redact(self, document: Any, rules: FieldRules) -> Any:
        """A redacted copy of ``document``; the original is not changed."""
        if not rules:
            return document
        return self._walk(document, "", rules)

    def _apply(self, action: Action, value: Any) -> Any:
        return self.keyed_hash(value) if action == "hash" else MASK

    def _leaves(self, action: Action, value: Any) -> Any:
        """``action`` on every element of a (nested) list, keeping its shape: tensor data and columns."""
        if isinstance(value, list):
            return [self._leaves(action, item) for item in value]
        return self._apply(action, value)

    def _walk(self, node: Any, path: str, rules: FieldRules) -> Any:
        if isinstance(node, list):
            out = []
            for item in node:
                if _is_tensor(item) and rules.action(str(item["name"]), "") == "drop":
                    continue
                out.append(self._walk(item, path, rules))
            return out
        if not isinstance(node, dict):
            return node
        tensor_action = rules.action(str(node["name"]), "") if _is_tensor(node) else None
        split_actions = _column_actions(node, rules)
        result: dict[str, Any] = {}
        for key, value in node.items():
            key_path = f"{path}.{key}" if path else str(key)
            action = rules.action(str(key), key_path)
            if action == "drop":
                continue
            if action is not None:
                result[key] = self._apply(action, value)
            elif tensor_action is not None and key == "data":
                result[key] = self._leaves(tensor_action, value)
            elif split_actions and key in ("columns", "data"):
                result[key] = self._split(key, value, split_actions)
            else:
                result[key] = self._walk(value, key_path, rules)
        return result

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


def _is_tensor(node: Any) -> bool:
    return isinstance(node, dict) and "data" in node and isinstance(node.get("name"), str)


def _column_actions(node: dict[str, Any], rules: FieldRules) -> dict[int, Action]:
    columns = node.get("columns")
    if not isinstance(columns, list) or "data" not in node:
        return {}
    found = {}
    for index, name in enumerate(columns):
        action = rules.action(str(name), "")
        if action is not None:
            found[index] = action
    return found
