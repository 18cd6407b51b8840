"""Free disk for the embedded store, checked before it writes.

Qdrant Edge keeps its WAL and its appendable segments in sparse files that it memory-maps
(32 MiB WAL segments, 32 MiB vector chunks and payload pages, 4 MiB index pages): the blocks are
claimed when a page is first written through the map, and on a full disk that write is a
SIGBUS that kills the process without a message (issue 21), not an error Python can catch.
So before the store writes, the free space must cover what those files may still claim (their
apparent size less their allocated blocks) plus a margin for the files a write may create
(a new WAL segment, a new collection's ~200 MiB of sparse files): ``MEDIR_STORE__MIN_FREE_MB``.
Below that the write is refused with one :class:`~medir.errors.DiskFull` line, while there is
still room to remove a volume's pending points and flush what was written.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from medir.errors import DiskFull

MIB = 1 << 20
#: errno values of a full disk or quota (EFBIG: a file size limit, RLIMIT_FSIZE)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DISK_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def _appendable(segment: Path) -> bool:
    """A segment Qdrant still writes to (an optimized, immutable one is never extended)."""
    return any(segment.glob("mutable_id_tracker*"))


def claimable_bytes(root: Path) -> int:
    """Bytes the sparse files under ``root`` may still claim when written through their maps:
    every regular file's apparent size less its allocated blocks, in the WAL and in the
    appendable segments."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.basename(dirpath) == "segments":
            dirnames[:] = [d for d in dirnames if _appendable(Path(dirpath, d))]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:  # removed while walking
                continue
            if stat.S_ISREG(st.st_mode):
                total += max(st.st_size - st.st_blocks * 512, 0)
    return total


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the store folder may not exist yet)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def check_free(path: Path, min_free_mb: int, extra: int = 0) -> None:
    """Refuse (DiskFull) a write to the store at ``path`` when the free disk is below what its
    mapped files may still claim + ``min_free_mb`` MiB + ``extra`` bytes."""
    free = shutil.disk_usage(_existing(path)).free
    claim = claimable_bytes(path) if path.exists() else 0
    need = claim + min_free_mb * MIB + extra
    if free < need:
        raise DiskFull(
            f"disk full: {path}: {free // MIB} MiB free, the embedded store needs {need // MIB} "
            f"MiB before it writes ({claim // MIB} MiB its memory-mapped files may still claim"
            f"{f' + {extra // MIB} MiB for this operation' if extra else ''} + {min_free_mb} "
            "MiB MEDIR_STORE__MIN_FREE_MB); free disk space or move MEDIR_STORE_PATH")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or the engine's error text) says the disk is full."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_TEXT)


def disk_full_error(path: Path, exc: BaseException) -> DiskFull:
    """The one-line DiskFull of a write that failed for lack of space."""
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return DiskFull(f"disk full: {path}: a store write failed ({reason}); nothing of the "
                    "volume being written is visible; free disk space and ingest again")
