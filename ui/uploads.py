"""Uploaded volumes: name and size checks, a safe file name, saving, and validation by reading.

An upload is saved as ``<data_dir>/uploads/<sha256[:12]>/<safe name>``: the content hash keeps
two different files with the same name apart and makes re-uploads of the same file idempotent,
and the safe name (basename only, ``[A-Za-z0-9._-]``) keeps the user's name from choosing the
folder. An uploaded file is ingested as volume ``uploads/<sha256[:12]>/<name>``
(:func:`upload_source`), an id no folder ingest gives, so an upload never replaces an indexed
volume whatever its name. The saved
file is opened with :func:`ingest.reader.open_volume`, so a corrupt or unsupported file is
rejected with the reader's own reason before anything else runs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from medir.errors import MedirError, VolumeError
from medir.ids import case_id_of
from runner.library import VOLUME_SUFFIXES, Limits, VolumeSource, file_source, open_volume

UPLOAD_TYPES = ("nii", "nii.gz", "gz", "nrrd")  # st.file_uploader matches the last suffix
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadError(MedirError):
    """An uploaded file that cannot be used (wrong type, too large, unreadable)."""


def volume_suffix(name: str) -> str | None:
    """The volume suffix of ``name`` (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``) or None."""
    lower = name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return None


def safe_name(name: str) -> str:
    """A file name without folders or unusual characters, keeping the volume suffix."""
    base = re.split(r"[\\/]", name)[-1]
    suffix = volume_suffix(base) or ""
    stem = base[: len(base) - len(suffix)] if suffix else base
    stem = _UNSAFE.sub("_", stem).strip("._") or "volume"
    return f"{stem[:80]}{suffix.lower()}"


def check_upload(name: str, size: int, limit_mb: int) -> None:
    """Reject a file by its name and size alone (before writing anything)."""
    if volume_suffix(name) in (None, ".nhdr"):
        raise UploadError(
            f"{name}: not a NIfTI or NRRD volume (expected .nii, .nii.gz or .nrrd; a detached "
            ".nhdr header cannot be uploaded alone)"
        )
    if size == 0:
        raise UploadError(f"{name}: the file is empty")
    if size > limit_mb * 1024 * 1024:
        raise UploadError(
            f"{name}: {size / 1024 / 1024:.1f} MB is over the upload limit of {limit_mb} MB "
            "(MEDIR_UI__UPLOAD_LIMIT_MB)"
        )


def save_upload(name: str, data: bytes, dest_dir: Path, limit_mb: int,
                limits: Limits | None = None) -> Path:
    """Check, save and validate an uploaded volume; returns the saved path (``limits``: what
    the file may declare, the settings').

    Raises :class:`UploadError` with a one-line reason; a file that fails validation is removed.
    """
    check_upload(name, len(data), limit_mb)
    dest_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = dest_dir / digest / safe_name(name)
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    try:
        _check_self_contained(path)
        open_volume(path, limits)
    except VolumeError as exc:
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:  # another file shares the folder
            pass
        raise UploadError(f"{name}: {exc.reason}") from None
    return path


def _check_self_contained(path: Path) -> None:
    """An upload holds its own data: an NRRD naming a detached data file is refused (it would
    read a file of the server's choosing, or of the uploader's)."""
    if volume_suffix(path.name) != ".nrrd":
        return
    import nrrd

    try:
        with open(path, "rb") as fh:
            header = nrrd.read_header(fh)
    except Exception as exc:
        raise VolumeError(path, f"not a readable NRRD header ({type(exc).__name__})") from None
    if "data file" in header or "datafile" in header:
        raise VolumeError(path, "an uploaded NRRD must hold its data (attached); this header "
                                "names a detached data file")


def upload_dir(data_dir: Path) -> Path:
    """Where uploads are kept (the query files and files submitted for ingest)."""
    return data_dir / "uploads"


def upload_source(path: Path) -> VolumeSource:
    """The ingest source of a saved upload: volume id ``uploads/<sha256[:12]>/<name>``."""
    return file_source(path, f"uploads/{path.parent.name}/{case_id_of(path)}")
