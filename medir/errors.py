"""Typed errors. Every error a user can cause is a :class:`MedirError` with one clear line."""

from __future__ import annotations

from pathlib import Path


class MedirError(Exception):
    """Base class of every error medir reports to users (CLI exit code 2, one line)."""


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
