"""DICOM series → canonical RAS volumes, read with pydicom (and its pylibjpeg/GDCM plugins).

The folder walker (``ingest/collection.py``) hands every file that looks like DICOM to
:func:`scan_dicom`, which groups them by SeriesInstanceUID, reads headers only
(``stop_before_pixels``, large values deferred) and keeps only the few fields grouping needs of
each (:class:`~ingest.dicom_grouping.ScannedInstance`, never the data set), and returns one
:class:`DicomSeries` per usable image series plus one :class:`Skipped` per file or series left
out, with its reason. :meth:`DicomSeries.open` checks the series' declared size against the
limits and returns a :class:`ingest.reader.VolumeFile` whose ``read()`` gives the same
canonical RAS :class:`~ingest.volume.Volume` as the NIfTI of the same data; pixel data is
decoded only then, one file at a time, each file's header checked again against what the scan
saw.

Series can also be built from in-memory pydicom datasets (:func:`series_from_datasets`, used by
the DICOMweb ingest), so nothing retrieved from a PACS has to touch the disk.

This module is the entry points (and the names callers have always imported from here); the
work is in small modules, each one job:

- :mod:`ingest.dicom_header`: one header read within bounds (deflate, read counts): the
  hostile-file protections (docs/dicom.md, "Hostile files");
- :mod:`ingest.dicom_grouping`: which headers make image series, and the only attributes
  copied out of a header (:data:`META_KEYS`; no patient-identifying attribute is ever copied
  into a payload, a message or a log);
- :mod:`ingest.dicom_geometry`: frame positions, the stack's checks, the RAS affine (slices
  ordered along the slice normal, never by file name or InstanceNumber);
- :mod:`ingest.dicom_series`: a series, how it opens, its identity (sha256);
- :mod:`ingest.dicom_pixels`: the lazy, checked decode;
- :mod:`ingest.skipped`: what is left out, and the kinds counted in the ingest summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from ingest.dicom_grouping import META_KEYS, ScannedInstance, group_series, scanned_instance
from ingest.dicom_header import DEFER_BYTES, HEADER_MAX_BYTES, MAX_HEADER_READS, read_header
from ingest.dicom_series import DicomSeries, DicomVolumeFile, datasets_digest
from ingest.reader import MAX_VOXELS, Limits, VolumeFile
from ingest.skipped import (
    BAD_FILE,
    DUPLICATE,
    INCONSISTENT_SERIES,
    LOCALIZER,
    NON_IMAGE_DICOM,
    TOO_LARGE,
    UNKNOWN_TYPE,
    UNSAFE_PATH,
    UNSUPPORTED_IMAGE,
    Skipped,
)
from medir.errors import VolumeError

#: What a scan allows a file to declare when it is given no limits: the absolute ceiling (the
#: settings' limits, which may be raised up to it, are checked when a series is opened).
SCAN_LIMITS = Limits(MAX_VOXELS, MAX_VOXELS * 8)


def _read_header(path: Path, pixels: bool = False) -> Dataset:
    """:func:`ingest.dicom_header.read_header` under this module's :data:`MAX_HEADER_READS`,
    looked up at each call: the scan's bound on reads is the one set here."""
    return read_header(path, pixels=pixels, max_reads=MAX_HEADER_READS)


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

    One header is read at a time and only its :class:`ScannedInstance` is kept; a file
    declaring more voxels or bytes than ``limits`` (None: :data:`SCAN_LIMITS`) leaves its
    series out."""
    skipped: list[Skipped] = []
    instances: list[ScannedInstance] = []
    for path in files:
        try:
            ds = _read_header(path)
        except VolumeError as exc:
            skipped.append(Skipped(str(path), BAD_FILE, exc.reason))
            continue
        instances.append(scanned_instance(str(path), ds, limits or SCAN_LIMITS))
        del ds
    series, more = group_series(instances, is_file=True)
    return series, skipped + more


def series_from_datasets(datasets: Iterable[Dataset], label: str = ""
                         ) -> tuple[list[DicomSeries], list[Skipped]]:
    """Image series from in-memory datasets (pixel data included), e.g. retrieved by WADO-RS.

    ``label`` names the origin in messages (a URL without credentials); each dataset is named
    ``<label> instance <SOPInstanceUID>``.
    """
    instances = [scanned_instance(f"{label} instance {ds.get('SOPInstanceUID', '?')}".strip(),
                                  ds, SCAN_LIMITS, keep=True) for ds in datasets]
    series, skipped = group_series(instances, is_file=False)
    for s in series:
        if label:
            s.label = label
    return series, skipped


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


__all__ = [
    "BAD_FILE",
    "DEFER_BYTES",
    "DUPLICATE",
    "HEADER_MAX_BYTES",
    "INCONSISTENT_SERIES",
    "LOCALIZER",
    "MAX_HEADER_READS",
    "META_KEYS",
    "NON_IMAGE_DICOM",
    "SCAN_LIMITS",
    "TOO_LARGE",
    "UNKNOWN_TYPE",
    "UNSAFE_PATH",
    "UNSUPPORTED_IMAGE",
    "DicomSeries",
    "DicomVolumeFile",
    "Skipped",
    "datasets_digest",
    "looks_like_dicom",
    "open_dicom_folder",
    "scan_dicom",
    "series_from_datasets",
]
