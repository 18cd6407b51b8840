"""Read NIfTI (3D/4D, .nii/.nii.gz) and NRRD files into canonical RAS :class:`Volume` objects.

Every failure is a :class:`~medir.errors.VolumeError` naming the file and the problem. A 4D
file yields one volume per index of its 4th axis (``<case>#<k>``), read one at a time through
nibabel's array proxy, so a large 4D file is never loaded whole.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from ingest.compression import HashingReader, open_gzip
from ingest.digest import file_sha256
from ingest.limits import (
    DEFAULT_LIMITS,
    GZIP_SLACK,
    STREAM_ERRORS,
    Limits,
    check_declared_size,
    check_stream,
)
from ingest.limits import (
    MAX_VOXELS as MAX_VOXELS,  # re-exported: ingest.dicom's scan limits
)
from ingest.volume import Volume
from medir.errors import VolumeError, exception_line
from medir.ids import case_id_of, with_index

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
METAIMAGE_SUFFIXES = (".mha", ".mhd")  # read by ingest/metaimage.py (SimpleITK)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + METAIMAGE_SUFFIXES


def is_volume_file(path: str | Path) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


@dataclass
class VolumeFile:
    """An opened, validated volume file: header facts, data not yet read."""

    path: Path
    case_id: str
    sha256: str
    shape: tuple[int, ...]  # spatial (3) + optional 4th axis
    affine: np.ndarray
    _proxy: object  # nibabel array proxy, or a numpy array for NRRD
    # Display and filter metadata of the source (DICOM Study/Series UIDs, Modality,
    # BodyPartExamined); copied into every slice's payload, never used for ranking.
    meta: dict[str, str] = field(default_factory=dict)
    # Problems repaired while reading (non-finite voxels), carried into each Volume's report.
    warnings: list[str] = field(default_factory=list)

    @property
    def n_volumes(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def is_4d(self) -> bool:
        return len(self.shape) == 4

    def volume_ids(self) -> list[str]:
        if not self.is_4d:
            return [self.case_id]
        return [with_index(self.case_id, k) for k in range(self.n_volumes)]

    def read(self, index: int | None = None) -> Volume:
        """Read one 3D volume (``index`` along the 4th axis for 4D files)."""
        if self.is_4d:
            if index is None or not 0 <= index < self.n_volumes:
                raise VolumeError(self.path, f"4D volume index {index} out of range "
                                             f"0..{self.n_volumes - 1}")
            raw, warns = _read_proxy(self.path, self._proxy, (..., index))
            vid = with_index(self.case_id, index)
        else:
            raw, warns = _read_proxy(self.path, self._proxy, ...)
            vid, index = self.case_id, None
        raw = raw.reshape(self.shape[:3])
        data, spacing = _to_canonical(self.path, raw, self.affine)
        del raw
        vol = Volume(vid, self.case_id, data, spacing, str(self.path), self.sha256, index,
                     meta=dict(self.meta))
        vol.warnings = [*self.warnings, *warns]
        return vol

    def __iter__(self) -> Iterator[Volume]:
        if self.is_4d:
            for k in range(self.n_volumes):
                yield self.read(k)
        else:
            yield self.read()


def open_volume(path: str | Path, limits: Limits | None = None) -> VolumeFile:
    """Open and validate a volume file (header only; data is read by :meth:`VolumeFile.read`).

    ``limits``: what a header may declare (the settings', :meth:`Limits.of`; None: the
    defaults)."""
    lim = limits or DEFAULT_LIMITS
    p = Path(path)
    if not p.exists():
        raise VolumeError(p, "no such file")
    if p.is_dir():
        raise VolumeError(p, "is a directory, not a volume file")
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        raise VolumeError(p, "not a regular file")
    if st.st_size == 0:
        raise VolumeError(p, "empty file")
    lower = p.name.lower()
    if lower.endswith(NRRD_SUFFIXES):
        return _open_nrrd(p, lim)
    if lower.endswith(NIFTI_SUFFIXES):
        return _open_nifti(p, lim)
    if lower.endswith(METAIMAGE_SUFFIXES):
        from ingest.metaimage import read_metaimage_header

        sha, size, affine, pixels = read_metaimage_header(p, lim)
        return VolumeFile(p, case_id_of(p), sha, size, affine, pixels)
    raise VolumeError(p, f"unsupported file type (expected one of {', '.join(VOLUME_SUFFIXES)})")


def read_volumes(path: str | Path, limits: Limits | None = None) -> Iterator[Volume]:
    """All 3D volumes of a file (one, or one per index of a 4D file)."""
    yield from open_volume(path, limits)


# ---------------------------------------------------------------------------------------------
def _spatial_shape(path: Path, shape: tuple[int, ...],
                   lim: Limits | None = None) -> tuple[int, ...]:
    """Validate dimensionality: 3D or 4D (trailing axes of length 1 are dropped), and a 4D
    file's volume count against the limits (from the header, before anything is read or a
    volume id is made)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if any(d == 0 for d in dims):
        raise VolumeError(path, f"an axis has length zero (shape {tuple(shape)})")
    if len(dims) < 3:
        raise VolumeError(path, f"{len(dims)}D image (shape {tuple(shape)}); expected a 3D or "
                                "4D volume")
    if len(dims) > 4:
        raise VolumeError(path, f"{len(dims)}D image (shape {tuple(shape)}); only 3D and 4D "
                                "volumes are supported")
    cap = (lim or DEFAULT_LIMITS).max_volumes
    if len(dims) == 4 and dims[3] > cap:
        raise VolumeError(path, f"too many volumes: the header declares {dims[3]} volumes "
                                f"(4th axis), the limit is {cap} "
                                "(MEDIR_LIMITS__MAX_VOLUMES_PER_FILE)")
    return tuple(dims)


