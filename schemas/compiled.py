"""A generated Avro encoder per schema, for the hot path; fastavro stays the reference.

fastavro's generic writer walks the schema for every event and validates union branches by trial
(~15 µs for an InferenceRequest). For each current schema, :func:`compile_encoder` generates one plain
Python function that writes the fields in order into a bytearray (~6 µs). It takes only values of
the exact Python types whose Avro encoding is unambiguous; anything else (a subclass, a naive
datetime, an out-of-range number, a missing or extra field, a wrong type) raises NotFast and the
event goes through fastavro, which gives the same bytes or the error. A schema using any other
Avro type (enum, fixed, float, named references...) is not compiled at all.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Encoder = Callable[[Any, bytearray], None]
_INT_RANGES = {"int": (-(1 << 31), (1 << 31) - 1), "long": (-(1 << 63), (1 << 63) - 1)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class NotFast(Exception):
    """The compiled encoder does not take this value; fastavro decides."""


class _Unsupported(Exception):
    """The schema uses a type the compiler does not handle."""


def _write_long(n: int, out: bytearray) -> None:
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _timestamp_micros(value: Any) -> int:
    if type(value) is datetime and value.tzinfo is not None:  # fastavro reads a naive one as local time
        delta = value - _EPOCH
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    elif type(value) is int:
        micros = value
    else:
        raise NotFast
    low, high = _INT_RANGES["long"]
    if not low <= micros <= high:
        raise NotFast
    return micros


def _small_long(n: int) -> bytes:
    out = bytearray()
    _write_long(n, out)
    return bytes(out)


_SMALL_LONGS = tuple(_small_long(n) for n in range(8192))  # every one- and two-byte non-negative long


def encode_long(n: int) -> bytes:
    """Avro's zigzag varint of ``n``: a long or int, or the length of bytes and strings."""
    return _SMALL_LONGS[n] if 0 <= n < len(_SMALL_LONGS) else _small_long(n)

_GLOBALS = {
    "_SMALL_LONGS": _SMALL_LONGS, "NotFast": NotFast, "_write_long": _write_long,
    "_timestamp_micros": _timestamp_micros, "_pack_double": struct.Struct("<d").pack, "datetime": datetime,
    "NoneType": type(None),
}


