"""Name a model server's positional columns by the model's signature. Pure, no I/O.

A server that takes one unnamed tensor reports positional names: the sidecar records a KServe V2
tensor ``input-0`` of four values as ``input-0[0]`` .. ``input-0[3]`` (a 1-D value as ``input-0``),
and outputs as ``predict``, ``output-0`` or ``output``. When the registered ModelVersion knows the
signature's names (:attr:`~provline.stream_processors.lineage.ModelRecord.input_names` and
``output_names``), :func:`named_row` puts them on the row, so traces and drift speak of
``sepal_length`` rather than ``input-0[0]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

V = TypeVar("V")
_ELEMENT = re.compile(r"^(?P<tensor>.*)\[(?P<index>\d+)\]$")  # the sidecar's name of a tensor's i-th value


def positional_order(columns: Sequence[str]) -> list[str]:
    """``columns`` in the order of the values they stand for: tensors in the order they first appear,
    each tensor's values by index (``x[2]`` before ``x[10]``)."""
    first_seen: dict[str, int] = {}
    keys: list[tuple[int, int, str]] = []
    for column in columns:
        match = _ELEMENT.match(column)
        tensor, index = (match["tensor"], int(match["index"])) if match else (column, -1)
        keys.append((first_seen.setdefault(tensor, len(first_seen)), index, column))
    return [column for _, _, column in sorted(keys)]


def named_row(row: Mapping[str, V], names: Sequence[str]) -> dict[str, V]:
    """``row`` with its positional columns renamed to the signature ``names`` they stand for.

    Columns already named by the signature stay as they are; the other columns are positional and
    take, in :func:`positional_order`, the signature names not yet present. When their counts differ
    (or ``names`` is empty or repeats a name) the row is returned unchanged: a wrong name is worse
    than a positional one. The renamed columns keep their place among the named ones.
    """
    if not names or len(set(names)) != len(names):
        return dict(row)
    wanted = set(names)
    positional = positional_order([column for column in row if column not in wanted])
    free = [name for name in names if name not in row]
    if not positional or len(positional) != len(free):
        return dict(row)
    renamed = dict(zip(positional, free, strict=True))
    return {renamed.get(column, column): value for column, value in row.items()}
