"""DICOM series → canonical RAS volumes, read with pydicom (and its pylibjpeg/GDCM plugins).

The folder walker (``ingest/collection.py``) hands every file that looks like DICOM to
:func:`scan_dicom`, which groups them by SeriesInstanceUID, reads headers only
(``stop_before_pixels``, large values deferred) and keeps only the few fields grouping needs of
each (:class:`_Instance`, never the data set), and returns one :class:`DicomSeries` per usable
image series plus one :class:`Skipped` per file or series left out, with its reason.
:meth:`DicomSeries.open` checks the series' declared size against the limits and returns a
:class:`ingest.reader.VolumeFile` whose ``read()`` gives the same canonical RAS
:class:`~ingest.volume.Volume` as the NIfTI of the same data; pixel data is decoded only then,
one file at a time, each file's header checked again against what the scan saw.

Hostile files: a Deflated Explicit VR Little Endian data set is inflated as a bounded stream
(:class:`_BoundedInflate`), never whole: at most :data:`HEADER_MAX_BYTES` before the pixel data
while scanning, and the header plus the declared pixel bytes when decoding.

Series can also be built from in-memory pydicom datasets (:func:`series_from_datasets`, used by
the DICOMweb ingest), so nothing retrieved from a PACS has to touch the disk.

Geometry: slices are ordered by ImagePositionPatient projected on the slice normal (the cross
product of the two ImageOrientationPatient direction cosines), never by file name or
InstanceNumber. DICOM patient coordinates are LPS; the affine is converted to RAS.
Only display metadata is kept (:data:`META_KEYS`); no patient-identifying attribute is ever
copied into a payload, a message or a log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from ingest.digest import file_sha256
from ingest.reader import (
    MAX_VOXELS,
    Limits,
    VolumeFile,
    _read_proxy,
    _to_canonical,
    check_declared_size,
)
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
TOO_LARGE = "too large"  # a header declaring more voxels or bytes than the limits

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

# Hostile-file bounds (see docs/dicom.md, "Hostile files").
#: Inflated bytes a deflated data set may hold before its pixel data (its header). Enhanced
#: multi-frame headers with per-frame functional groups for thousands of frames are a few MB.
HEADER_MAX_BYTES = 64 << 20
#: While scanning, values longer than this are not read (pydicom ``defer_size``); grouping needs
#: none of them (UIDs, Rows/Columns, positions and orientations are short).
DEFER_BYTES = 256 << 10
#: Reads pydicom may make to parse one header (about two per element or sequence item): bounds
#: the Python objects a small file of tiny sequence items makes (each costs about 300 bytes and
#: 15 us; a 5,000-frame enhanced MR header needs under a million).
MAX_HEADER_READS = 1 << 20
_INFLATE_CHUNK = 1 << 20  # bytes inflated per step
_INFLATE_KEEP = 1 << 20  # inflated bytes kept behind the read position (pydicom seeks back a few)
#: What a scan allows a file to declare when it is given no limits: the absolute ceiling (the
#: settings' limits, which may be raised up to it, are checked when a series is opened).
SCAN_LIMITS = Limits(MAX_VOXELS, MAX_VOXELS * 8)
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # (Double)Float/PixelData


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


@dataclass(frozen=True)
class _Instance:
    """What a scan keeps of one instance's header: the fields that group it into a series, its
    frames' geometry, and why it is left out. Never the data set of a file (a folder of large
    or hostile headers is walked one header at a time)."""

    name: str  # the file, or ``<label> instance <SOPInstanceUID>``
    series_uid: str = ""
    sop_uid: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    frames: tuple[_Frame, ...] = ()
    itemsize: int = 2  # bytes of one stored sample (BitsAllocated, rounded up)
    skip: Skipped | None = None  # this instance is left out, and why
    # (kind, reason): the instance's series is left out whole (bad geometry, too large, ...)
    series_error: tuple[str, str] | None = None
    dataset: Dataset | None = None  # in-memory data sets only (DICOMweb): the pixels are here


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
    _itemsize: int = field(default=0, repr=False)  # largest stored sample, bytes (0: unknown)

    @property
    def n_slices(self) -> int:
        return len(self._frames)

    def open(self, limits: Limits | None = None) -> VolumeFile:
        """Check the declared size against ``limits`` (None: the defaults) and the geometry;
        return a volume file whose ``read()`` decodes the pixels."""
        label = self.label or _series_label(self.files, self.series_uid)
        if self._frames:
            frames, itemsize = self._frames, self._itemsize or 2
        else:
            frames, itemsize = _frames_of(self, limits)
        if frames:
            check_declared_size(Path(label), (frames[0].cols, frames[0].rows, len(frames)),
                                itemsize, limits)
        geom = _geometry(frames, label)
        sources: list[Path | Dataset] = list(self.files) if self.files else list(self.datasets)
        ordered = [frames[i] for i in geom.order]
        proxy = _SeriesPixels(sources, ordered, label, itemsize)
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


def scan_dicom(files: Sequence[Path], limits: Limits | None = None
               ) -> tuple[list[DicomSeries], list[Skipped]]:
    """Group DICOM files into image series; everything left out is reported with a reason.

    One header is read at a time and only its :class:`_Instance` is kept; a file declaring more
    voxels or bytes than ``limits`` (None: :data:`SCAN_LIMITS`) leaves its series out."""
    skipped: list[Skipped] = []
    instances: list[_Instance] = []
    for path in files:
        try:
            ds = _read_header(path)
        except VolumeError as exc:
            skipped.append(Skipped(str(path), BAD_FILE, exc.reason))
            continue
        instances.append(_instance(str(path), ds, limits or SCAN_LIMITS))
        del ds
    series, more = _group(instances, is_file=True)
    return series, skipped + more


_READ_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError,
                AttributeError, OverflowError, IndexError)


def _read_header(path: Path, pixels: bool = False, max_inflated: int = HEADER_MAX_BYTES,
                 why: str = "") -> Dataset:
    """A DICOM header (Part 10, or a bare data set without preamble that names its SOP class).

    Without ``pixels``: stops before the pixel data and leaves values over
    :data:`DEFER_BYTES` unread. A deflated data set is inflated as a bounded stream: more than
    ``max_inflated`` bytes (before the pixel data, or in all with ``pixels``) is refused, with
    ``why`` (what the bound comes from) in the message."""
    try:
        deflated = _deflated_start(path)
    except _READ_ERRORS:
        deflated = None  # not a Part 10 file meta: the reads below say what it is
    ds: Dataset
    if deflated is not None:
        try:
            ds = _read_deflated(path, *deflated, pixels, max_inflated, why)
        except _READ_ERRORS as exc:
            raise VolumeError(path, f"not a readable DICOM file ({_reason(exc)})") from None
        if "SOPClassUID" not in ds:
            raise VolumeError(path, "not a DICOM object (no SOP Class UID)")
        return ds
    try:
        ds = _dcmread(path, pixels, force=False)
        if "SOPClassUID" not in ds:
            raise VolumeError(path, "not a DICOM object (no SOP Class UID)")
        return ds
    except InvalidDicomError:
        pass
    except _READ_ERRORS as exc:
        raise VolumeError(path, f"not a readable DICOM file ({_reason(exc)})") from None
    try:  # old files without the 128-byte preamble and "DICM"
        ds = _dcmread(path, pixels, force=True)
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            return ds
    except _READ_ERRORS:
        pass
    raise VolumeError(path, "not a DICOM file (no DICM header and no SOP Class UID)")


def _dcmread(path: Path, pixels: bool, force: bool) -> Dataset:
    """pydicom's read of a file (not deflated), its reads counted (:data:`MAX_HEADER_READS`);
    without ``pixels`` it stops before them and defers long values (read from the file if
    ever used)."""
    with _CountedFile(path) as fh:
        try:
            return pydicom.dcmread(fh, stop_before_pixels=not pixels, force=force,
                                   defer_size=None if pixels else DEFER_BYTES)
        except Exception:
            if fh.refused is not None:  # pydicom rewraps some read errors as OSError
                raise fh.refused from None
            raise


def _too_many_reads(name: str) -> VolumeError:
    return VolumeError(name, f"the header needs more than {MAX_HEADER_READS} reads to parse "
                             "(elements and sequence items); refused")


class _CountedFile(io.BufferedReader):
    """A file whose reads are counted: one header may take :data:`MAX_HEADER_READS`."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(str(path), "rb"))
        self.reads = 0
        self.refused: VolumeError | None = None

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_HEADER_READS:
            self.refused = _too_many_reads(str(self.name))
            raise self.refused
        return super().read(size)


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _deflated_start(path: Path) -> tuple[bytes | None, FileMetaDataset, int] | None:
    """(preamble, file meta, offset of the data set) of a file whose transfer syntax is
    Deflated Explicit VR Little Endian, read the way pydicom reads them; None for any other
    file (pydicom inflates a deflated data set whole, unbounded, so medir does it)."""
    with open(path, "rb") as fh:
        preamble = read_preamble(fh, True)
        meta = FileMetaDataset(read_dataset(fh, is_implicit_VR=False, is_little_endian=True,
                                            stop_when=_not_file_meta))
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        return preamble, meta, fh.tell()