def _check_affine(path: Path, affine: np.ndarray, zooms: tuple[float, ...]) -> None:
    if not np.all(np.isfinite(affine)):
        raise VolumeError(path, "the orientation matrix (affine) contains NaN or Inf")
    bad = [float(z) for z in zooms[:3] if not np.isfinite(z) or z <= 0]
    if bad:
        raise VolumeError(path, f"non-positive or non-finite voxel spacing {tuple(zooms[:3])}")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(norms <= 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(path, "degenerate orientation matrix (zero voxel size along an axis)")


def _open_nifti(p: Path, lim: Limits) -> VolumeFile:
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for garbage
        raise VolumeError(p, f"not a readable NIfTI file ({exception_line(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(p, f"not a NIfTI image ({type(img).__name__})")
    shape = _spatial_shape(p, tuple(int(s) for s in img.shape), lim)
    header_zooms = _raw_pixdim(p, img)
    gz = _check_size(p, img, shape, lim)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(p, affine, header_zooms)
    if gz is None:
        return VolumeFile(p, case_id_of(p), file_sha256(p), shape, affine, img.dataobj)
    sha, decoded = gz
    return VolumeFile(p, case_id_of(p), sha, shape, affine,
                      _GzipNiftiProxy(p, img.dataobj, decoded))


class _GzipNiftiProxy:
    """nibabel's array proxy over a ``.nii.gz`` (see :mod:`ingest.compression`): the same voxels
    and scaling as ``img.dataobj``. The first read takes the bytes the opening pass decompressed
    (``decoded``, then released); any other read decompresses the file again through zlib-ng,
    the file open only while a volume is read."""

    def __init__(self, path: Path, dataobj: Any,  # a nibabel ArrayProxy
                 decoded: io.BytesIO | None = None) -> None:
        self.path = path
        self.spec = (dataobj.shape, dataobj.dtype, dataobj.offset, dataobj.slope, dataobj.inter)
        self.order = dataobj.order
        self._decoded = decoded

    def __getitem__(self, index: object) -> np.ndarray:
        decoded, self._decoded = self._decoded, None
        if decoded is not None:
            with decoded:
                proxy = nib.arrayproxy.ArrayProxy(decoded, self.spec, mmap=False,
                                                  order=self.order)
                return np.asarray(proxy[index])
        with open_gzip(self.path) as fh:
            proxy = nib.arrayproxy.ArrayProxy(fh, self.spec, order=self.order)
            return np.asarray(proxy[index])


#: A 3D .nii.gz up to this many decompressed bytes keeps them from the opening pass for its
#: read (one decompression); a larger or 4D one is decompressed again when read, so that
#: opening never holds more than this (4D files are read one volume at a time).
ONE_PASS_MAX_BYTES = 1 << 30
_READ_ERRORS: tuple[type[BaseException], ...] = (*STREAM_ERRORS, gzip.BadGzipFile, OverflowError,
                                                 TypeError, IndexError)


def _check_size(p: Path, img: nib.Nifti1Image | nib.Nifti2Image, shape: tuple[int, ...],
                lim: Limits) -> tuple[str, io.BytesIO | None] | None:
    """Reject headers whose declared data exceeds the limits or cannot be in the file (before
    reading any data). A .nii.gz stream is decompressed once, bounded, while its compressed
    bytes are hashed: returns the file's sha256 and, for a 3D file up to
    :data:`ONE_PASS_MAX_BYTES`, the decompressed file (else None); None for a .nii."""
    try:
        itemsize = np.dtype(img.get_data_dtype()).itemsize
    except TypeError:
        raise VolumeError(p, "unsupported voxel type in the header") from None
    nbytes = check_declared_size(p, shape, itemsize, lim)
    offset = int(img.header.get("vox_offset", 352))
    needed = offset + nbytes
    if not p.name.lower().endswith(".gz"):
        if needed > p.stat().st_size:
            raise VolumeError(p, f"truncated: the header declares {needed} bytes, the file has "
                                 f"{p.stat().st_size}")
        return None
    keep = io.BytesIO() if len(shape) == 3 and needed <= ONE_PASS_MAX_BYTES else None
    with open(p, "rb") as fh:
        src = HashingReader(fh)
        check_stream(p, src, needed, "gzip", "file", keep.write if keep is not None else None)
        return src.hexdigest(), keep


def _raw_pixdim(p: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> tuple[float, ...]:
    """The voxel sizes as written in the file (nibabel silently replaces bad ones on load)."""
    try:
        with nib.openers.ImageOpener(str(p)) as fobj:
            raw = type(img.header).from_fileobj(fobj, check=False)
        dims = int(raw["dim"][0])
        return tuple(float(z) for z in raw["pixdim"][1:1 + min(max(dims, 3), 3)])
    except Exception as exc:
        raise VolumeError(p, f"unreadable NIfTI header ({exception_line(exc)})") from None


def _open_nrrd(p: Path, lim: Limits) -> VolumeFile:
    import nrrd

    try:
        with open(p, "rb") as fh:
            header = nrrd.read_header(fh)
            data_offset = fh.tell()
    except Exception as exc:
        raise VolumeError(p, f"not a readable NRRD header ({exception_line(exc)})") from None
    try:
        sizes = tuple(int(s) for s in np.asarray(header["sizes"]).reshape(-1))
        dtype = nrrd.reader._determine_datatype(header)
    except Exception as exc:
        raise VolumeError(p, f"bad NRRD header ({exception_line(exc)})") from None
    shape = _spatial_shape(p, sizes, lim)
    nbytes = check_declared_size(p, shape, dtype.itemsize, lim)
    data_path = _nrrd_data_file(p, header)
    offset = 0 if data_path is not None else data_offset
    src = data_path or p
    inflated = _check_nrrd_data(p, src, header, offset, nbytes, lim)
    try:
        if inflated is not None:  # compressed: the bounded pass's output, not pynrrd's
            data = _nrrd_array(header, dtype, inflated)
        else:
            with open(p, "rb") as fh:
                header = nrrd.read_header(fh)
                if data_path is not None:  # the checked, resolved file, not the header's text
                    header.pop("datafile", None)
                    header["data file"] = str(data_path)
                data = nrrd.read_data(header, fh, str(p))
    except Exception as exc:
        raise VolumeError(p, f"not a readable NRRD file ({exception_line(exc)})") from None
    shape = _spatial_shape(p, tuple(int(s) for s in data.shape), lim)
    affine = nrrd_affine(p, header, len(shape))
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    _check_affine(p, affine, zooms)
    return VolumeFile(p, case_id_of(p), file_sha256(p), shape, affine,
                      np.asarray(data).reshape(shape))


def _nrrd_data_file(p: Path, header: dict) -> Path | None:
    """The detached data file of an NRRD header, checked: one relative file name, inside the
    header's own folder (after resolving links), a regular file. None when attached.

    Both spellings pynrrd reads are checked (it prefers ``datafile``); a header with both is
    refused rather than guessed at."""
    if "datafile" in header and "data file" in header:
        raise VolumeError(p, "NRRD header has both 'datafile' and 'data file'")
    raw = header.get("datafile", header.get("data file"))
    if raw is None:
        return None
    name = str(raw).strip()
    if not name or name.upper().startswith("LIST") or len(name.split()) > 1 or "%" in name:
        raise VolumeError(p, f"NRRD detached data {name!r}: only a single data file is "
                             "supported (no LIST or numbered file series)")
    if os.path.isabs(name) or name.startswith("~"):
        raise VolumeError(p, f"NRRD detached data {name!r} is an absolute path; it must be a "
                             "file next to the header")
    folder = p.resolve().parent
    try:
        target = (p.parent / name).resolve(strict=True)
    except (OSError, RuntimeError):
        raise VolumeError(p, f"NRRD detached data {name!r} does not exist") from None
    if not target.is_relative_to(folder):
        raise VolumeError(p, f"NRRD detached data {name!r} is outside the header's folder")
    if not stat.S_ISREG(target.stat().st_mode):
        raise VolumeError(p, f"NRRD detached data {name!r} is not a regular file")
    return target


def _nrrd_skips(header: dict) -> tuple[int, int]:
    """(line skip, byte skip) with pynrrd's precedence of the two spellings of each."""
    lines = header.get("lineskip", header.get("line skip", 0)) or 0
    skip = header.get("byteskip", header.get("byte skip", 0)) or 0
    return int(lines), int(skip)


def _check_nrrd_data(p: Path, src: Path, header: dict, offset: int, nbytes: int,
                     lim: Limits) -> bytearray | None:
    """The data's size against what the header declares, before anything is allocated.
    Compressed data is inflated here, once and bounded, and returned (the byte skip applies
    to the inflated bytes, as in pynrrd); None for raw and text data, which pynrrd reads."""
    encoding = str(header.get("encoding", "raw")).lower()
    size = src.stat().st_size
    lines, skip = _nrrd_skips(header)
    if lines < 0 or skip < -1:
        raise VolumeError(p, f"negative NRRD line skip {lines} or byte skip {skip}")
    if encoding == "raw":
        needed = offset + max(skip, 0) + nbytes
        if needed > size:
            raise VolumeError(p, f"truncated: the header declares {nbytes} bytes of data, "
                                 f"{src.name} holds {max(size - offset, 0)}")
        return None
    if encoding in ("gzip", "gz", "bzip2", "bz2"):
        declared = nbytes + max(skip, 0)
        if declared > lim.max_bytes:
            raise VolumeError(p, f"too large: {declared} bytes to inflate, the limit is "
                                 f"{lim.max_bytes} (MEDIR_LIMITS__MAX_BYTES)")
        out = bytearray()
        with open(src, "rb") as fh:
            fh.seek(offset)
            for _ in range(lines):
                fh.readline(1 << 20)
            check_stream(p, fh, declared, "bz2" if encoding.startswith("bz") else "gzip",
                         sink=out.extend)
        return out
    if encoding in ("ascii", "text", "txt"):
        # ~ 1 to 25 characters per voxel; anything larger is not this header's data
        if size - offset > 32 * nbytes + GZIP_SLACK or size - offset > lim.max_bytes:
            raise VolumeError(p, f"text data of {size - offset} bytes for {nbytes} declared")
        return None
    raise VolumeError(p, f"unsupported NRRD encoding {encoding!r}")


def _nrrd_array(header: dict, dtype: np.dtype, inflated: bytearray) -> np.ndarray:
    """The array of inflated NRRD data, laid out as ``nrrd.read_data`` lays it out (sizes in
    Fortran order, index_order "F"), without a copy."""
    sizes = tuple(int(s) for s in np.asarray(header["sizes"]).reshape(-1))
    count = int(np.prod(np.asarray(sizes, dtype=object)))
    _, skip = _nrrd_skips(header)
    start = len(inflated) - count * dtype.itemsize if skip == -1 else skip
    data = np.frombuffer(inflated, dtype, count=count, offset=start)
    return data.reshape(sizes[::-1]).T


def nrrd_affine(path: Path, header: dict, ndim: int) -> np.ndarray:
    """RAS affine from an NRRD header (``space directions``, ``space origin``, ``space``).

    Lenient, since it reads whatever a user gives: the first three spatial directions are the
    axes, and a ``space`` other than LPS or LAS is taken as RAS (the sample conversion's
    :func:`ingest.sample_convert.nrrd_affine_and_axes` refuses an unknown one).
    """
    affine = np.eye(4)
    dirs = header.get("space directions")
    if dirs is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in dirs
                if d is not None and not np.all(np.isnan(np.asarray(d, dtype=np.float64)))]
        if len(rows) < 3:
            raise VolumeError(path, "NRRD header has fewer than 3 spatial 'space directions'")
        affine[:3, :3] = np.stack(rows[:3], axis=1)
    elif "spacings" in header:
        affine[:3, :3] = np.diag(np.asarray(header["spacings"], dtype=np.float64)[:3])
    origin = header.get("space origin")
    if origin is not None:
        affine[:3, 3] = np.asarray(origin, dtype=np.float64)[:3]
    space = str(header.get("space", "right-anterior-superior")).lower()
    flip = np.ones(3)
    if space in ("left-posterior-superior", "lps"):
        flip[:2] = -1
    elif space in ("left-anterior-superior", "las"):
        flip[0] = -1
    affine[:3, :] *= flip[:, None]
    return affine


MAX_NONFINITE_FRACTION = 0.5


def _read_proxy(path: Path, proxy: object, index: object) -> tuple[np.ndarray, list[str]]:
    """The voxels (in the file's type), and warnings: a few NaN/Inf voxels (registration
    tools write NaN outside the field of view) become the volume's background, the minimum
    finite value."""
    try:
        arr = np.asarray(proxy[index])  # type: ignore[index]
    except MemoryError:
        raise VolumeError(path, "the header declares more voxels than fit in memory") from None
    except _READ_ERRORS as exc:
        raise VolumeError(path, f"truncated or corrupt data ({exception_line(exc)})") from None
    if arr.dtype.kind not in "biuf":
        raise VolumeError(path, f"unsupported voxel type {arr.dtype}")
    # No float32 copy here: _to_canonical casts while it reorients (one full-size copy, not two)
    warns: list[str] = []
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            if n_bad > MAX_NONFINITE_FRACTION * finite.size or n_bad == finite.size:
                raise VolumeError(path, f"{n_bad} of {finite.size} voxels are NaN or Inf "
                                        f"(more than {MAX_NONFINITE_FRACTION:.0%})")
            if not arr.flags.writeable:
                arr = arr.copy()
            background = float(arr[finite].min())
            arr[~finite] = background
            warns.append(f"{n_bad} NaN/Inf voxels set to the background value {background:g}")
            log.warning("%s: %s", path, warns[-1])
        del finite
    return arr, warns


def _to_canonical(
    path: Path, raw: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient to RAS, return (Z, Y, X) axial slices (anterior up, right on the left)."""
    ornt = io_orientation(affine)
    if np.any(np.isnan(ornt)):
        raise VolumeError(path, "orientation matrix cannot be mapped to RAS axes")
    ras = apply_orientation(raw, ornt)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    out = [0.0, 0.0, 0.0]
    for i in range(3):
        out[int(ornt[i, 0])] = float(zooms[i])
    sp = (out[0], out[1], out[2])
    # RAS+: x grows towards the patient's right, y anterior, z superior; slice k is
    # ras[:, :, k]. Rows: anterior at the top (flip y). Columns: radiological convention,
    # the patient's right on the image's left (flip x).
    zyx = np.ascontiguousarray(np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1], dtype=np.float32)
    return zyx, sp

