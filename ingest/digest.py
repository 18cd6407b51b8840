"""The sha256 of files' bytes: a volume's content identity, a sample's and a weight file's check."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time


def files_sha256(paths: Iterable[str | Path]) -> str:
    """Hex sha256 of the files' bytes one after the other (a MetaImage header and its data)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return files_sha256([path])
