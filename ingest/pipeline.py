"""Index volumes: read → intensity window → embed all axial slices → upsert → mark complete.

A volume is written with ``state="pending"`` points and switched to ``"ready"`` only after its
last batch, so a query never sees half a volume. Re-ingest follows :mod:`ingest.versions`: an
unchanged volume is skipped, a volume whose labels alone changed gets a payload update, and a
changed file (or another model version or intensity mode, or ``force``) is embedded as a new
generation that becomes ready before the old one is retired, so the volume is never missing.
A failure removes only the new generation's pending points.

Bulk ingest (:func:`ingest_paths`) runs four stages (:mod:`ingest.stages`), each timed in
:class:`PipelineStats`, on two threads:

- the **reader** thread: *read* (:mod:`ingest.stages.read`: a file, a DICOM series or a PACS
  series → its volumes, one at a time) and *prepare* (:mod:`ingest.stages.prepare`: intensity
  window, then chunks of ``batch_size`` slices, resized here on a CPU device);
- the **calling** thread: *batch* + *embed* (:mod:`ingest.stages.batch`,
  :mod:`ingest.stages.embed`: chunks → batches of exactly ``batch_size`` rows across volumes →
  forward pass → rows back to their volumes) and *write* (:mod:`ingest.stages.write`: skip or
  relabel, write a complete volume, flush at intervals, report in input order). All store
  calls stay on this thread.

The two threads meet in a queue of at most ``prefetch`` items (:mod:`ingest.stages.handover`),
so memory is one volume being read plus a fixed number of chunks, whatever the number of
volumes. :func:`index_volume` is the one-volume path (a queued job, a single volume).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ingest import versions
from ingest.collection import LabelMap, VolumeSource, labels_for
from ingest.embedders.base import Embedder
from ingest.intensity_domain import intensity_domain
from ingest.preprocess import input_size_of, preprocess_slices, resolve_intensity
from ingest.reader import Limits
from ingest.report import IngestReport
from ingest.stages.batch import Batcher, route
from ingest.stages.embed import embed_batch
from ingest.stages.handover import Ask, Chunk, End, Handover, Settled, Start
from ingest.stages.prepare import Preparer
from ingest.stages.read import Reader, Source, as_source
from ingest.stages.stats import DEFAULT_PREFETCH, PipelineStats
from ingest.stages.write import (
    ProgressFn,
    Writer,
    open_collection,
    settle,
    slice_points,
    write_volume,
)
from ingest.volume import Volume
from medir.errors import MedirError
from search.store import SliceStore, new_generation

__all__ = ["DEFAULT_PREFETCH", "IngestReport", "LabelMap", "PipelineStats", "ProgressFn",
           "embed_volume", "index_volume", "ingest_paths", "labels_for", "open_collection",
           "slice_points", "write_volume"]


def embed_volume(
    volume: Volume,
    embedder: Embedder,
    intensity: str = "auto",
    on_batch: Callable[[int], None] | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Embeddings of every axial slice of ``volume``: (Z, dim) float32, unit rows.

    ``intensity``: a preprocessing spec (:class:`ingest.preprocess.Preprocessing`)."""
    norm = preprocess_slices(volume.data, volume.spacing, resolve_intensity(volume.data, intensity),
                             input_size_of(embedder))
    n = volume.n_slices
    step = chunk or max(embedder.batch_size, 1)
    out = np.empty((n, embedder.dim), dtype=np.float32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = embedder.embed(norm[start:stop])
        if on_batch is not None:
            on_batch(stop)
    return out


def index_volume(
    store: SliceStore,
    embedder: Embedder,
    volume: Volume,
    *,
    intensity: str = "auto",
    upsert_batch: int = 512,
    progress: ProgressFn | None = None,
    force: bool = False,
    labels_given: bool = True,
) -> IngestReport:
    """Index one volume; idempotent; raises on failure after removing its pending points.

    ``labels_given=False``: ``volume.labels`` is not from a labels table; the labels already
    stored for the volume are kept.
    """
    t0 = time.perf_counter()
    gen = new_generation()  # at read time: of two writers, the later read wins
    coll = open_collection(store, embedder)
    mode = resolve_intensity(volume.data, intensity)
    volume.domain = volume.domain or intensity_domain(volume.data).domain  # HU or not, stored
    settled = settle(store, coll, volume, embedder, mode, force, labels_given)
    if settled is not None:
        return settled

    def tick(done: int) -> None:
        if progress is not None:
            progress(volume.volume_id, done, volume.n_slices)

    vectors = embed_volume(volume, embedder, mode, on_batch=tick)
    won = write_volume(store, coll, embedder, volume, vectors, mode, upsert_batch, gen=gen)
    return IngestReport(volume.source, volume.volume_id, "indexed" if won else "superseded",
                        volume.n_slices, time.perf_counter() - t0,
                        duplicate_of=versions.duplicates_of(store, coll, volume),
                        warnings=list(volume.warnings))


def _produce(sources: Iterable[str | Path | VolumeSource | Source], reader: Reader,
             prep: Preparer, feed: Handover) -> None:
    """The reader thread: each source read, each volume prepared, all handed over in input
    order. Returns early when the ingest is stopped."""
    seq = 0
    for raw in sources:
        src = as_source(raw)
        if src.checks_store:  # e.g. a PACS series already indexed: never retrieved
            ask = Ask(src)
            if not feed.ask(ask):
                return
            if ask.report is not None:
                continue
        vf = reader.open(src)
        if isinstance(vf, IngestReport):
            if not feed.put(Settled(vf)):
                return
            continue
        ids = vf.volume_ids()
        for k, vid in enumerate(ids):
            t0, gen = time.perf_counter(), new_generation()  # of two writers, the later read wins
            try:
                vol = reader.read(src, vf, k)
                if k == len(ids) - 1:
                    del vf  # the file (a PACS series' datasets) before the volume is windowed
                win = prep.window(vol)
            except MedirError as exc:
                if not feed.put(Settled(src.failed(src.path, vid, exc, t0))):
                    return
                continue
            del vol  # the raw pixels: only the windowed copy is kept while chunking
            handed = _hand_over(Start(seq, win.meta, win.mode, t0, gen, src), win.slices, prep,
                                feed)
            del win  # before the next volume is read
            if not handed:
                return
            seq += 1


def _hand_over(start: Start, slices: np.ndarray, prep: Preparer, feed: Handover) -> bool:
    """A volume, then its chunks until the write stage cancels it (skipped or failed); False
    when the ingest was stopped."""
    if not feed.put(start):
        return False
    for s in range(0, start.volume.n_slices, prep.step):
        if start.cancel.is_set():
            break
        if not feed.put(prep.chunk(start.seq, slices, s)):
            return False
    return True


def _consume(feed: Handover, batcher: Batcher, writer: Writer, embedder: Embedder,
             stats: PipelineStats) -> None:
    """The calling thread: hand-over items → settled or opened volumes, full batches →
    vectors → written volumes; raises an error of the reader thread."""
    while True:
        item = feed.get()
        if isinstance(item, End):
            if item.error is not None:
                raise item.error
            break
        if isinstance(item, Ask):
            writer.answer(item)
        elif isinstance(item, Settled):
            writer.add(item.report)
        elif isinstance(item, Start):
            writer.begin(item)
        elif not writer.is_open(item.seq):  # a chunk of a skipped or failed volume
            stats.add_buffered(-item.nbytes)
        else:
            for batch in batcher.add(item):
                _embed(batch, embedder, batcher, writer, stats)
        writer.emit()
    if batcher.pending:
        _embed(batcher.take(), embedder, batcher, writer, stats)


def _embed(batch: list[Chunk], embedder: Embedder, batcher: Batcher, writer: Writer,
           stats: PipelineStats) -> None:
    """One batch through the forward pass, its rows to their volumes; when the model cannot
    run, the batch's volumes fail (their slices still waiting are dropped), others go on."""
    try:
        y = embed_batch(embedder, batch, stats)
    except MedirError as exc:
        writer.fail((c.seq for c in batch), exc)
        batcher.drop(writer.is_open)
        return
    for chunk, rows in route(batch, y):
        writer.fill(chunk, rows)


def ingest_paths(
    paths: Iterable[str | Path | VolumeSource | Source],
    store: SliceStore,
    embedder: Embedder,
    *,
    labels: LabelMap | None = None,
    intensity: str = "auto",
    upsert_batch: int = 512,
    progress: ProgressFn | None = None,
    on_report: Callable[[IngestReport], None] | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    flush_every: float = 1.0,
    stats: PipelineStats | None = None,
    force: bool = False,
    limits: Limits | None = None,
) -> list[IngestReport]:
    """Index every volume of every file or source. A bad file is reported, the others go on.

    A path given as such is a file given directly (its volume id is its name without the
    suffix); folders are expanded by :func:`ingest.collection.scan_paths` into sources; a
    :class:`ingest.stages.read.Source` is any other source (a PACS series,
    :func:`ingest.pacs_ingest.ingest_series`). ``force`` re-embeds volumes that are already
    indexed and unchanged. ``limits``: what a volume file may declare (the settings',
    :meth:`ingest.reader.Limits.of`).

    Reading and windowing of the next volumes overlap the embedding of the current ones;
    small volumes share batches (see the module docstring). Written volumes are flushed
    together at most every ``flush_every`` seconds and reported (``on_report``) after their
    flush, so "indexed" still means durable. ``stats`` receives stage times and
    the memory high-water marks. Vectors equal those of :func:`embed_volume` per volume for
    models whose output for a slice does not depend on the other slices of its batch.
    """
    st = stats if stats is not None else PipelineStats()
    st.prefetch, st.batch_size = max(1, prefetch), max(embedder.batch_size, 1)
    t_wall = time.perf_counter()
    writer = Writer(store, open_collection(store, embedder), embedder, st, intensity=intensity,
                    upsert_batch=upsert_batch, flush_every=flush_every, force=force,
                    labels_given=labels is not None, progress=progress, on_report=on_report)
    embedder.load()
    reader, prep = Reader(labels, limits, st), Preparer(embedder, intensity, st)
    feed = Handover(st.prefetch, st)
    feed.start(lambda: _produce(paths, reader, prep, feed))
    try:
        _consume(feed, Batcher(st.batch_size, st), writer, embedder, st)
        writer.finish()
    finally:
        writer.close()  # an error after some volumes were written: persist those
        feed.close()
        st.wall_s = time.perf_counter() - t_wall
    return writer.reports
