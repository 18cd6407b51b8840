"""What the edges (the UI's pages, the CLI) use of the library besides the runner's methods:
the option, source and report types they build or show, the parsers behind their widgets, the
upload checks, and a volume read for display.

The UI imports these from here, never from :mod:`ingest` or :mod:`search` (an import-linter
contract in pyproject.toml): the work itself goes through :func:`runner.get_runner`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ingest.collection import (
    PRIVATE_MARKER,
    CollectionScan,
    VolumeSource,
    file_source,
    scan_paths,
)
from ingest.dicomweb import UID_RE
from ingest.pipeline import IngestReport
from ingest.preprocess import normalize_intensity
from ingest.reader import VOLUME_SUFFIXES, Limits, open_volume
from search.query import QueryOptions, configured_options
from search.sampling import Sampling, Weighting
from search.store import LABEL_KEYS, collection_name

__all__ = [
    "PRIVATE_MARKER",
    "LABEL_KEYS",
    "UID_RE",
    "VOLUME_SUFFIXES",
    "IngestReport",
    "Limits",
    "QueryOptions",
    "Sampling",
    "CollectionScan",
    "VolumeSource",
    "Weighting",
    "collection_name",
    "configured_options",
    "display_volume",
    "file_source",
    "model_names",
    "open_volume",
    "scan_paths",
]


def model_names(plugins: tuple[str, ...] = ()) -> list[str]:
    """The registered models, the ``plugins`` modules' included."""
    from ingest.embedders import model_names as names
    from ingest.embedders import use_plugins

    use_plugins(plugins)
    return names()


def display_volume(source: str, index_4d: int | None = None,
                   limits: Limits | None = None) -> NDArray[np.uint8]:
    """A volume file as 8-bit display slices (Z, Y, X); raises VolumeError when unreadable
    (``limits``: what the file may declare, the settings')."""
    vf = open_volume(source, limits)
    vol = vf.read((index_4d or 0) if vf.is_4d else None)
    norm = normalize_intensity(vol.data, "auto")
    return np.asarray(np.clip(norm, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)
