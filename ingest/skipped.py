"""What an ingest leaves out: one :class:`Skipped` per file or series, and the kinds counted.

Its own module because the folder walk (:mod:`ingest.collection`), the DICOM scan
(:mod:`ingest.dicom`) and the ingest report (:mod:`ingest.summary`) all speak it, and none of
them should need pydicom to do so.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Skipped:
    """A file (or a whole series) left out of an ingest, and why."""

    path: str
    kind: str  # one of the constants above
    reason: str


__all__ = [
    "BAD_FILE",
    "DUPLICATE",
    "INCONSISTENT_SERIES",
    "LOCALIZER",
    "NON_IMAGE_DICOM",
    "TOO_LARGE",
    "UNKNOWN_TYPE",
    "UNSAFE_PATH",
    "UNSUPPORTED_IMAGE",
    "Skipped",
]
