"""Ingest PACS series (:class:`ingest.dicomweb.PacsSeries`) in this process.

In-process, series are handled one at a time: a cheap QIDO-RS check skips a series already
indexed with the same instances, otherwise it is retrieved (WADO-RS, in memory), read and
indexed with :func:`ingest.pipeline.index_volume` (idempotent: content hash + embedder), and
its datasets are released before the next series is retrieved. Through the queue each series
is one ``ingest_volume`` task instead (:func:`runner.queue.submit.submit_series`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ingest.dicomweb import (
    NON_IMAGE_MODALITIES,
    PacsClient,
    PacsSeries,
    PacsUnavailable,
    Target,
    already_indexed,
)
from ingest.embedders.base import Embedder
from ingest.pipeline import IngestReport, LabelMap, ProgressFn, index_volume, labels_for
from ingest.reader import Limits
from medir.config import vector_space_id
from medir.errors import MedirError
from search.store import COMPLETE, Filter, SliceStore, collection_name


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
    fail every series the same way.
    """
    reports: list[IngestReport] = []
    coll = collection_name(embedder.name)
    space = vector_space_id(embedder.embedder_id, intensity)  # model version + geometry
    with PacsClient(target) as client:
        for s in series:
            t0 = time.perf_counter()
            try:
                if s.ref.modality.upper() in NON_IMAGE_MODALITIES:
                    rep = IngestReport(s.source, s.volume_id, "skipped",
                                       error=f"non-image DICOM ({s.ref.modality} series)")
                elif already_indexed(store, coll, s, space, client):
                    n = store.count(coll, Filter({"volume_id": s.volume_id,
                                                  "embedder": space,
                                                  "state": COMPLETE}))
                    rep = IngestReport(s.source, s.volume_id, "skipped", n)
                else:
                    vol = s.open(client, limits).read()
                    vol.labels = labels_for(labels, vol.volume_id)
                    rep = index_volume(store, embedder, vol, intensity=intensity,
                                       upsert_batch=upsert_batch, progress=progress)
                    del vol
            except PacsUnavailable:
                raise
            except MedirError as exc:
                text = str(exc)  # one line; a PACS error names the server, not the series
                rep = IngestReport(s.source, s.volume_id, "failed",
                                   seconds=time.perf_counter() - t0,
                                   error=text if s.volume_id in text else
                                   f"{s.volume_id}: {text}")
            reports.append(rep)
            if on_report is not None:
                on_report(rep)
    return reports
