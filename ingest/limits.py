"""What a volume file may declare, and bounded decompression: the checks every reader makes
before it allocates or inflates anything (NIfTI and NRRD in :mod:`ingest.reader`, MetaImage in
:mod:`ingest.metaimage`)."""

from __future__ import annotations

import bz2
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.compression import GZIP_ERRORS, gzip_decompressor, zlib_decompressor
from medir.config import LimitsSettings
from medir.errors import VolumeError, exception_line

MAX_VOXELS = 1 << 34  # absolute ceiling, whatever the settings say
GZIP_SLACK = 1 << 20  # bytes a compressed stream may hold beyond the declared data
#: What a corrupt or truncated compressed stream raises (zlib, zlib-ng, bz2, gzip framing).
STREAM_ERRORS: tuple[type[BaseException], ...] = (zlib.error, *GZIP_ERRORS, OSError, EOFError,
                                                   ValueError)


DEFAULT_MAX_VOLUMES = LimitsSettings().max_volumes_per_file


@dataclass(frozen=True)
class Limits:
    """What a volume file may declare (the settings' ``limits`` group)."""

    max_voxels: int
    max_bytes: int
    max_volumes: int = DEFAULT_MAX_VOLUMES  # volumes of a 4D file

    @classmethod
    def of(cls, settings: LimitsSettings) -> Limits:
        """The size limits of the settings (``MEDIR_LIMITS__MAX_VOXELS``, ``__MAX_BYTES``,
        ``__MAX_VOLUMES_PER_FILE``), under the absolute ceiling."""
        return cls(min(settings.max_voxels, MAX_VOXELS), settings.max_bytes,
                   settings.max_volumes_per_file)


DEFAULT_LIMITS = Limits.of(LimitsSettings())


def check_declared_size(p: Path, shape: tuple[int, ...], itemsize: int,
                        limits: Limits | None = None) -> int:
    """Refuse a header whose declared voxels or bytes exceed the limits; the data bytes."""
    lim = limits or DEFAULT_LIMITS
    n_3d = int(np.prod(np.asarray(shape[:3], dtype=object)))
    n_all = int(np.prod(np.asarray(shape, dtype=object)))
    if n_3d > lim.max_voxels:
        dims = "x".join(str(d) for d in shape[:3])
        raise VolumeError(p, f"too large: the header declares {dims} = {n_3d} voxels per "
                             f"volume, the limit is {lim.max_voxels} (MEDIR_LIMITS__MAX_VOXELS)")
    nbytes = n_all * itemsize
    if nbytes > lim.max_bytes:
        raise VolumeError(p, f"too large: the header declares {nbytes} bytes of data, the limit "
                             f"is {lim.max_bytes} (MEDIR_LIMITS__MAX_BYTES)")
    return nbytes


def check_stream(p: Path, fobj: object, declared: int, kind: str, what: str = "data",
                 sink: Callable[[bytes], object] | None = None) -> None:
    """Decompress ``fobj`` (positioned at the stream) in bounded chunks, handing each chunk
    to ``sink`` (default: dropped): refuse a stream that yields more than ``declared`` bytes + a
    small slack (a decompression bomb) or fewer than ``declared`` (truncated). ``kind``: "gzip"
    (multi-member), "bz2", or "zlib" (one zlib or gzip stream, as ITK inflates MetaImage
    data)."""
    dec: Any = (bz2.BZ2Decompressor() if kind == "bz2"
                else zlib_decompressor() if kind == "zlib" else gzip_decompressor())
    bound = declared + GZIP_SLACK
    total = 0
    chunk = 1 << 20
    read = fobj.read  # type: ignore[attr-defined]

    def out(data: bytes) -> int:
        if sink is not None:
            sink(data)
        return len(data)

    try:
        while True:
            if isinstance(dec, bz2.BZ2Decompressor):
                if dec.eof:
                    break
                data = b"" if dec.needs_input is False else read(chunk)
                if not data and dec.needs_input:
                    break
                total += out(dec.decompress(data, max_length=chunk))
            else:
                if dec.eof:
                    rest = dec.unused_data
                    if kind == "gzip" and rest.startswith(b"\x1f\x8b"):  # another member
                        dec = gzip_decompressor()
                        total += out(dec.decompress(rest, chunk))
                        continue
                    break
                data = dec.unconsumed_tail or read(chunk)
                if not data:
                    break
                total += out(dec.decompress(data, chunk))
            if total > bound:
                raise VolumeError(p, f"decompression bomb: the compressed {what} yields more "
                                     f"than {bound} bytes, the header declares {declared}")
    except STREAM_ERRORS as exc:
        raise VolumeError(p, f"corrupt compressed {what} ({exception_line(exc)})") from None
    if total < declared:
        raise VolumeError(p, f"truncated: the header declares {declared} bytes of {what}, the "
                             f"compressed stream holds {total}")