def _read_deflated(path: Path, preamble: bytes | None, meta: FileMetaDataset, offset: int,
                   pixels: bool, max_inflated: int, why: str) -> FileDataset:
    """The deflated data set of ``path`` (from ``offset``), inflated through a bounded stream;
    its file meta says Explicit VR Little Endian, the encoding of the inflated data set (so
    the pixels decode as native ones)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        stream = _BoundedInflate(fh, path, max_inflated,
                                 why or ("" if pixels else " before its pixel data"))
        try:
            dataset = read_dataset(cast(BinaryIO, stream), is_implicit_VR=False,
                                   is_little_endian=True,
                                   stop_when=None if pixels else _at_pixels,
                                   defer_size=None if pixels else DEFER_BYTES)
        except Exception:
            if stream.refused is not None:  # pydicom rewraps some read errors as OSError
                raise stream.refused from None
            raise
        if stream.refused is not None:
            raise stream.refused
    inflated_meta = FileMetaDataset(meta)
    inflated_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), dataset, preamble, inflated_meta, is_implicit_VR=False,
                     is_little_endian=True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


class _BoundedInflate:
    """A read-only file object over a raw deflate stream that never inflates more than
    ``limit`` bytes and keeps only a window of them: a read or seek past the limit raises
    (and records) one :class:`VolumeError` naming the file, without inflating further."""

    def __init__(self, raw: Any, path: Path, limit: int, where: str) -> None:
        self._raw = raw
        self._dec = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self._pos = 0
        self._eof = False
        self.limit = limit
        self.name = str(path)
        self._where = where
        self.reads = 0
        self.refused: VolumeError | None = None

    def _refuse(self) -> VolumeError:
        self.refused = VolumeError(self.name, f"deflated data set inflates to more than "
                                              f"{self.limit} bytes{self._where}; refused")
        return self.refused

    def _fill(self, upto: int) -> None:
        """Inflate until the stream holds ``upto`` bytes (or ends); drop what lies more than
        the kept window behind the read position."""
        while self._start + len(self._buf) < upto and not self._eof:
            data = self._dec.unconsumed_tail or self._raw.read(_INFLATE_CHUNK)
            out = self._dec.decompress(data, _INFLATE_CHUNK) if data else self._dec.flush()
            self._eof = not data or self._dec.eof
            drop = min(self._pos - _INFLATE_KEEP - self._start, len(self._buf))
            if drop > 0:
                del self._buf[:drop]
                self._start += drop
            self._buf += out
            if self._start + len(self._buf) > self.limit:
                raise self._refuse()

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_HEADER_READS:
            self.refused = _too_many_reads(self.name)
            raise self.refused
        if size is None or size < 0:
            size = self.limit + 1 - self._pos
        if self._pos + size > self.limit:
            raise self._refuse()
        self._fill(self._pos + size)
        if self._pos < self._start:
            raise OSError("deflated stream: cannot seek that far back")
        i = self._pos - self._start
        with memoryview(self._buf) as view:
            out = bytes(view[i:i + size])
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset + (self._pos if whence == 1 else 0)
        if whence not in (0, 1) or target < self._start:
            raise OSError("deflated stream: cannot seek that far back")
        self._pos = target
        return target

    def tell(self) -> int:
        return self._pos


def series_from_datasets(datasets: Iterable[Dataset], label: str = ""
                         ) -> tuple[list[DicomSeries], list[Skipped]]:
    """Image series from in-memory datasets (pixel data included), e.g. retrieved by WADO-RS.

    ``label`` names the origin in messages (a URL without credentials); each dataset is named
    ``<label> instance <SOPInstanceUID>``.
    """
    instances = [_instance(f"{label} instance {ds.get('SOPInstanceUID', '?')}".strip(), ds,
                           SCAN_LIMITS, keep=True) for ds in datasets]
    series, skipped = _group(instances, is_file=False)
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


def _itemsize(ds: Dataset) -> int:
    """Bytes of one decoded stored sample (BitsAllocated 1 to 64, rounded up to whole bytes)."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if not 1 <= bits <= 64:
        raise ValueError(f"BitsAllocated {bits}")
    return (bits + 7) // 8


