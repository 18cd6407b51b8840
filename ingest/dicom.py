"""DICOM series → canonical RAS volumes (contract; implemented by the DICOM work).

The folder walker (``ingest/collection.py``) hands every file that looks like DICOM to
:func:`scan_dicom`, which groups them by SeriesInstanceUID, reads headers only, and returns one
:class:`DicomSeries` per usable image series plus one :class:`Skipped` per file or series left
out, with its reason. :meth:`DicomSeries.open` returns a :class:`ingest.reader.VolumeFile`
whose ``read()`` gives the same canonical RAS :class:`~ingest.volume.Volume` as NIfTI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.reader import VolumeFile

# Reasons a file is left out of an ingest, counted in the ingest summary (``kind``).
UNKNOWN_TYPE = "unknown type"
NON_IMAGE_DICOM = "non-image DICOM"
BAD_FILE = "bad file"
DUPLICATE = "duplicate"
INCONSISTENT_SERIES = "inconsistent series"
LOCALIZER = "localizer"
UNSAFE_PATH = "unsafe path"


@dataclass(frozen=True)
class Skipped:
    """A file (or a whole series) left out of an ingest, and why."""

    path: str
    kind: str  # one of the constants above
    reason: str


@dataclass
class DicomSeries:
    """One image series: its files (any order) and display metadata (no patient identifiers)."""

    series_uid: str
    files: list[Path]
    meta: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID, Modality, ...

    def open(self) -> VolumeFile:
        raise NotImplementedError("DICOM reading lands with the DICOM series work")


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
    raise NotImplementedError("DICOM reading lands with the DICOM series work")
