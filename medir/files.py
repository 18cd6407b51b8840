"""Writing files whole or not at all, the one way medir does it: a temporary file in the
target's folder, flushed to disk, then renamed over the target (``os.replace`` is atomic on
POSIX within one file system), so a reader never sees half a file and a crash leaves the old
one (or none)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path, *, suffix: str = ".part", mode: int | None = None
                ) -> Iterator[Path]:
    """A temporary path next to ``target`` for the caller (or a library) to write; it replaces
    ``target`` when the block ends without an error, and is removed when it does not.

    ``suffix`` ends the temporary name (a library that picks its format from the name, such
    as nibabel, needs the target's suffixes); ``mode`` sets its permissions (``mkstemp``
    makes 0600).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Persist the rename itself (best effort: not every file system lets a folder sync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(target: str | Path, text: str, *, mode: int | None = None) -> None:
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_text(text)