def _declared(ds: Dataset) -> tuple[int, int, int]:
    """(Rows, Columns, NumberOfFrames) as the header declares them."""
    return (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
            int(ds.get("NumberOfFrames", 1) or 1))


def _instance(name: str, ds: Dataset, limits: Limits | None, keep: bool = False) -> _Instance:
    """The grouping fields of one header and why it is left out (the data set itself only
    with ``keep``); a header declaring more than ``limits`` leaves its series out before its
    frames are listed."""
    try:
        reason = _non_image_reason(ds)
        unsupported = None if reason else _unsupported_reason(ds)
        localizer = not reason and not unsupported and _is_localizer(ds)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
    except _HEADER_ERRORS as exc:
        return _Instance(name, skip=Skipped(name, BAD_FILE,
                                            f"unreadable header ({_reason(exc)})"))
    if reason:
        return _Instance(name, skip=Skipped(name, NON_IMAGE_DICOM, reason))
    if unsupported:
        return _Instance(name, skip=Skipped(name, UNSUPPORTED_IMAGE, unsupported))
    if localizer:
        return _Instance(name, skip=Skipped(name, LOCALIZER, "localizer (ImageType LOCALIZER)"))
    if not uid:
        return _Instance(name, skip=Skipped(name, BAD_FILE, "no SeriesInstanceUID"))
    base = _Instance(name, uid, sop, dataset=ds if keep else None)
    try:
        itemsize = _itemsize(ds)
        rows, cols, n_frames = _declared(ds)
        check_declared_size(Path(name), (cols, rows, n_frames), itemsize, limits)
        frames = tuple(_frames_of_dataset(0, ds, name))
        meta = _meta(ds)
    except VolumeError as exc:
        kind = TOO_LARGE if exc.reason.startswith("too large") else INCONSISTENT_SERIES
        return dataclasses.replace(base, series_error=(kind, exc.reason))
    except _HEADER_ERRORS as exc:  # hostile values pydicom cannot convert
        return dataclasses.replace(base, series_error=(
            BAD_FILE, f"unreadable geometry ({_reason(exc)})"))
    return dataclasses.replace(base, meta=meta, frames=frames, itemsize=itemsize)


