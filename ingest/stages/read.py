"""The read stage (reader thread): a source → its 3D volumes, one at a time.

A :class:`Source` is anything the stage can open as a :class:`ingest.reader.VolumeFile`: a
file or a DICOM series found on disk (:class:`FileSource`, around
:class:`ingest.collection.VolumeSource`), or a PACS series retrieved over DICOMweb
(:class:`ingest.pacs_ingest.PacsSource`). A source also says how its failures are reported,
which of them stop the whole ingest, and whether the write stage must be asked before it is
opened (a cheap check that skips a retrieval). A source that cannot be opened, or a volume that
cannot be read, becomes a failed report and the next one is read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from ingest.collection import VolumeSource, file_source, labels_for
from ingest.reader import Limits, VolumeFile
from ingest.report import IngestReport
from ingest.stages.stats import PipelineStats
from ingest.volume import Volume
from medir.errors import MedirError, VolumeError
from search.store import SliceStore

LabelMap = Mapping[str, Mapping[str, str]]


class Source:
    """One thing to ingest (one or more volumes) under its base volume id."""

    volume_id: str = ""
    source: str = ""  # shown with results (reports of a source that cannot be opened)
    path: str = ""  # named by the report of a volume that cannot be read
    #: The write stage is asked (:meth:`precheck`, on the calling thread) before opening.
    checks_store: ClassVar[bool] = False

    def open(self, limits: Limits | None = None) -> VolumeFile:
        """Open (headers only, or a retrieval into memory); raises :class:`MedirError`."""
        raise NotImplementedError

    def labels(self, table: LabelMap | None, volume_id: str) -> dict[str, str]:
        """The labels of one of its volumes from a labels table."""
        return labels_for(table, volume_id)

    def fatal(self, exc: MedirError) -> bool:
        """Whether ``exc``, raised opening this source, stops the whole ingest (every other
        source would fail the same way) instead of failing this source alone."""
        return False

    def failed(self, path: str, volume_id: str, exc: MedirError, t0: float) -> IngestReport:
        """The report of one of its volumes that failed (``t0``: when its work began)."""
        return IngestReport(path, volume_id, "failed", error=str(exc))

    def precheck(self, store: SliceStore, coll: str, space: str) -> IngestReport | None:
        """Calling thread, before :meth:`open` (only when :attr:`checks_store`): a report
        when the source must not be read (already indexed, not an image); None to read it."""
        return None


class FileSource(Source):
    """A volume file or a DICOM series on disk (:class:`VolumeSource`)."""

    def __init__(self, src: VolumeSource) -> None:
        self.src = src
        self.volume_id = src.volume_id
        self.source = src.source
        self.path = str(src.path)

    def open(self, limits: Limits | None = None) -> VolumeFile:
        return self.src.open(limits)

    def labels(self, table: LabelMap | None, volume_id: str) -> dict[str, str]:
        return labels_for(table, volume_id, self.src)

    def fatal(self, exc: MedirError) -> bool:
        return not isinstance(exc, VolumeError)  # a bad file is the file's problem alone


def as_source(raw: str | Path | VolumeSource | Source) -> Source:
    """A path given as such is a file given directly (its id: the name without the suffix)."""
    if isinstance(raw, Source):
        return raw
    return FileSource(raw if isinstance(raw, VolumeSource) else file_source(raw))


def sequential(vf: VolumeFile) -> VolumeFile:
    """The same file with one persistent file handle for a 4D NIfTI.

    nibabel opens (and for ``.gz`` decompresses from byte 0) the file again for every
    ``dataobj[..., k]``: reading all K volumes of a 4D ``.nii.gz`` decompresses O(K²) bytes.
    With ``keep_file_open=True`` the gzip stream stays open and volume k+1 starts where volume
    k ended, so the file is decoded once.
    """
    if not vf.is_4d or not str(vf.path).lower().endswith((".nii", ".nii.gz")):
        return vf
    import nibabel as nib

    try:
        proxy = nib.load(str(vf.path), keep_file_open=True).dataobj  # type: ignore[attr-defined]
    except Exception:  # open_volume accepted it; keep its proxy and let read() report errors
        return vf
    return dataclasses.replace(vf, _proxy=proxy)


class Reader:
    """Opens sources and reads their volumes, timed as ``read_s``."""

    def __init__(self, labels: LabelMap | None, limits: Limits | None,
                 stats: PipelineStats) -> None:
        self.labels = labels
        self.limits = limits
        self.stats = stats

    def open(self, src: Source) -> VolumeFile | IngestReport:
        """The source's volume file, or the report of a source that cannot be opened; an
        error the source calls fatal is raised."""
        t0 = time.perf_counter()
        try:
            return sequential(src.open(self.limits))
        except MedirError as exc:
            if src.fatal(exc):
                raise
            return src.failed(src.source, src.volume_id, exc, t0)
        finally:
            self.stats.read_s += time.perf_counter() - t0

    def read(self, src: Source, vf: VolumeFile, k: int) -> Volume:
        """The ``k``-th volume of ``vf`` with its labels; raises :class:`MedirError`."""
        t0 = time.perf_counter()
        try:
            vol = vf.read(k if vf.is_4d else None)
            vol.labels = src.labels(self.labels, vol.volume_id)
            return vol
        finally:
            self.stats.read_s += time.perf_counter() - t0
