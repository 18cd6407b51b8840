"""Uploaded volumes: name and size checks, a safe file name, saving, and validation by reading.

An upload is saved as ``<data_dir>/uploads/<sha256[:12]>/<safe name>``: the content hash keeps
two different files with the same name apart and makes re-uploads of the same file idempotent,
and the safe name (basename only, ``[A-Za-z0-9._-]``) keeps the user's name from choosing the
folder. An uploaded file is ingested as volume ``uploads/<sha256[:12]>/<name>``
(:func:`upload_source`), an id no folder ingest gives, so an upload never replaces an indexed
volume whatever its name. The saved
file is opened with :func:`ingest.reader.open_volume`, so a corrupt or unsupported file is
rejected with the reader's own reason before anything else runs.

A query upload of the Search page is patient data of one user, used once: it is written only
while its query runs (:func:`query_upload`), under ``<query_uploads>/<browser session>/``, a
folder outside every ingest root (``MEDIR_UI__QUERY_UPLOAD_DIR``, by default in the system's
temporary folder), private to this user (mode 0700) and marked so that no folder walk ingests it
(:data:`ingest.collection.PRIVATE_MARKER`); it is deleted when the answer is in, and whatever a
crash leaves behind is removed after ``MEDIR_UI__QUERY_UPLOAD_TTL_MIN`` minutes
(:func:`sweep_query_uploads`).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medir.config import Settings
from medir.errors import MedirError, VolumeError
from medir.ids import case_id_of
from runner.library import (
    PRIVATE_MARKER,
    VOLUME_SUFFIXES,
    Limits,
    VolumeSource,
    file_source,
    open_volume,
)

UPLOAD_TYPES = ("nii", "nii.gz", "gz", "nrrd")  # st.file_uploader matches the last suffix
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


# ---- query uploads ------------------------------------------------------------------------------
def query_upload_root(s: Settings) -> Path:
    """The query-upload folder of the settings, created private to this user and marked so that
    no walk ingests it. Raises :class:`UploadError` when it lies inside the data folder or an
    ingest root, or is not a private folder of this user (a link, another owner)."""
    base = s.query_uploads.expanduser().absolute()
    real = base.resolve()
    for root in (s.data_dir, *s.ui.ingest_roots):
        r = Path(root).expanduser().resolve()
        if real == r or real.is_relative_to(r):
            raise UploadError(f"the query upload folder {base} (MEDIR_UI__QUERY_UPLOAD_DIR) is "
                              f"inside the ingest root or data folder {r}; other users could "
                              "ingest the queries: choose a folder outside it")
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(base)
        mine = not stat.S_ISLNK(st.st_mode) and stat.S_ISDIR(st.st_mode) \
            and st.st_uid == os.getuid()
        if mine and st.st_mode & 0o077:
            os.chmod(base, 0o700)
        if mine:
            (base / PRIVATE_MARKER).touch(exist_ok=True)
    except OSError as exc:
        raise UploadError(f"cannot use the query upload folder {base} ({exc})") from None
    if not mine:
        raise UploadError(f"the query upload folder {base} (MEDIR_UI__QUERY_UPLOAD_DIR) is not "
                          "a private folder of this user (a link, or another owner); remove it "
                          "or choose another")
    return base


def sweep_query_uploads(base: Path, max_age_s: float, now: float | None = None) -> int:
    """Remove the query uploads under ``base`` not modified for ``max_age_s`` seconds, and the
    folders they leave empty (the marker stays); returns the number of files removed."""
    if not base.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - max_age_s
    removed = 0
    walked = list(os.walk(base, topdown=False))  # deepest first; links are not followed
    aged: dict[str, bool] = {}  # a folder's age before its files go (removing one touches it)
    for folder, _, _ in walked:
        try:
            aged[folder] = os.lstat(folder).st_mtime < cutoff
        except OSError:
            aged[folder] = False
    for folder, _, files in walked:
        here = Path(folder)
        for name in files:
            path = here / name
            if here == base and name == PRIVATE_MARKER:
                continue
            try:
                if os.lstat(path).st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:  # gone meanwhile, or not ours
                pass
        if here != base and aged[folder]:
            try:
                here.rmdir()  # only when empty
            except OSError:
                pass
    return removed


def _discard(path: Path, base: Path) -> None:
    """Delete a query upload and the folders it leaves empty, up to ``base``."""
    path.unlink(missing_ok=True)
    for folder in (path.parent, path.parent.parent):
        if folder == base or not folder.is_relative_to(base):
            break
        try:
            folder.rmdir()
        except OSError:  # another file is still there
            break


@contextmanager
def query_upload(name: str, data: bytes, s: Settings, session: str) -> Iterator[Path]:
    """A query upload saved and checked (:func:`save_upload`) in the browser session's folder
    for the duration of the ``with`` block, then deleted; uploads older than the age limit are
    swept first. Raises :class:`UploadError` with a one-line reason."""
    if not _SESSION.fullmatch(session):
        raise UploadError("bad browser session id for a query upload")
    base = query_upload_root(s)
    sweep_query_uploads(base, s.ui.query_upload_ttl_min * 60)
    folder = base / session
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        os.utime(folder)  # in use: not old enough for a sweep running meanwhile
    except OSError as exc:
        raise UploadError(f"cannot create the query upload folder {folder} ({exc})") from None
    try:
        path = save_upload(name, data, folder, s.ui.upload_limit_mb, Limits.of(s.limits))
    except OSError as exc:  # a full disk, a folder swept away meanwhile
        raise UploadError(f"{name}: cannot save the upload ({exc.strerror or exc})") from None
    try:
        yield path
    finally:
        _discard(path, base)
