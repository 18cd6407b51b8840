"""The intensity domains a stored volume and a query belong to (decided from voxels by
:mod:`ingest.intensity_domain`): CT in Hounsfield units, or not. A query keeps out stored
volumes of the other domain unless it asks for cross-modality search."""

from __future__ import annotations

HU, NON_HU = "hu", "non-hu"
DOMAINS = (HU, NON_HU)


def opposite(domain: str) -> str:
    """The other domain (``hu`` ↔ ``non-hu``); empty for an unknown one."""
    return {HU: NON_HU, NON_HU: HU}.get(domain, "")