def _group(instances: list[_Instance], is_file: bool
           ) -> tuple[list[DicomSeries], list[Skipped]]:
    skipped: list[Skipped] = []
    by_series: dict[str, list[_Instance]] = {}
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
        label = _series_label([Path(m.name) for m in members], uid) if is_file else uid
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
        frames: list[_Frame] = []
        for i, group in enumerate(frames_by_member):
            frames.extend(_Frame(i, f.frame, f.position, f.orientation, f.spacing, f.rows,
                                 f.cols, f.slope, f.intercept, f.thickness) for f in group)
        try:
            _geometry(frames, label)
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
    members: list[_Instance], frames: list[list[_Frame]]
) -> tuple[list[_Instance], list[list[_Frame]], list[Skipped]]:
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
    keep_m: list[_Instance] = []
    keep_f: list[list[_Frame]] = []
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


def _frames_of(series: DicomSeries, limits: Limits | None) -> tuple[list[_Frame], int]:
    """The frames of a series built without a scan, and its largest stored sample (bytes);
    each header is checked against ``limits`` before its frames are listed."""
    frames: list[_Frame] = []
    itemsize = 1
    sources: list[Path | Dataset] = list(series.files) if series.files else list(series.datasets)
    for i, src in enumerate(sources):
        name = str(src) if isinstance(src, Path) else (series.label or series.series_uid)
        ds = _read_header(src) if isinstance(src, Path) else src
        try:
            size = _itemsize(ds)
            rows, cols, n_frames = _declared(ds)
        except _HEADER_ERRORS as exc:
            raise VolumeError(name, f"unreadable header ({_reason(exc)})") from None
        check_declared_size(Path(name), (cols, rows, n_frames), size, limits)
        itemsize = max(itemsize, size)
        frames.extend(_frames_of_dataset(i, ds, name))
    return frames, itemsize


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

    def __init__(self, sources: list[Path | Dataset], frames: list[_Frame], label: str,
                 itemsize: int = 8) -> None:
        self.sources = sources
        self.frames = frames
        self.label = label
        self.itemsize = itemsize  # largest stored sample the scan saw, bytes
        self.shape = (frames[0].cols, frames[0].rows, len(frames))

    def __getitem__(self, index: object) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        by_instance: dict[int, list[tuple[int, _Frame]]] = {}
        for k, f in enumerate(self.frames):
            by_instance.setdefault(f.instance, []).append((k, f))
        for inst, items in by_instance.items():
            pixels = self._decode(inst, items[0][1], len(items))
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

    def _decode(self, inst: int, frame: _Frame, n_frames: int) -> np.ndarray:
        """The pixels of one instance, after checking that its header still declares what
        the scan saw (``n_frames`` frames like ``frame``), so that a decoder never allocates
        more than the checked size; a deflated file inflates no more than that plus a header."""
        src = self.sources[inst]
        name = self._name(inst)
        expected = frame.rows * frame.cols * n_frames * self.itemsize
        ds = src if isinstance(src, Dataset) else _read_header(
            src, pixels=True, max_inflated=HEADER_MAX_BYTES + expected,
            why=f" (a header and the {expected} bytes of pixel data the scan saw declared)")
        try:
            rows, cols, frames = _declared(ds)
            itemsize = _itemsize(ds)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
        except _HEADER_ERRORS as exc:
            raise VolumeError(name, f"unreadable header ({_reason(exc)})") from None
        if ((rows, cols, frames, samples) != (frame.rows, frame.cols, n_frames, 1)
                or itemsize > self.itemsize):
            raise VolumeError(name, f"the header declares {rows}x{cols} pixels x {frames} "
                                    f"frames x {samples} samples of {itemsize} bytes; the "
                                    f"series was scanned as {frame.rows}x{frame.cols} x "
                                    f"{n_frames} x 1 of at most {self.itemsize} (changed "
                                    "since the scan?); not decoded")
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


def open_dicom_folder(folder: Path, limits: Limits | None = None) -> VolumeFile:
    """The one image series of a folder of DICOM files (recursively), e.g. as a query;
    ``limits``: what the series may declare (None: the defaults)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and looks_like_dicom(p))
    if not files:
        raise VolumeError(folder, "no DICOM files (Part 10, 'DICM' at byte 128) in this folder")
    series, skipped = scan_dicom(files, limits)
    if len(series) != 1:
        why = "; ".join(sorted({f"{s.kind}: {s.reason}" for s in skipped}))[:300]
        raise VolumeError(folder, f"{len(series)} image series in this folder (give the folder "
                                  f"of one series){'; skipped ' + why if why else ''}")
    return series[0].open(limits)
