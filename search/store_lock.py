"""The embedded store's process lock: one medir process at a time opens a store folder.

The embedded engines (Qdrant Edge, qdrant-client's local mode) are single-process: a second
process that loads a store folder another process is writing replays and rewrites its segment
journals before it notices the engine's own lock, and the holder then fails on its next flush
(issue 21). So every opener takes an exclusive ``flock`` on ``<store>/.medir-store.lock``
*before* anything touches the store's files, and keeps it until it closes the store.

A second process waits its turn for a bounded time (``MEDIR_STORE__LOCK_WAIT_S``), saying so
once, then gives up with one :class:`~medir.errors.StoreUnavailable` line naming the holder's
pid; it never reads, deletes or rewrites the holder's files. The kernel drops the lock when the
holder's process ends, even by SIGKILL, so a crash never leaves the store locked.

``flock`` locks belong to one open file, so two openers inside one process exclude each other
too (the UI serialises its requests before they get here; a worker opens the store once).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

from medir.errors import StoreUnavailable

LOCK_NAME = ".medir-store.lock"
POLL_S = 0.05  # how often a waiting opener retries the lock

log = logging.getLogger(__name__)


class StoreLock:
    """The exclusive lock on one store folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, folder: str | Path, wait_s: float = 0.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait_s = max(float(wait_s), 0.0)
        self._fh: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def holder(self) -> str:
        """The pid the holder wrote into the lock file ("?" while it is being written)."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return "?"
        return text if text.isdigit() else "?"

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait_s`` for another process to release it.

        Raises :class:`StoreUnavailable` (one line) when the folder cannot be locked or the
        holder does not let go in time; nothing in the folder is touched but the lock file.
        """
        if self._fh is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="ascii")  # noqa: SIM115 - held until release
        except OSError as exc:
            raise StoreUnavailable(f"store {self.folder}: cannot create its lock file "
                                   f"{LOCK_NAME} ({exc.strerror or exc})") from None
        try:
            self._wait(fh)
        except BaseException:
            fh.close()
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def _wait(self, fh: IO[str]) -> None:
        deadline = time.monotonic() + self.wait_s
        said = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:  # a file system without flock (some network mounts)
                raise StoreUnavailable(f"store {self.folder}: cannot lock {LOCK_NAME} "
                                       f"({exc.strerror or exc})") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable(
                    f"store {self.folder} is in use by another medir process (pid "
                    f"{self.holder()}); gave up after {self.wait_s:g} s "
                    "(MEDIR_STORE__LOCK_WAIT_S): try again when it has finished, or go "
                    "through the queue or a Qdrant server") from None
            if not said:
                log.warning("store %s is in use by another medir process (pid %s); "
                            "waiting up to %g s…", self.folder, self.holder(), self.wait_s)
                said = True
            time.sleep(min(POLL_S, left))

    def release(self) -> None:
        """Let the next process in (closing the file drops the lock)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
