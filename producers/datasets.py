"""Describe a dataset — a file, a directory, a pandas DataFrame or a pyarrow Table — as the
fields of a DatasetVersion event: content digest, file manifest, schema, row count, profiles.

Files are read as streams (memory bounded); CSV and Parquet files are profiled, other files are
digested only. In-memory tables are digested over a canonical Arrow IPC encoding of their
data, so the same rows give the same digest however they are chunked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from provline.producers.digest import ProgressCallback, list_files, manifest, merkle_root
from provline.producers.profile import Profile, profile_batches, profile_table

log = logging.getLogger("provline.datasets")

PROFILED_SUFFIXES = (".csv", ".parquet", ".pq")


def _file_batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]] | None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(path)
        return reader.schema, iter(reader)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        return parquet.schema_arrow, parquet.iter_batches()
    return None


def profile_files(paths: list[Path]) -> Profile | None:
    """One profile over files of one schema, read as streams; None if no file can be profiled."""
    opened = []
    for path in paths:
        batches = _file_batches(path) if path.suffix.lower() in PROFILED_SUFFIXES else None
        if batches is not None:
            opened.append((path, batches))
    if not opened:
        return None
    schema = opened[0][1][0]
    if any(not batches[0].equals(schema) for _, batches in opened[1:]):
        log.warning("files of dataset have different schemas; profiling %s only", opened[0][0])
        opened = opened[:1]

    def all_batches() -> Iterator[pa.RecordBatch]:
        for _, (_, batches) in opened:
            yield from batches

    try:
        return profile_batches(schema, all_batches())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        log.warning("dataset could not be profiled (%s); recorded with digest only", exc)
        return None


def table_digest(table: pa.Table) -> str:
    """SHA-256 over the table's rows in one canonical Arrow IPC stream (schema metadata removed)."""
    canonical = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, canonical.schema) as writer:
        for batch in canonical.to_batches():
            writer.write_batch(batch)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(
        f"a dataset is a file or directory path, a pandas DataFrame or a pyarrow Table, not {type(data).__name__}"
    )


def describe(data: str | Path | Any, *, name: str, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """The content fields of a DatasetVersion for ``data``."""
    if isinstance(data, str | Path):
        root = Path(data)
        if not root.exists():
            raise FileNotFoundError(f"dataset {name!r}: {root} does not exist")
        entries = manifest(root, progress=progress)
        profile = profile_files(list_files(root))
        source = str(root)
    else:
        table = _as_table(data)
        entries = [{"path": f"{name}.arrow", "sha256": table_digest(table), "size": table.nbytes}]
        profile = profile_table(table)
        source = f"memory:{type(data).__module__.split('.')[0]}"
    fields: dict[str, Any] = {"digest": merkle_root(entries), "files": entries, "sources": [source]}
    if profile is not None:
        fields.update(columns=profile.columns, schema_fingerprint=profile.schema_fingerprint,
                      row_count=profile.row_count, profiles=profile.profiles)
    return fields


PROGRESS_MIN_BYTES = 256 << 20


@contextmanager
def digest_progress(data: Any, name: str) -> Iterator[ProgressCallback | None]:
    """A rich progress bar for digesting files of at least ``PROGRESS_MIN_BYTES``, else nothing."""
    if not isinstance(data, str | Path) or not Path(data).exists():
        yield None
        return
    total = sum(p.stat().st_size for p in list_files(Path(data)))
    if total < PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(f"digesting {name}", total=total)
        yield lambda advance: bar.advance(task, advance)
