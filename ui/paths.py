"""Server-side folders the UI may ingest from: only inside the configured ``ui.ingest_roots``.

A user types a folder path; it is accepted only when its fully resolved location (``..`` and
symlinks followed) lies inside one of the resolved roots, and not inside a private folder (the
query uploads: other users' patient data). Relative paths are taken relative to the first root,
never to the server's working directory. Pure functions, no Streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medir.errors import MedirError


class PathNotAllowed(MedirError):
    """A server-side path outside the configured ingest roots (or otherwise unusable)."""


def resolved_roots(roots: Sequence[Path]) -> list[Path]:
    """The ingest roots as absolute, symlink-free paths (roots that do not exist are kept)."""
    return [Path(r).expanduser().resolve() for r in roots]


def resolve_in_roots(raw: str, roots: Sequence[Path], private: Sequence[Path] = ()) -> Path:
    """The existing folder or volume file ``raw`` names, if it lies inside an ingest root and
    outside every ``private`` folder.

    Raises :class:`PathNotAllowed` for an empty input, a path outside every root (including
    ``..`` tricks and symlinks pointing out of a root), a path inside a private folder, or a
    path that does not exist.
    """
    text = raw.strip()
    if not text:
        raise PathNotAllowed("enter a folder path")
    if "\x00" in text:
        raise PathNotAllowed("the path contains a NUL character")
    allowed = resolved_roots(roots)
    if not allowed:
        raise PathNotAllowed("no ingest roots are configured (set MEDIR_UI__INGEST_ROOTS)")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = allowed[0] / candidate
    target = candidate.resolve()
    if not any(target == root or target.is_relative_to(root) for root in allowed):
        raise PathNotAllowed(
            f"{text!r} is outside the allowed ingest folders ({', '.join(map(str, allowed))})"
        )
    for folder in resolved_roots(private):
        if target == folder or target.is_relative_to(folder):
            raise PathNotAllowed(f"{text!r} is a private folder (query uploads), never ingested")
    if not target.exists():
        raise PathNotAllowed(f"{text!r} does not exist")
    return target
