"""Slice geometry of a DICOM series: each frame's position and orientation, the stack's checks
and its RAS affine.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the two ImageOrientationPatient direction cosines), never by file name or InstanceNumber.
DICOM patient coordinates are LPS; the affine is converted to RAS. Pure functions of the
header values: nothing here reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medir.errors import VolumeError

# Geometry tolerances (general, not tuned to any sample).
ORTHO_TOL = 1e-3  # |row . col| and | |row| - 1 | of ImageOrientationPatient
SAME_ORIENTATION_TOL = 1e-3  # max abs difference of direction cosines
CLUSTER_TOL = 1e-2  # orientations further apart than this are different planes (localizers)
TILT_TOL = 1e-2  # in-plane drift of the positions per mm along the normal (~0.6 degrees)
SPACING_REL_TOL = 0.01  # steps may differ from the median by 1 % ...
SPACING_ABS_TOL = 0.01  # ... or 0.01 mm, whichever is larger
DUPLICATE_TOL = 1e-3  # mm: two slices closer than this along the normal are duplicates


@dataclass(frozen=True)
class Frame:
    """One 2D slice: where its pixels are (instance, frame) and its geometry."""

    instance: int  # index into the series' instances
    frame: int | None  # frame of a multi-frame object, None for a single-frame one
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, float] | None  # PixelSpacing: (row spacing, column spacing)
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: float | None


def _floats(value: Any, n: int, what: str, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise VolumeError(name, f"unreadable {what}") from None
    if len(out) != n or not all(np.isfinite(out)):
        raise VolumeError(name, f"{what} must be {n} finite numbers, got {list(value)}")
    return out


def _item(seq_owner: Dataset | None, seq: str) -> Dataset | None:
    if seq_owner is None or seq not in seq_owner:
        return None
    items = seq_owner.get(seq)
    return items[0] if items else None


def frames_of_dataset(index: int, ds: Dataset, name: str) -> list[Frame]:
    """The frames of one header (``index``: its instance in the series): a single frame, an
    enhanced multi-frame object's per-frame functional groups, or a legacy multi-frame stack
    (GridFrameOffsetVector); a hostile or missing value raises :class:`VolumeError`."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise VolumeError(name, f"image size {rows}x{cols}")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    thickness = _opt_float(ds.get("SpacingBetweenSlices")) or _opt_float(ds.get("SliceThickness"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:  # enhanced multi-frame: functional groups
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        if len(per_frame) != n_frames:
            raise VolumeError(name, f"{len(per_frame)} per-frame groups for {n_frames} frames")
        frames = []
        for k, group in enumerate(per_frame):
            def pick(seq: str, attr: str, group: Dataset = group) -> Any:
                for owner in (group, shared):
                    item = _item(owner, seq)
                    if item is not None and attr in item:
                        return item.get(attr)
                return None
            pos = _floats(pick("PlanePositionSequence", "ImagePositionPatient"), 3,
                          "ImagePositionPatient", name)
            ori = _floats(pick("PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                          "ImageOrientationPatient", name)
            sp = _floats(pick("PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing", name)
            th = _opt_float(pick("PixelMeasuresSequence", "SpacingBetweenSlices")) or \
                _opt_float(pick("PixelMeasuresSequence", "SliceThickness")) or thickness
            slope = _opt_float(pick("PixelValueTransformationSequence", "RescaleSlope"))
            icpt = _opt_float(pick("PixelValueTransformationSequence", "RescaleIntercept"))
            frames.append(Frame(index, k, _xyz(pos), ori, _pair(sp), rows, cols,
                                1.0 if slope is None else slope,
                                0.0 if icpt is None else icpt, th))
        return frames
    pos = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", name)
    ori = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", name)
    sp = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", name)
    slope = _opt_float(ds.get("RescaleSlope"))
    icpt = _opt_float(ds.get("RescaleIntercept"))
    s = 1.0 if slope is None else slope
    b = 0.0 if icpt is None else icpt
    if n_frames > 1:  # legacy multi-frame without functional groups: a stack at one position
        frames_offsets = ds.get("GridFrameOffsetVector")
        if frames_offsets is None or pos is None or ori is None:
            raise VolumeError(name, f"multi-frame object ({n_frames} frames) without per-frame "
                                    "positions")
        offsets = _floats(frames_offsets, n_frames, "GridFrameOffsetVector", name) or ()
        normal = np.cross(np.asarray(ori[:3]), np.asarray(ori[3:]))
        return [Frame(index, k, _xyz(tuple(np.asarray(pos) + normal * off)), ori, _pair(sp),
                      rows, cols, s, b, thickness) for k, off in enumerate(offsets)]
    return [Frame(index, None, _xyz(pos), ori, _pair(sp), rows, cols, s, b, thickness)]


def _xyz(v: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    return None if v is None else (float(v[0]), float(v[1]), float(v[2]))


def _pair(v: tuple[float, ...] | None) -> tuple[float, float] | None:
    return None if v is None else (float(v[0]), float(v[1]))


def _opt_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None



@dataclass(frozen=True)
class Geometry:
    order: list[int]  # frame indices from the lowest to the highest position along the normal
    affine: np.ndarray  # RAS, voxel (column, row, slice) -> mm


def stack_geometry(frames: list[Frame], label: str) -> Geometry:
    """Validate the slice stack and compute its RAS affine; raise VolumeError if inconsistent."""
    if not frames:
        raise VolumeError(label, "no image slices")
    sizes = {(f.rows, f.cols) for f in frames}
    if len(sizes) > 1:
        raise VolumeError(label, f"mixed image sizes {sorted(sizes)}")
    missing = sum(1 for f in frames if f.position is None or f.orientation is None)
    if missing:
        raise VolumeError(label, f"{missing} of {len(frames)} slices have no "
                                 "ImagePositionPatient/ImageOrientationPatient "
                                 "(not a volume in patient coordinates)")
    spacings = {f.spacing for f in frames}
    if None in spacings:
        raise VolumeError(label, "slices without PixelSpacing")
    if len(spacings) > 1:
        raise VolumeError(label, f"mixed pixel spacings {sorted(s for s in spacings if s)}")
    ori = np.asarray([f.orientation for f in frames], dtype=np.float64)
    if np.max(np.abs(ori - ori[0])) > SAME_ORIENTATION_TOL:
        raise VolumeError(label, "mixed ImageOrientationPatient within the series")
    row, col = ori[0, :3], ori[0, 3:]
    if (abs(np.linalg.norm(row) - 1) > ORTHO_TOL or abs(np.linalg.norm(col) - 1) > ORTHO_TOL
            or abs(float(row @ col)) > ORTHO_TOL):
        raise VolumeError(label, f"ImageOrientationPatient {list(ori[0])} is not two "
                                 "orthogonal unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    pos = np.asarray([f.position for f in frames], dtype=np.float64)
    dist = pos @ normal
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    dist_sorted = dist[order]
    steps = np.diff(dist_sorted)
    if len(steps) and float(np.min(steps)) < DUPLICATE_TOL:
        n_dup = int(np.sum(steps < DUPLICATE_TOL))
        raise VolumeError(label, f"{n_dup} duplicate slice positions (several echoes, phases or "
                                 "acquisitions in one series)")
    ps = frames[0].spacing
    assert ps is not None
    if min(ps) <= 0:
        raise VolumeError(label, f"non-positive PixelSpacing {list(ps)}")
    if len(steps):
        median = float(np.median(steps))
        tol = max(SPACING_REL_TOL * median, SPACING_ABS_TOL)
        worst = float(np.max(np.abs(steps - median)))
        if worst > tol:
            raise VolumeError(label, f"non-uniform slice spacing: steps from {steps.min():.3f} "
                                     f"to {steps.max():.3f} mm (missing slices?)")
        rel = pos[order] - pos[order[0]]
        along = rel @ normal
        drift = np.linalg.norm(rel - np.outer(along, normal), axis=1)
        if float(np.max(drift - TILT_TOL * np.abs(along))) > SPACING_ABS_TOL:
            angle = float(np.degrees(np.arctan2(drift[-1], abs(along[-1]))))
            raise VolumeError(label, f"slice positions are not along the slice normal "
                                     f"(gantry tilt or shear of {angle:.1f} degrees)")
        step = float(dist_sorted[-1] - dist_sorted[0]) / len(steps)
    else:
        th = frames[0].thickness
        if th is None or th <= 0:
            raise VolumeError(label, "a single slice without SliceThickness or "
                                     "SpacingBetweenSlices")
        step = th
    lps = np.eye(4)
    lps[:3, 0] = row * ps[1]  # along a row: the column index grows, column spacing
    lps[:3, 1] = col * ps[0]  # down a column: the row index grows, row spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[order[0]]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return Geometry(order, ras)


__all__ = [
    "CLUSTER_TOL",
    "DUPLICATE_TOL",
    "ORTHO_TOL",
    "SAME_ORIENTATION_TOL",
    "SPACING_ABS_TOL",
    "SPACING_REL_TOL",
    "TILT_TOL",
    "Frame",
    "Geometry",
    "frames_of_dataset",
    "stack_geometry",
]
