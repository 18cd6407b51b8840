"""Typed errors. Every error a user can cause is a :class:`MedirError` with one clear line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class MedirError(Exception):
    """Base class of every error medir reports to users (CLI exit code 2, one line)."""


def exception_line(exc: BaseException) -> str:
    """An exception as one short line, its type and the first line of its message: how a
    library's error (nibabel, pydicom, zlib, ...) reads inside a medir message, never a
    traceback or a multi-line value."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class VolumeError(MedirError):
    """A file that cannot be used as a volume. The message names the file and the problem."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnknownModel(MedirError, ValueError):
    """A model name that is not in the registry."""


class ModelUnavailable(MedirError):
    """A known model whose weights are not on this machine (and cannot be fetched)."""


class ModelMismatch(MedirError):
    """A query against a collection built with another model or model version."""


class EmptyStore(MedirError):
    """A query against a store (or collection) holding no searchable volume."""


class StoreUnavailable(MedirError):
    """The vector store cannot be reached or is locked by another process (transient)."""


class DiskFull(MedirError):
    """Too little free disk to write safely (the message names the path and the sizes)."""


class ConfigError(MedirError):
    """An invalid option or setting."""


class QueueUnavailable(MedirError):
    """Redis or the Celery worker cannot be reached (queue mode)."""


# ---- the error table: one place that says how each kind of error is shown -----------------
@dataclass(frozen=True)
class ErrorKind:
    """How the edges show one kind of error: the CLI's exit status, and the UI's title (bold,
    before the message), hint (after it), level (``error`` or ``warning``) and icon."""

    exit_code: int = 2
    title: str = ""
    hint: str = ""
    level: str = "error"
    icon: str = ":material/warning:"


#: Most specific first; a MedirError not listed is a plain one-line error, exit status 2.
ERROR_TABLE: dict[type[MedirError], ErrorKind] = {
    QueueUnavailable: ErrorKind(title="Worker not running or queue unavailable.",
                                icon=":material/power_off:"),
    EmptyStore: ErrorKind(title="The store is empty.", level="warning",
                          hint="Open **Ingest** in the sidebar to add volumes.",
                          icon=":material/inbox:"),
    ModelMismatch: ErrorKind(title="Model mismatch.", icon=":material/explore_off:"),
    StoreUnavailable: ErrorKind(title="Store unavailable.", icon=":material/lock:"),
}
#: What an error that is not a MedirError (a bug) is shown as.
UNEXPECTED = ErrorKind(exit_code=1, title="Unexpected error:", icon=":material/error:")


def error_kind(exc: BaseException) -> ErrorKind:
    """The table's entry for ``exc`` (its nearest listed class), :data:`UNEXPECTED` for an
    exception that is not a :class:`MedirError`."""
    if not isinstance(exc, MedirError):
        return UNEXPECTED
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return ErrorKind()


def error_named(kind: str, message: str) -> MedirError:
    """A :class:`MedirError` of the subclass named ``kind`` (a worker's error, rebuilt on the
    client from its class name and message); a plain MedirError for an unknown name."""
    classes = {c.__name__: c for c in _subclasses(MedirError)}
    cls = classes.get(kind, MedirError)
    exc = cls.__new__(cls)
    MedirError.__init__(exc, message)
    if isinstance(exc, VolumeError):
        exc.path, _, exc.reason = message.partition(": ")
    return exc


def _subclasses(cls: type[MedirError]) -> list[type[MedirError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out

