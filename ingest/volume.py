"""The in-memory volume: axial slices in canonical RAS orientation, with spacing and identity."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """One 3D volume, ready for slicing.

    ``data`` has shape (Z, Y, X): ``data[k]`` is the k-th axial slice, from inferior (k=0) to
    superior, displayed with anterior at the top and the patient's right on the image's left
    (radiological convention). ``spacing`` is (x, y, z) in mm in the same canonical frame.
    """

    volume_id: str  # case id, or "<case>#<k>" for the k-th volume of a 4D file
    case_id: str
    data: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    sha256: str  # of the source file's bytes
    index_4d: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Source metadata for display and filters (DICOM UIDs, Modality, BodyPartExamined); never
    # patient-identifying, never used for ranking.
    meta: dict[str, str] = field(default_factory=dict)
    # Problems repaired while reading (e.g. NaN voxels set to the background); never stored.
    warnings: list[str] = field(default_factory=list)
    # Intensity domain decided from the voxels at ingest (ingest.intensity_domain: "hu" or
    # "non-hu"; empty: not decided). Stored as the payload's ``domain``; queries stay in theirs.
    domain: str = ""

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])

    @property
    def z_mm(self) -> np.ndarray:
        """Position of each axial slice along z in mm, from the first slice."""
        return np.arange(self.n_slices, dtype=np.float64) * self.spacing[2]

    def payload(self) -> dict[str, object]:
        """The volume-level part of each slice's payload in the store."""
        return {
            "volume_id": self.volume_id,
            "case_id": self.case_id,
            "n_slices": self.n_slices,
            "spacing": [float(s) for s in self.spacing],
            "source": self.source,
            "sha256": self.sha256,
            "index_4d": self.index_4d,
            **({"domain": self.domain} if self.domain else {}),
            **{k: v for k, v in self.meta.items() if v},
            **{k: v for k, v in self.labels.items() if v},
        }
