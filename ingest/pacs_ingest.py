"""Ingest PACS series (:class:`ingest.dicomweb.PacsSeries`) in this process, through the same
stages as files (:func:`ingest.pipeline.ingest_paths`): a series is one more source
(:class:`PacsSource`).

Before a series is retrieved, the write stage (which owns the store) answers its pre-check:
a non-image series (SR, SEG, ...) is skipped, and a series already indexed with the same
instances is skipped after one QIDO-RS request, without a WADO-RS retrieval. Otherwise the read
stage retrieves it (in memory) and reads it; it holds one series at a time and releases its
datasets before the volume is windowed, so memory stays bounded by the hand-over queue. Through
the queue each series is one ``ingest_volume`` task instead
(:func:`runner.queue.submit.submit_series`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from ingest.dicomweb import (
    NON_IMAGE_MODALITIES,
    PacsClient,
    PacsSeries,
    PacsUnavailable,
    Target,
    already_indexed,
)
from ingest.embedders.base import Embedder
from ingest.pipeline import IngestReport, LabelMap, ProgressFn, ingest_paths
from ingest.reader import Limits, VolumeFile
from ingest.stages.read import Source
from medir.errors import MedirError
from search.store import COMPLETE, Filter, SliceStore


class PacsSource(Source):
    """One PACS series as a source, retrieved through a client shared by the whole ingest.

    A server that refuses us or cannot be reached (:class:`PacsUnavailable`) stops the ingest:
    it would fail every series the same way. Any other failure fails this series alone, its
    message naming the series (a PACS error names the server)."""

    checks_store = True

    def __init__(self, series: PacsSeries, client: PacsClient) -> None:
        self.series = series
        self.client = client
        self.volume_id = series.volume_id
        self.source = self.path = series.source

    def open(self, limits: Limits | None = None) -> VolumeFile:
        return self.series.open(self.client, limits)

    def fatal(self, exc: MedirError) -> bool:
        return isinstance(exc, PacsUnavailable)

    def failed(self, path: str, volume_id: str, exc: MedirError, t0: float) -> IngestReport:
        text = str(exc)  # one line
        return IngestReport(self.source, volume_id, "failed", seconds=time.perf_counter() - t0,
                            error=text if self.volume_id in text else f"{self.volume_id}: {text}")

    def precheck(self, store: SliceStore, coll: str, space: str) -> IngestReport | None:
        s = self.series
        t0 = time.perf_counter()
        try:
            if s.ref.modality.upper() in NON_IMAGE_MODALITIES:
                return IngestReport(s.source, s.volume_id, "skipped",
                                    error=f"non-image DICOM ({s.ref.modality} series)")
            if already_indexed(store, coll, s, space, self.client):
                n = store.count(coll, Filter({"volume_id": s.volume_id, "embedder": space,
                                              "state": COMPLETE}))
                return IngestReport(s.source, s.volume_id, "skipped", n)
        except MedirError as exc:
            if self.fatal(exc):
                raise
            return self.failed(s.source, s.volume_id, exc, t0)
        return None


def pacs_sources(series: Iterable[PacsSeries], client: PacsClient) -> Iterator[PacsSource]:
    """``series`` as sources sharing ``client`` (taken one at a time by the read stage)."""
    for s in series:
        yield PacsSource(s, client)


def ingest_series(
    series: Iterable[PacsSeries],
    store: SliceStore,
    embedder: Embedder,
    *,
    target: Target,
    labels: LabelMap | None = None,
    intensity: str = "auto",
    upsert_batch: int = 512,
    progress: ProgressFn | None = None,
    on_report: Callable[[IngestReport], None] | None = None,
    limits: Limits | None = None,
) -> list[IngestReport]:
    """Index each series; a bad series (unreadable, undeliverable, too large or too slow to
    retrieve) is reported as failed and the others go on.

    A server that refuses us or cannot be reached raises :class:`PacsUnavailable`: it would
    fail every series the same way. As for files, without a labels table (``labels=None``)
    a re-ingested series keeps the labels stored for it.
    """
    with PacsClient(target) as client:
        return ingest_paths(pacs_sources(series, client), store, embedder,
                            labels=labels, intensity=intensity,
                            upsert_batch=upsert_batch, progress=progress, on_report=on_report,
                            limits=limits)
