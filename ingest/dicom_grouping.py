"""Which DICOM headers make image series: classification, grouping, and what is copied out.

Each header becomes a :class:`ScannedInstance` (the few fields grouping needs, never the data
set of a file) or is left out with its reason (non-image objects, colour images, localizers,
headers declaring more than the limits); instances are then grouped by SeriesInstanceUID,
duplicates and stray orientations dropped, and each group's geometry checked. Only display
metadata is copied out of a header (:data:`META_KEYS`); no patient-identifying attribute ever
reaches a payload, a message or a log.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ingest.dicom_geometry import CLUSTER_TOL, Frame, frames_of_dataset, stack_geometry
from ingest.dicom_header import HEADER_ERRORS, declared_itemsize, declared_shape
from ingest.dicom_series import DicomSeries, series_label
from ingest.reader import Limits, check_declared_size
from ingest.skipped import (
    BAD_FILE,
    DUPLICATE,
    INCONSISTENT_SERIES,
    LOCALIZER,
    NON_IMAGE_DICOM,
    TOO_LARGE,
    UNSUPPORTED_IMAGE,
    Skipped,
)
from medir.errors import VolumeError, exception_line

# The only attributes copied out of a DICOM header (display and filters, never ranking).
META_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined")


@dataclass(frozen=True)
class ScannedInstance:
    """What a scan keeps of one instance's header: the fields that group it into a series, its
    frames' geometry, and why it is left out. Never the data set of a file (a folder of large
    or hostile headers is walked one header at a time)."""

    name: str  # the file, or ``<label> instance <SOPInstanceUID>``
    series_uid: str = ""
    sop_uid: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    frames: tuple[Frame, ...] = ()
    itemsize: int = 2  # bytes of one stored sample (BitsAllocated, rounded up)
    skip: Skipped | None = None  # this instance is left out, and why
    # (kind, reason): the instance's series is left out whole (bad geometry, too large, ...)
    series_error: tuple[str, str] | None = None
    dataset: Dataset | None = None  # in-memory data sets only (DICOMweb): the pixels are here


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


def scanned_instance(name: str, ds: Dataset, limits: Limits | None,
                     keep: bool = False) -> ScannedInstance:
    """The grouping fields of one header and why it is left out (the data set itself only
    with ``keep``); a header declaring more than ``limits`` leaves its series out before its
    frames are listed."""
    try:
        reason = _non_image_reason(ds)
        unsupported = None if reason else _unsupported_reason(ds)
        localizer = not reason and not unsupported and _is_localizer(ds)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
    except HEADER_ERRORS as exc:
        return ScannedInstance(name, skip=Skipped(name, BAD_FILE,
                                                  f"unreadable header ({exception_line(exc)})"))
    if reason:
        return ScannedInstance(name, skip=Skipped(name, NON_IMAGE_DICOM, reason))
    if unsupported:
        return ScannedInstance(name, skip=Skipped(name, UNSUPPORTED_IMAGE, unsupported))
    if localizer:
        return ScannedInstance(name, skip=Skipped(name, LOCALIZER,
                                                  "localizer (ImageType LOCALIZER)"))
    if not uid:
        return ScannedInstance(name, skip=Skipped(name, BAD_FILE, "no SeriesInstanceUID"))
    base = ScannedInstance(name, uid, sop, dataset=ds if keep else None)
    try:
        itemsize = declared_itemsize(ds)
        rows, cols, n_frames = declared_shape(ds)
        check_declared_size(Path(name), (cols, rows, n_frames), itemsize, limits)
        frames = tuple(frames_of_dataset(0, ds, name))
        meta = _meta(ds)
    except VolumeError as exc:
        kind = TOO_LARGE if exc.reason.startswith("too large") else INCONSISTENT_SERIES
        return dataclasses.replace(base, series_error=(kind, exc.reason))
    except HEADER_ERRORS as exc:  # hostile values pydicom cannot convert
        return dataclasses.replace(base, series_error=(
            BAD_FILE, f"unreadable geometry ({exception_line(exc)})"))
    return dataclasses.replace(base, meta=meta, frames=frames, itemsize=itemsize)


def group_series(instances: list[ScannedInstance], is_file: bool
                 ) -> tuple[list[DicomSeries], list[Skipped]]:
    """The image series of scanned instances (sorted by SeriesInstanceUID), and what is left
    out: instances skipped at the scan, duplicates (same SOPInstanceUID), localizers of
    another orientation, and whole series that are too large or inconsistent."""
    skipped: list[Skipped] = []
    by_series: dict[str, list[ScannedInstance]] = {}
    seen_sop: dict[str, str] = {}
    for inst in instances:
        name, sop = inst.name, inst.sop_uid
        if inst.skip is not None:
            skipped.append(inst.skip)
            continue
        if sop and sop in seen_sop:
            skipped.append(Skipped(name, DUPLICATE, f"same SOPInstanceUID as {seen_sop[sop]}"))
            continue
        if sop:
            seen_sop[sop] = name
        by_series.setdefault(inst.series_uid, []).append(inst)

    out: list[DicomSeries] = []
    for uid, members in by_series.items():
        label = series_label([Path(m.name) for m in members], uid) if is_file else uid
        error = next((m.series_error for m in members if m.series_error is not None), None)
        if error is not None:
            skipped.append(Skipped(label, *error))
            continue
        frames_by_member = [list(m.frames) for m in members]
        members, frames_by_member, loc = _drop_other_orientations(members, frames_by_member)
        skipped.extend(loc)
        if not members:
            continue
        # re-index instances after dropping localizers
        frames: list[Frame] = []
        for i, group in enumerate(frames_by_member):
            frames.extend(Frame(i, f.frame, f.position, f.orientation, f.spacing, f.rows,
                                f.cols, f.slope, f.intercept, f.thickness) for f in group)
        try:
            stack_geometry(frames, label)
        except VolumeError as exc:
            skipped.append(Skipped(label, INCONSISTENT_SERIES, exc.reason))
            continue
        meta = dict(members[0].meta)
        itemsize = max(m.itemsize for m in members)
        if is_file:
            series = DicomSeries(uid, [Path(m.name) for m in members], meta, label=label,
                                 _frames=frames, _itemsize=itemsize)
        else:
            series = DicomSeries(uid, [], meta, datasets=[m.dataset for m in members
                                                          if m.dataset is not None],
                                 label=label, _frames=frames, _itemsize=itemsize)
        out.append(series)
    out.sort(key=lambda s: s.series_uid)
    return out, skipped


def _drop_other_orientations(
    members: list[ScannedInstance], frames: list[list[Frame]]
) -> tuple[list[ScannedInstance], list[list[Frame]], list[Skipped]]:
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
    keep_m: list[ScannedInstance] = []
    keep_f: list[list[Frame]] = []
    skipped: list[Skipped] = []
    for inst, key, group in zip(members, keys, frames, strict=True):
        if key == {top}:
            keep_m.append(inst)
            keep_f.append(group)
        else:
            skipped.append(Skipped(inst.name, LOCALIZER, "orientation differs from the rest of its "
                                                    "series (scout or localizer)"))
    return keep_m, keep_f, skipped


def _meta(ds: Dataset) -> dict[str, str]:
    """The :data:`META_KEYS` a header holds (non-empty, stripped): all that is copied out."""
    out: dict[str, str] = {}
    for key in META_KEYS:
        value = ds.get(key)
        if value is not None and str(value).strip():
            out[key] = str(value).strip()
    return out


__all__ = ["META_KEYS", "ScannedInstance", "group_series", "scanned_instance"]
