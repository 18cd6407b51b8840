"""Sample members that are not NIfTI, converted to NIfTI with a RAS affine: NRRD (any declared
world space) and InVesalius projects (``.inv3``). Used by :mod:`ingest.samples`; the readers of
:mod:`ingest.reader` open NRRD directly and do not need this.
"""

from __future__ import annotations

import plistlib
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from ingest.sample_archives import atomic_sample_path
from medir.errors import VolumeError

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
    with atomic_sample_path(dest) as tmp:
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