class _Source:
    """The lines of one generated encoder and a supply of fresh local names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._names = 0

    def name(self) -> str:
        self._names += 1
        return f"v{self._names}"

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def compile_encoder(schema: Any) -> Encoder | None:
    """An encoder generated for ``schema`` (as parsed by fastavro), or None when it uses an unhandled type."""
    source = _Source()
    source.add(0, "def encode(value, out):")
    try:
        _emit(schema, "value", source, 1)
    except _Unsupported:
        return None
    namespace: dict[str, Any] = dict(_GLOBALS)
    name = schema.get("name", "value") if isinstance(schema, dict) else "value"
    exec(compile("\n".join(source.lines), f"<avro encoder of {name}>", "exec"), namespace)  # our own schemas
    return namespace["encode"]


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    if schema.get("logicalType") == "timestamp-micros" and schema.get("type") == "long":
        return "timestamp"
    if "logicalType" in schema:
        raise _Unsupported
    return schema["type"]


def _emit(schema: Any, var: str, src: _Source, ind: int) -> None:
    """Lines that check ``var`` and append its encoding to ``out``."""
    kind = _kind(schema)
    if kind == "null":
        src.add(ind, f"if {var} is not None: raise NotFast")
    elif kind == "boolean":
        src.add(ind, f"if {var} is True: out.append(1)")
        src.add(ind, f"elif {var} is False: out.append(0)")
        src.add(ind, "else: raise NotFast")
    elif kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        src.add(ind, f"if type({var}) is not int or not {low} <= {var} <= {high}: raise NotFast")
        _emit_long(var, src, ind)
    elif kind == "timestamp":
        src.add(ind, f"{var} = _timestamp_micros({var})")
        _emit_long(var, src, ind)
    elif kind == "double":
        src.add(ind, f"if type({var}) is not float and type({var}) is not int: raise NotFast")
        src.add(ind, f"out += _pack_double({var})")
    elif kind in ("string", "bytes"):
        src.add(ind, f"if type({var}) is not {'str' if kind == 'string' else 'bytes'}: raise NotFast")
        data, size = src.name(), src.name()
        src.add(ind, f"{data} = {var}.encode()" if kind == "string" else f"{data} = {var}")
        src.add(ind, f"{size} = len({data})")
        _emit_long(size, src, ind)
        src.add(ind, f"out += {data}")
    elif kind == "record":
        _emit_record(schema, var, src, ind)
    elif kind in ("array", "map"):
        src.add(ind, f"if type({var}) is not {'list' if kind == 'array' else 'dict'}: raise NotFast")
        size = src.name()
        src.add(ind, f"if {var}:")
        src.add(ind + 1, f"{size} = len({var})")
        _emit_long(size, src, ind + 1)
        item = src.name()
        if kind == "array":
            src.add(ind + 1, f"for {item} in {var}:")
            _emit(schema["items"], item, src, ind + 2)
        else:
            key = src.name()
            src.add(ind + 1, f"for {key}, {item} in {var}.items():")
            _emit("string", key, src, ind + 2)
            _emit(schema["values"], item, src, ind + 2)
        src.add(ind, "out.append(0)")
    elif kind == "union":
        _emit_union(schema, var, src, ind)
    else:
        raise _Unsupported


def _emit_long(var: str, src: _Source, ind: int) -> None:
    """Lines appending the Avro long in ``var``, from a table when it is a small size or count."""
    src.add(ind, f"if 0 <= {var} < {len(_SMALL_LONGS)}: out += _SMALL_LONGS[{var}]")
    src.add(ind, f"else: _write_long({var}, out)")


def _emit_record(schema: dict[str, Any], var: str, src: _Source, ind: int) -> None:
    fields = schema["fields"]
    names = {spec["name"] for spec in fields}
    # Fields the schema does not have: fastavro names them in its error (strict_allow_default).
    src.add(ind, f"if type({var}) is not dict or (len({var}) != {len(fields)} and not {names!r}.issuperset({var})):")
    src.add(ind + 1, "raise NotFast")
    for spec in fields:
        field = src.name()
        src.add(ind, f"if {spec['name']!r} in {var}:")
        src.add(ind + 1, f"{field} = {var}[{spec['name']!r}]")
        _emit(spec["type"], field, src, ind + 1)
        if "default" not in spec:
            src.add(ind, "else: raise NotFast")
            continue
        default = bytearray()
        encode = compile_encoder(spec["type"])
        try:
            if encode is None:
                raise _Unsupported
            encode(spec["default"], default)
        except NotFast:
            raise _Unsupported from None
        src.add(ind, "else:")  # as many keys as fields, one missing: is another one unknown?
        src.add(ind + 1, f"if not {names!r}.issuperset({var}): raise NotFast")
        src.add(ind + 1, f"out += {bytes(default)!r}")


# The Python types a branch takes, as fastavro validates them: booleans are not numbers.
_BRANCH_GUARDS = {
    "null": "{t} is NoneType", "boolean": "{t} is bool", "double": "{t} is float or {t} is int",
    "bytes": "{t} is bytes", "string": "{t} is str", "record": "{t} is dict", "map": "{t} is dict",
    "array": "{t} is list", "timestamp": "{t} is datetime or {t} is int",
    "int": "{t} is int and {low} <= {v} <= {high}", "long": "{t} is int and {low} <= {v} <= {high}",
}


def _emit_union(branches: list[Any], var: str, src: _Source, ind: int) -> None:
    """Branch on the value's exact type; fastavro takes the first branch that validates, so do we."""
    kinds = [_kind(branch) for branch in branches]
    if sum(kind in ("record", "map") for kind in kinds) > 1:
        raise _Unsupported  # fastavro's choice among several records depends on the fields present
    python_type = src.name()
    src.add(ind, f"{python_type} = type({var})")
    keyword = "if"
    for index, (branch, kind) in enumerate(zip(branches, kinds, strict=True)):
        if kind not in _BRANCH_GUARDS:
            raise _Unsupported
        low, high = _INT_RANGES.get(kind, (0, 0))
        src.add(ind, f"{keyword} {_BRANCH_GUARDS[kind].format(t=python_type, v=var, low=low, high=high)}:")
        tag = bytearray()
        _write_long(index, tag)
        src.add(ind + 1, f"out += {bytes(tag)!r}")
        if kind != "null":
            _emit(branch, var, src, ind + 1)
        keyword = "elif"
    src.add(ind, "else: raise NotFast")
