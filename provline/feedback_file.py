"""Files of ground truth for ``provline feedback import``: CSV or Parquet rows into ``POST /v1/feedback`` items.

Pure apart from reading the file. A row becomes an item with its id (a prediction id or a client
request id, by ``id_kind``), its label and/or outcome and the import's source; a row whose cells
cannot make one becomes a :class:`RowProblem` and is never sent. The API checks items again
(:func:`provline.producers.feedback.feedback_item`), so a file can never send what the API refuses.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from provline.producers.feedback import InvalidFeedbackError, feedback_fields

IdKind = Literal["prediction", "client-request"]
ID_FIELDS: dict[str, str] = {"prediction": "prediction_id", "client-request": "client_request_id"}
PARQUET_BATCH_ROWS = 10_000


class FeedbackFileError(ValueError):
    """The file cannot be imported at all (format, missing column); the message says what to change."""


@dataclass(frozen=True)
class RowProblem:
    """A row that was not sent, or that the API did not accept: its 1-based number, id and why."""

    row: int
    id: str
    status: str  # invalid, not_found
    reason: str


def _columns_present(path: Path, found: list[str], wanted: list[str]) -> None:
    missing = [name for name in wanted if name not in found]
    if missing:
        raise FeedbackFileError(f"{path.name} has no column {', '.join(map(repr, missing))}; "
                                f"its columns are {', '.join(map(repr, found))}")


def read_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of a CSV (``.csv``, header row) or Parquet (``.parquet``/``.pq``) file, as dicts of the
    wanted ``columns``. Streams: a Parquet file is read a record batch at a time. Blocks on the file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            _columns_present(path, list(reader.fieldnames or []), columns)
            for row in reader:
                yield {name: row.get(name) for name in columns}
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        _columns_present(path, list(parquet.schema_arrow.names), columns)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()
    else:
        raise FeedbackFileError(f"{path.name}: feedback files are .csv or .parquet")


def _cell(value: Any) -> Any:
    """An empty CSV cell, a null or NaN is no value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _outcome(value: Any) -> Any:
    value = _cell(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise InvalidFeedbackError(f"outcome {value[:40]!r} is not a number") from None
    return value


def row_item(row: dict[str, Any], *, id_column: str, id_kind: IdKind, label_column: str | None,
             outcome_column: str | None, source: str) -> dict[str, Any]:
    """The API item of one row; InvalidFeedbackError when its cells cannot make one."""
    identifier = _cell(row.get(id_column))
    if identifier is not None and not isinstance(identifier, str):
        identifier = str(identifier)
    if isinstance(identifier, str):
        identifier = identifier.strip()
    label = _cell(row.get(label_column)) if label_column else None
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # a class stored as a float column
    if label is not None and not isinstance(label, str | int):
        label = str(label)
    outcome = _outcome(row.get(outcome_column)) if outcome_column else None
    fields = feedback_fields(**{ID_FIELDS[id_kind]: identifier}, label=label, outcome=outcome, source=source)
    item: dict[str, Any] = {ID_FIELDS[id_kind]: identifier, "source": source}
    if fields["label"] is not None:
        item["label"] = fields["label"]
    if fields["outcome"] is not None:
        item["outcome"] = fields["outcome"]
    return item


def file_items(path: Path, *, id_column: str, id_kind: IdKind, label_column: str | None,
               outcome_column: str | None, source: str) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    """(1-based row number, item or problem) of every row of the file. Blocks on the file."""
    if not label_column and not outcome_column:
        raise FeedbackFileError("name a --label-column or an --outcome-column (or both)")
    columns = [id_column] + [c for c in (label_column, outcome_column) if c]
    for number, row in enumerate(read_rows(path, columns), start=1):
        try:
            yield number, row_item(row, id_column=id_column, id_kind=id_kind, label_column=label_column,
                                   outcome_column=outcome_column, source=source)
        except InvalidFeedbackError as exc:
            yield number, RowProblem(number, str(row.get(id_column) or ""), "invalid", str(exc))
