"""One DICOM image series: its sources, how it opens as a volume file, and its identity.

:meth:`DicomSeries.open` checks the series' declared size against the limits and returns a
:class:`ingest.reader.VolumeFile` whose ``read()`` gives the same canonical RAS
:class:`~ingest.volume.Volume` as the NIfTI of the same data; pixel data is decoded only then
(:mod:`ingest.dicom_pixels`). A series' sha256 is stable whatever its files' order or names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from ingest.dicom_geometry import Frame, frames_of_dataset, stack_geometry
from ingest.dicom_header import (
    HEADER_ERRORS,
    declared_itemsize,
    declared_shape,
    read_header,
)
from ingest.dicom_pixels import SeriesPixels
from ingest.digest import file_sha256
from ingest.reader import Limits, VolumeFile, _read_proxy, _to_canonical, check_declared_size
from ingest.volume import Volume
from medir.errors import VolumeError, exception_line


@dataclass
class DicomSeries:
    """One image series: its files (any order) and display metadata (no patient identifiers)."""

    series_uid: str
    files: list[Path]
    meta: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID, Modality, ...
    # In-memory datasets (DICOMweb) instead of files; ``files`` is then empty.
    datasets: list[Dataset] = field(default_factory=list, repr=False)
    label: str = ""  # how messages name the series (a folder or a URL without credentials)
    _frames: list[Frame] = field(default_factory=list, repr=False)
    _itemsize: int = field(default=0, repr=False)  # largest stored sample, bytes (0: unknown)

    @property
    def n_slices(self) -> int:
        return len(self._frames)

    def open(self, limits: Limits | None = None) -> VolumeFile:
        """Check the declared size against ``limits`` (None: the defaults) and the geometry;
        return a volume file whose ``read()`` decodes the pixels."""
        label = self.label or series_label(self.files, self.series_uid)
        if self._frames:
            frames, itemsize = self._frames, self._itemsize or 2
        else:
            frames, itemsize = _frames_of(self, limits)
        if frames:
            check_declared_size(Path(label), (frames[0].cols, frames[0].rows, len(frames)),
                                itemsize, limits)
        geom = stack_geometry(frames, label)
        sources: list[Path | Dataset] = list(self.files) if self.files else list(self.datasets)
        ordered = [frames[i] for i in geom.order]
        proxy = SeriesPixels(sources, ordered, label, itemsize)
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


def _frames_of(series: DicomSeries, limits: Limits | None) -> tuple[list[Frame], int]:
    """The frames of a series built without a scan, and its largest stored sample (bytes);
    each header is checked against ``limits`` before its frames are listed."""
    frames: list[Frame] = []
    itemsize = 1
    sources: list[Path | Dataset] = list(series.files) if series.files else list(series.datasets)
    for i, src in enumerate(sources):
        name = str(src) if isinstance(src, Path) else (series.label or series.series_uid)
        ds = read_header(src) if isinstance(src, Path) else src
        try:
            size = declared_itemsize(ds)
            rows, cols, n_frames = declared_shape(ds)
        except HEADER_ERRORS as exc:
            raise VolumeError(name, f"unreadable header ({exception_line(exc)})") from None
        check_declared_size(Path(name), (cols, rows, n_frames), size, limits)
        itemsize = max(itemsize, size)
        frames.extend(frames_of_dataset(i, ds, name))
    return frames, itemsize


# ---------------------------------------------------------------------------------------------
# Identity


def _files_digest(files: Sequence[Path]) -> str:
    """sha256 over the sorted per-file digests: stable whatever the file order or names."""
    digests = []
    for p in files:
        try:
            digests.append(file_sha256(p))
        except OSError as exc:
            raise VolumeError(p, f"unreadable ({exception_line(exc)})") from None
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


def series_label(files: Sequence[Path], uid: str) -> str:
    """How messages name a series of files: their common folder and the SeriesInstanceUID."""
    return f"{_common_parent(files)} (series {uid})" if files else f"series {uid}"


__all__ = ["DicomSeries", "DicomVolumeFile", "datasets_digest", "series_label"]
