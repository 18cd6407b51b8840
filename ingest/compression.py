"""gzip through zlib-ng: the same format as :mod:`zlib`, decompressed 2–3× faster.

A 3D ``.nii.gz`` is read in one pass over the file: the bounded decompression that refuses a
decompression bomb or a truncated stream also hashes the compressed bytes (:class:`HashingReader`:
the file's sha256, its content identity) and keeps the decompressed bytes, from which nibabel
then reads the voxels (``ingest.reader``). Before, the file was read three times (the bounded
check, the sha256, the voxels) and decompressed twice, most of a 300-slice CT query's read time.
zlib-ng (``python-zlib-ng``, the maintained bindings used by xopen and cutadapt) is
API-compatible with :mod:`zlib` and :mod:`gzip`; nibabel still interprets the header and the
data layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any, cast

from zlib_ng import gzip_ng, zlib_ng

#: Errors a corrupt zlib/gzip stream raises (zlib-ng's own class is not :class:`zlib.error`).
GZIP_ERRORS: tuple[type[BaseException], ...] = (cast(type[BaseException], zlib_ng.error),
                                                gzip_ng.BadGzipFile)


def gzip_decompressor() -> Any:
    """An incremental decompressor for one gzip member (``zlib.decompressobj`` semantics)."""
    return zlib_ng.decompressobj(16 + zlib_ng.MAX_WBITS)


def zlib_decompressor() -> Any:
    """An incremental decompressor for one zlib or gzip stream (header detected, as zlib's
    ``inflateInit2(47)`` in ITK's MetaIO)."""
    return zlib_ng.decompressobj(32 + zlib_ng.MAX_WBITS)


def open_gzip(path: str | Path) -> IO[bytes]:
    """A gzip file opened for reading (seekable, multi-member)."""
    return gzip_ng.open(path, "rb")


class HashingReader:
    """A binary file read through: the sha256 of every byte read (``read`` only)."""

    def __init__(self, fobj: IO[bytes], chunk: int = 1 << 20) -> None:
        self._fobj = fobj
        self._chunk = chunk
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fobj.read(size)
        self._digest.update(data)
        return data

    def hexdigest(self) -> str:
        """The sha256 of the whole file: what was read, then the rest (bytes after the
        compressed stream, which its reader leaves unread)."""
        while block := self._fobj.read(self._chunk):
            self._digest.update(block)
        return self._digest.hexdigest()
