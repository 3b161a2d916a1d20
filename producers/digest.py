"""Content digests: streaming SHA-256 of files, and a Merkle root over a per-file manifest.

A dataset's digest depends only on its files' relative paths and contents: not on the order the
files are listed in, nor on the chunk size they are read with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from provline.schemas.integrity import merkle_root as tree_root

CHUNK_BYTES = 1 << 20

ProgressCallback = Callable[[int], None]


def file_sha256(path: Path, *, chunk_bytes: int = CHUNK_BYTES, progress: ProgressCallback | None = None) -> str:
    """Hex SHA-256 of a file, read in chunks (memory stays bounded for any file size).

    ``progress`` is called with the number of bytes of each chunk read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def list_files(root: Path) -> list[Path]:
    """The file itself, or every file under a directory, sorted."""
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


def manifest(root: Path, *, progress: ProgressCallback | None = None) -> list[dict[str, object]]:
    """Per-file entries (relative path, SHA-256, size) of a file or a directory tree, sorted by path."""
    root = Path(root)
    files = list_files(root)
    base = root.parent if root.is_file() else root
    return [
        {"path": p.relative_to(base).as_posix(), "sha256": file_sha256(p, progress=progress), "size": p.stat().st_size}
        for p in sorted(files, key=lambda p: p.relative_to(base).as_posix())
    ]


def merkle_root(entries: list[dict[str, object]]) -> str:
    """``sha256:<hex>`` root of a binary Merkle tree whose leaves are (path, sha256) pairs in path order."""
    leaves = [f"{e['path']}\0{e['sha256']}".encode() for e in sorted(entries, key=lambda entry: str(entry["path"]))]
    return "sha256:" + tree_root(leaves).hex()
