"""The intensity domain of a volume, from its voxel values alone: CT in Hounsfield units (``hu``)
or anything else (``non-hu``: MR, PET, already windowed or normalised images).

The domain keeps a query from crossing the CT/MR divide by accident: every stored volume carries
its domain in the payload (``domain``), and a query is restricted to volumes of its own domain
unless the user asks for cross-modality search. It is decided from voxel values only, never
from labels, file names or DICOM tags, so it works the same for a NIfTI without a header and
for a DICOM series whose Modality tag is wrong or missing.

:func:`ingest.preprocess.looks_like_hu` (air at −1000 HU) is the first test, but alone it
misses three kinds of real CT:

- a **crop without air** (a radiomics or cardiac crop inside the body): no voxel near −1000,
  but fat (−120…−60 HU) and lung (−900…−500 HU) give a share of clearly negative values on a
  scale of hundreds, which magnitude MR never has (its rare negatives are interpolation ringing
  of a few units);
- **CT stored without the rescale** (raw values HU + 1024, unsigned): the soft-tissue peak sits
  at 1024 ± 100 and most body voxels lie within 874…1174; an MR whose values happen to put
  some tissue there spreads its body voxels much wider (measured: ≤ 39 % in that band for MR,
  ≥ 60 % for CT, on every real volume and perturbation of the evaluation collection), and
  CT has bone above the soft tissue (≥ 0.57 % of the body above 300 HU, measured);
- a **brain-windowed CT** (values clipped to a 0…80 HU window, as the CT head atlas of the demo
  collection): background exactly 0, the brain's values at 20…45 HU and almost nothing above
  100. An MR with that range and shape would also be called ``hu``; none was found.

What this cannot tell: an MR rescaled so that it mimics one of these signatures. The decision is
a default for the filter, and ``cross_modality`` (``medir search --cross-modality``) turns it
off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.preprocess import looks_like_hu
from search.domain import DOMAINS, HU, NON_HU, opposite

__all__ = ["DOMAINS", "HU", "NON_HU", "DomainDecision", "intensity_domain", "opposite"]
_SAMPLE = 1_000_000

#: Raw CT stored without the rescale slope/intercept: HU + this offset (unsigned storage).
RAW_CT_OFFSET = 1024.0


@dataclass(frozen=True)
class DomainDecision:
    """A volume's intensity domain (``hu`` or ``non-hu``) and, in words, the evidence."""

    domain: str
    reason: str

    @property
    def is_hu(self) -> bool:
        return self.domain == HU


def _sample(data: np.ndarray) -> np.ndarray:
    flat = np.asarray(data).reshape(-1)
    if flat.size > _SAMPLE:
        flat = flat[:: flat.size // _SAMPLE]
    flat = flat.astype(np.float64, copy=False)
    return flat[np.isfinite(flat)]


def _signed_tissue(v: np.ndarray) -> bool:
    """Fat and lung without air: ≥ 5 % of the voxels in −1100…−50 HU, on a CT-sized scale."""
    p05, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
    if not (p05 >= -3100.0 and p995 <= 4000.0 and -1000.0 <= p50 <= 1000.0):
        return False
    return float(np.mean((v < -50.0) & (v >= -1100.0))) >= 0.05


def _raw_ct(v: np.ndarray) -> bool:
    """HU + 1024 without the rescale: unsigned values, air near 0, most body voxels (above
    −550 HU) within −150…150 HU around a soft-tissue or fat peak at −150…130 HU, and some bone
    (≥ 0.2 % of the body above 300 HU; a flat phantom at 1000 has none)."""
    if float(np.percentile(v, 0.5)) < -50.0:
        return False
    hu = v - RAW_CT_OFFSET
    body = hu[(hu > -550.0) & (hu < 3000.0)]
    if body.size < 0.2 * v.size or float(np.mean(hu < -500.0)) < 0.02:
        return False
    counts, edges = np.histogram(body, bins=np.arange(-550.0, 3000.0 + 20.0, 20.0))
    peak = float(edges[int(np.argmax(counts))] + 10.0)
    band = float(np.mean((body > -150.0) & (body < 150.0)))
    bone = float(np.mean(body > 300.0))  # ≥ 0.57 % of the body on every real CT measured
    return -150.0 <= peak <= 130.0 and band >= 0.5 and bone >= 0.002


def _brain_window(v: np.ndarray) -> bool:
    """A CT clipped to a brain window: background at 0, the foreground's peak at 15…60 HU and
    99 % of all voxels at or below 100."""
    p05, p99 = np.percentile(v, [0.5, 99.0])
    if not (-100.0 <= p05 <= 5.0 and p99 <= 100.0):
        return False
    fg = v[(v > 10.0) & (v < 400.0)]  # above the background (and its Rician noise floor)
    if fg.size < 0.02 * v.size:
        return False
    counts, edges = np.histogram(fg, bins=np.arange(10.0, 405.0, 5.0))
    peak = float(edges[int(np.argmax(counts))] + 2.5)
    return 15.0 <= peak <= 60.0


def intensity_domain(data: np.ndarray) -> DomainDecision:
    """The intensity domain of a volume's voxels (any shape), with the reason."""
    v = _sample(data)
    if v.size == 0:
        return DomainDecision(NON_HU, "no finite voxel values")
    if looks_like_hu(v):
        return DomainDecision(HU, "air at about -1000 HU")
    if _signed_tissue(v):
        return DomainDecision(HU, "fat or lung below -50 HU without air (a crop inside the body)")
    if _raw_ct(v):
        return DomainDecision(HU, "CT stored without its rescale (HU + 1024)")
    if _brain_window(v):
        return DomainDecision(HU, "a CT clipped to a brain window (0-80 HU)")
    return DomainDecision(NON_HU, "no Hounsfield signature (air at -1000, fat below -50, a "
                                  "soft-tissue peak at 0-80 HU)")
