"""DICOM series → canonical RAS volumes, read with pydicom (and its pylibjpeg/GDCM plugins).

The folder walker (``ingest/collection.py``) hands every file that looks like DICOM to
:func:`scan_dicom`, which groups them by SeriesInstanceUID, reads headers only
(``stop_before_pixels``), and returns one :class:`DicomSeries` per usable image series plus one
:class:`Skipped` per file or series left out, with its reason. :meth:`DicomSeries.open` returns a
:class:`ingest.reader.VolumeFile` whose ``read()`` gives the same canonical RAS
:class:`~ingest.volume.Volume` as the NIfTI of the same data; pixel data is decoded only then.

Series can also be built from in-memory pydicom datasets (:func:`series_from_datasets`, used by
the DICOMweb ingest), so nothing retrieved from a PACS has to touch the disk.

Geometry: slices are ordered by ImagePositionPatient projected on the slice normal (the cross
product of the two ImageOrientationPatient direction cosines), never by file name or
InstanceNumber. DICOM patient coordinates are LPS; the affine is converted to RAS.
Only display metadata is kept (:data:`META_KEYS`); no patient-identifying attribute is ever
copied into a payload, a message or a log.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ingest.digest import file_sha256
from ingest.reader import VolumeFile, _read_proxy, _to_canonical
from ingest.volume import Volume
from medir.errors import VolumeError

# Reasons a file is left out of an ingest, counted in the ingest summary (``kind``).
UNKNOWN_TYPE = "unknown type"
NON_IMAGE_DICOM = "non-image DICOM"
BAD_FILE = "bad file"
DUPLICATE = "duplicate"
INCONSISTENT_SERIES = "inconsistent series"
LOCALIZER = "localizer"
UNSAFE_PATH = "unsafe path"
UNSUPPORTED_IMAGE = "unsupported image"  # colour, 2D projection (no patient geometry), ...

# The only attributes copied out of a DICOM header (display and filters, never ranking).
META_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined")

# What pydicom raises on hostile header values (bad VRs, numbers that are not numbers, ...).
_HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)

# Geometry tolerances (general, not tuned to any sample).
ORTHO_TOL = 1e-3  # |row . col| and | |row| - 1 | of ImageOrientationPatient
SAME_ORIENTATION_TOL = 1e-3  # max abs difference of direction cosines
CLUSTER_TOL = 1e-2  # orientations further apart than this are different planes (localizers)
TILT_TOL = 1e-2  # in-plane drift of the positions per mm along the normal (~0.6 degrees)
SPACING_REL_TOL = 0.01  # steps may differ from the median by 1 % ...
SPACING_ABS_TOL = 0.01  # ... or 0.01 mm, whichever is larger
DUPLICATE_TOL = 1e-3  # mm: two slices closer than this along the normal are duplicates


@dataclass(frozen=True)
class Skipped:
    """A file (or a whole series) left out of an ingest, and why."""

    path: str
    kind: str  # one of the constants above
    reason: str


@dataclass(frozen=True)
class _Frame:
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


@dataclass
class DicomSeries:
    """One image series: its files (any order) and display metadata (no patient identifiers)."""

    series_uid: str
    files: list[Path]
    meta: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID, Modality, ...
    # In-memory datasets (DICOMweb) instead of files; ``files`` is then empty.
    datasets: list[Dataset] = field(default_factory=list, repr=False)
    label: str = ""  # how messages name the series (a folder or a URL without credentials)
    _frames: list[_Frame] = field(default_factory=list, repr=False)

    @property
    def n_slices(self) -> int:
        return len(self._frames)

    def open(self) -> VolumeFile:
        """Check the geometry and return a volume file whose ``read()`` decodes the pixels."""
        label = self.label or _series_label(self.files, self.series_uid)
        frames = self._frames or _frames_of(self)
        geom = _geometry(frames, label)
        sources: list[Path | Dataset] = list(self.files) if self.files else list(self.datasets)
        ordered = [frames[i] for i in geom.order]
        proxy = _SeriesPixels(sources, ordered, label)
        sha = _files_digest(self.files) if self.files else _datasets_digest(self.datasets)
        shape = (ordered[0].cols, ordered[0].rows, len(ordered))
        path = _common_parent(self.files) if self.files else Path(self.series_uid)
        source = str(path) if self.files else (self.label or f"series {self.series_uid}")
        return DicomVolumeFile(path, self.series_uid, sha, shape, geom.affine, proxy,
                               meta=dict(self.meta), label=label, source=source)


@dataclass
class DicomVolumeFile(VolumeFile):
    """A :class:`VolumeFile` of a DICOM series; errors and ``source`` use the series label."""

    label: str = ""
    source: str = ""

    def read(self, index: int | None = None) -> Volume:
        where = Path(self.label) if self.label else self.path
        try:
            raw, warns = _read_proxy(where, self._proxy, ...)
            data, spacing = _to_canonical(where, raw.reshape(self.shape[:3]), self.affine)
        except VolumeError as exc:
            if exc.path != str(where):  # names one file or instance already
                raise
            raise VolumeError(self.label or self.path, exc.reason) from None
        return Volume(self.case_id, self.case_id, data, spacing, self.source or str(self.path),
                      self.sha256, None, meta=dict(self.meta), warnings=warns)


def looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: the ``DICM`` magic at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def scan_dicom(files: Sequence[Path]) -> tuple[list[DicomSeries], list[Skipped]]:
    """Group DICOM files into image series; everything left out is reported with a reason."""
    skipped: list[Skipped] = []
    headers: list[tuple[str, Dataset]] = []
    for path in files:
        try:
            ds = _read_header(path)
        except VolumeError as exc:
            skipped.append(Skipped(str(path), BAD_FILE, exc.reason))
            continue
        headers.append((str(path), ds))
    series, more = _group(headers, is_file=True)
    return series, skipped + more


def _read_header(path: Path, pixels: bool = False) -> Dataset:
    """A DICOM header (Part 10, or a bare data set without preamble that names its SOP class)."""
    errors = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError,
              AttributeError, OverflowError, IndexError)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels)
        if "SOPClassUID" not in ds:
            raise VolumeError(path, "not a DICOM object (no SOP Class UID)")
        return ds
    except InvalidDicomError:
        pass
    except errors as exc:
        raise VolumeError(path, f"not a readable DICOM file ({_reason(exc)})") from None
    try:  # old files without the 128-byte preamble and "DICM"
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels, force=True)
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            return ds
    except errors:
        pass
    raise VolumeError(path, "not a DICOM file (no DICM header and no SOP Class UID)")


def series_from_datasets(datasets: Iterable[Dataset], label: str = ""
                         ) -> tuple[list[DicomSeries], list[Skipped]]:
    """Image series from in-memory datasets (pixel data included), e.g. retrieved by WADO-RS.

    ``label`` names the origin in messages (a URL without credentials); each dataset is named
    ``<label> instance <SOPInstanceUID>``.
    """
    headers = [(f"{label} instance {ds.get('SOPInstanceUID', '?')}".strip(), ds)
               for ds in datasets]
    series, skipped = _group(headers, is_file=False)
    for s in series:
        if label:
            s.label = label
    return series, skipped


# ---------------------------------------------------------------------------------------------
# Classification and grouping


def _non_image_reason(ds: Dataset) -> str | None:
    sop = str(ds.get("SOPClassUID", ""))
    name = UID(sop).name if sop else ""
    known = bool(name) and name != sop
    modality = str(ds.get("Modality", "") or "")
    if known and "Image Storage" not in name:
        return f"{name} ({modality or 'no modality'}) is not an image"
    if "Rows" not in ds or "Columns" not in ds:
        return f"{name or 'object'} has no image (no Rows/Columns)"
    return None


def _unsupported_reason(ds: Dataset) -> str | None:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        return f"colour image ({spp} samples per pixel); only grayscale volumes are read"
    return None


def _is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType")
    if image_type is None:
        return False
    values = [str(v).upper() for v in (image_type if isinstance(image_type, Sequence)
                                       and not isinstance(image_type, str) else [image_type])]
    return "LOCALIZER" in values


def _group(headers: list[tuple[str, Dataset]], is_file: bool
           ) -> tuple[list[DicomSeries], list[Skipped]]:
    skipped: list[Skipped] = []
    by_series: dict[str, list[tuple[str, Dataset]]] = {}
    seen_sop: dict[str, str] = {}
    for name, ds in headers:
        try:
            reason = _non_image_reason(ds)
            unsupported = None if reason else _unsupported_reason(ds)
            localizer = not reason and not unsupported and _is_localizer(ds)
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            sop = str(ds.get("SOPInstanceUID", "") or "")
        except _HEADER_ERRORS as exc:
            skipped.append(Skipped(name, BAD_FILE, f"unreadable header ({_reason(exc)})"))
            continue
        if reason:
            skipped.append(Skipped(name, NON_IMAGE_DICOM, reason))
            continue
        if unsupported:
            skipped.append(Skipped(name, UNSUPPORTED_IMAGE, unsupported))
            continue
        if localizer:
            skipped.append(Skipped(name, LOCALIZER, "localizer (ImageType LOCALIZER)"))
            continue
        if not uid:
            skipped.append(Skipped(name, BAD_FILE, "no SeriesInstanceUID"))
            continue
        if sop and sop in seen_sop:
            skipped.append(Skipped(name, DUPLICATE, f"same SOPInstanceUID as {seen_sop[sop]}"))
            continue
        if sop:
            seen_sop[sop] = name
        by_series.setdefault(uid, []).append((name, ds))

    out: list[DicomSeries] = []
    for uid, members in by_series.items():
        label = _series_label([Path(n) for n, _ in members], uid) if is_file else uid
        try:
            frames_by_member = [_frames_of_dataset(i, ds, name)
                                for i, (name, ds) in enumerate(members)]
        except VolumeError as exc:
            skipped.append(Skipped(label, INCONSISTENT_SERIES, exc.reason))
            continue
        except _HEADER_ERRORS as exc:  # hostile values pydicom cannot convert
            skipped.append(Skipped(label, BAD_FILE, f"unreadable geometry ({_reason(exc)})"))
            continue
        members, frames_by_member, loc = _drop_other_orientations(members, frames_by_member)
        skipped.extend(loc)
        if not members:
            continue
        # re-index instances after dropping localizers
        frames: list[_Frame] = []
        for i, group in enumerate(frames_by_member):
            frames.extend(_Frame(i, f.frame, f.position, f.orientation, f.spacing, f.rows,
                                 f.cols, f.slope, f.intercept, f.thickness) for f in group)
        try:
            _geometry(frames, label)
        except VolumeError as exc:
            skipped.append(Skipped(label, INCONSISTENT_SERIES, exc.reason))
            continue
        meta = _meta(members[0][1])
        if is_file:
            series = DicomSeries(uid, [Path(n) for n, _ in members], meta, label=label,
                                 _frames=frames)
        else:
            series = DicomSeries(uid, [], meta, datasets=[ds for _, ds in members],
                                 label=label, _frames=frames)
        out.append(series)
    out.sort(key=lambda s: s.series_uid)
    return out, skipped


def _drop_other_orientations(
    members: list[tuple[str, Dataset]], frames: list[list[_Frame]]
) -> tuple[list[tuple[str, Dataset]], list[list[_Frame]], list[Skipped]]:
    """Instances whose orientation differs from the series' majority are localizers.

    Orientations are clustered (direction cosines within :data:`CLUSTER_TOL`). The largest
    cluster must hold more slices than all others together; otherwise the series has mixed
    orientations and is left whole for the geometry check to reject.
    """
    reps: list[np.ndarray] = []

    def cluster(o: tuple[float, ...] | None) -> int:
        if o is None:
            return -1
        v = np.asarray(o, dtype=np.float64)
        for i, r in enumerate(reps):
            if float(np.max(np.abs(v - r))) <= CLUSTER_TOL:
                return i
        reps.append(v)
        return len(reps) - 1

    keys = [{cluster(f.orientation) for f in group} for group in frames]
    counts: Counter[int] = Counter()
    for key, group in zip(keys, frames, strict=True):
        for k in key:
            counts[k] += len(group)
    if len(counts) <= 1:
        return members, frames, []
    (top, n_top), = counts.most_common(1)
    if top == -1 or n_top * 2 <= sum(counts.values()):
        return members, frames, []
    keep_m: list[tuple[str, Dataset]] = []
    keep_f: list[list[_Frame]] = []
    skipped: list[Skipped] = []
    for (name, ds), key, group in zip(members, keys, frames, strict=True):
        if key == {top}:
            keep_m.append((name, ds))
            keep_f.append(group)
        else:
            skipped.append(Skipped(name, LOCALIZER, "orientation differs from the rest of its "
                                                    "series (scout or localizer)"))
    return keep_m, keep_f, skipped


def _meta(ds: Dataset) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in META_KEYS:
        value = ds.get(key)
        if value is not None and str(value).strip():
            out[key] = str(value).strip()
    return out


# ---------------------------------------------------------------------------------------------
# Per-frame geometry


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


def _frames_of_dataset(index: int, ds: Dataset, name: str) -> list[_Frame]:
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
            frames.append(_Frame(index, k, _xyz(pos), ori, _pair(sp), rows, cols,
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
        return [_Frame(index, k, _xyz(tuple(np.asarray(pos) + normal * off)), ori, _pair(sp),
                       rows, cols, s, b, thickness) for k, off in enumerate(offsets)]
    return [_Frame(index, None, _xyz(pos), ori, _pair(sp), rows, cols, s, b, thickness)]


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


def _frames_of(series: DicomSeries) -> list[_Frame]:
    frames: list[_Frame] = []
    if series.files:
        for i, path in enumerate(series.files):
            ds = _read_header(path)
            frames.extend(_frames_of_dataset(i, ds, str(path)))
    else:
        for i, ds in enumerate(series.datasets):
            frames.extend(_frames_of_dataset(i, ds, series.label or series.series_uid))
    return frames


@dataclass(frozen=True)
class _Geometry:
    order: list[int]  # frame indices from the lowest to the highest position along the normal
    affine: np.ndarray  # RAS, voxel (column, row, slice) -> mm


def _geometry(frames: list[_Frame], label: str) -> _Geometry:
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
    return _Geometry(order, ras)


# ---------------------------------------------------------------------------------------------
# Pixels (read lazily, one series at a time)


class _SeriesPixels:
    """Array proxy: ``proxy[...]`` decodes the slices into a (columns, rows, slices) array."""

    def __init__(self, sources: list[Path | Dataset], frames: list[_Frame], label: str) -> None:
        self.sources = sources
        self.frames = frames
        self.label = label
        self.shape = (frames[0].cols, frames[0].rows, len(frames))

    def __getitem__(self, index: object) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        by_instance: dict[int, list[tuple[int, _Frame]]] = {}
        for k, f in enumerate(self.frames):
            by_instance.setdefault(f.instance, []).append((k, f))
        for inst, items in by_instance.items():
            pixels = self._decode(inst)
            for k, f in items:
                plane = pixels[f.frame] if f.frame is not None else pixels
                if plane.ndim != 2 or plane.shape != (f.rows, f.cols):
                    raise VolumeError(self._name(inst), f"decoded frame has shape {plane.shape},"
                                                        f" expected {(f.rows, f.cols)}")
                vals = plane.astype(np.float64) * f.slope + f.intercept
                out[:, :, k] = vals.T
        return np.asarray(out[index])  # type: ignore[call-overload]

    def _name(self, inst: int) -> str:
        src = self.sources[inst]
        if isinstance(src, Dataset):
            return f"{self.label} instance {src.get('SOPInstanceUID', '?')}"
        return str(src)

    def _decode(self, inst: int) -> np.ndarray:
        src = self.sources[inst]
        name = self._name(inst)
        ds = src if isinstance(src, Dataset) else _read_header(src, pixels=True)
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise VolumeError(name, "no pixel data")
        try:
            arr = ds.pixel_array
        except MemoryError:
            raise VolumeError(name, "pixel data does not fit in memory") from None
        except Exception as exc:  # decoders raise many types (missing plugin, corrupt stream)
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            ts_name = UID(str(ts)).name if ts else "unknown transfer syntax"
            raise VolumeError(name, f"cannot decode pixel data ({ts_name}: "
                                    f"{_reason(exc)})") from None
        return np.asarray(arr)


# ---------------------------------------------------------------------------------------------
# Identity


def _files_digest(files: Sequence[Path]) -> str:
    """sha256 over the sorted per-file digests: stable whatever the file order or names."""
    digests = []
    for p in files:
        try:
            digests.append(file_sha256(p))
        except OSError as exc:
            raise VolumeError(p, f"unreadable ({_reason(exc)})") from None
    total = hashlib.sha256()
    for d in sorted(digests):
        total.update(d.encode())
    return total.hexdigest()


def datasets_digest(datasets: Sequence[Dataset]) -> str:
    """sha256 over (SOPInstanceUID, pixel bytes) of each instance, sorted by SOPInstanceUID."""
    return _datasets_digest(datasets)


def _datasets_digest(datasets: Sequence[Dataset]) -> str:
    parts = []
    for ds in datasets:
        h = hashlib.sha256(str(ds.get("SOPInstanceUID", "")).encode())
        for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if key in ds:
                value = ds[key].value
                h.update(value if isinstance(value, bytes) else bytes(value))
        parts.append((str(ds.get("SOPInstanceUID", "")), h.hexdigest()))
    total = hashlib.sha256()
    for _, d in sorted(parts):
        total.update(d.encode())
    return total.hexdigest()


def _common_parent(files: Sequence[Path]) -> Path:
    if not files:
        return Path(".")
    try:
        return Path(os.path.commonpath([str(Path(f).parent) for f in files]))
    except ValueError:  # mixed absolute and relative paths
        return Path(files[0]).parent


def _series_label(files: Sequence[Path], uid: str) -> str:
    return f"{_common_parent(files)} (series {uid})" if files else f"series {uid}"


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def open_dicom_folder(folder: Path) -> VolumeFile:
    """The one image series of a folder of DICOM files (recursively), e.g. as a query."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and looks_like_dicom(p))
    if not files:
        raise VolumeError(folder, "no DICOM files (Part 10, 'DICM' at byte 128) in this folder")
    series, skipped = scan_dicom(files)
    if len(series) != 1:
        why = "; ".join(sorted({f"{s.kind}: {s.reason}" for s in skipped}))[:300]
        raise VolumeError(folder, f"{len(series)} image series in this folder (give the folder "
                                  f"of one series){'; skipped ' + why if why else ''}")
    return series[0].open()
