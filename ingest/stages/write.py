"""The write stage (calling thread; every store call of a bulk ingest is made here).

For each volume read it first settles whether it needs embedding at all
(:func:`ingest.versions.decide`: skip an unchanged volume, relabel one whose labels alone
changed) and answers a source's pre-check (:class:`ingest.stages.handover.Ask`). It then
collects a volume's embedded rows and writes the volume once all are in (a new generation,
pending → ready, :func:`write_volume`). Written volumes are flushed together at most every
``flush_every`` seconds (a Qdrant Edge flush costs ≈ 0.3 s, more than embedding a small
volume) and reported after their flush, so "indexed" still means durable; reports leave in
input order. A volume that fails is reported and the others go on; a full disk stops
everything (every later volume would fail the same way).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ingest import versions
from ingest.embedders.base import Embedder
from ingest.report import IngestReport
from ingest.stages.handover import Ask, Chunk, Start
from ingest.stages.stats import PipelineStats
from ingest.volume import Volume
from medir.config import vector_space_id
from medir.errors import DiskFull, MedirError
from search.live import check_layout
from search.store import SlicePoint, SliceStore, collection_name, new_generation

# progress(volume_id, slices_done, slices_total)
ProgressFn = Callable[[str, int, int], None]


def slice_points(volume: Volume, vectors: np.ndarray, embedder: Embedder,
                 intensity: str, gen: str = "") -> list[SlicePoint]:
    """One point per slice of one generation (:func:`ingest.versions.slice_points`), stored
    under the vector space of the model and the spec's geometry (:func:`vector_space_id`)."""
    return versions.slice_points(volume, vectors, vector_space_id(embedder.embedder_id, intensity),
                                 embedder.name, embedder.info.version, intensity, gen)


def open_collection(store: SliceStore, embedder: Embedder) -> str:
    """The collection of ``embedder``, created if new; one clear error for another dimension
    or a collection written before volume identities."""
    coll = collection_name(embedder.name)
    store.check_space()  # a full disk: one line before anything is read or embedded
    store.ensure_collection(coll, embedder.dim)
    if store.collection_dim(coll) != embedder.dim:
        raise MedirError(f"collection {coll} holds {store.collection_dim(coll)}-d vectors but "
                         f"{embedder.name} makes {embedder.dim}-d ones")
    check_layout(store, coll)
    return coll


def write_volume(store: SliceStore, coll: str, embedder: Embedder, volume: Volume,
                 vectors: np.ndarray, mode: str, upsert_batch: int, flush: bool = True,
                 gen: str | None = None) -> bool:
    """Write a fully embedded volume as a new generation (:func:`ingest.versions.write_version`).

    Returns False when a concurrent write of the same volume won. On any failure the new
    generation's pending points are removed and the error is raised again; the live version
    stays. ``flush=False`` leaves persisting to the caller (bulk ingest flushes once per
    interval).
    """
    g = gen or new_generation()
    points = slice_points(volume, vectors, embedder, mode, g)
    won = versions.write_version(store, coll, points, volume.volume_id, g, upsert_batch)
    if flush:
        store.flush()
    return won


def settle(store: SliceStore, coll: str, volume: Volume, embedder: Embedder, mode: str,
           force: bool, labels_given: bool) -> IngestReport | None:
    """Skip or relabel an already indexed volume; None when it must be embedded."""
    action = versions.decide(store, coll, volume, vector_space_id(embedder.embedder_id, mode),
                             mode, force, labels_given)
    if action == versions.EMBED:
        return None
    if action == versions.RELABEL:
        versions.relabel(store, coll, volume)
    status = "relabelled" if action == versions.RELABEL else "skipped"
    return IngestReport(volume.source, volume.volume_id, status, volume.n_slices,
                        duplicate_of=versions.duplicates_of(store, coll, volume))


@dataclass
class _Open:
    """A volume being embedded: vectors filled as batches come back, written when full."""

    start: Start
    vectors: np.ndarray
    filled: int = 0
    report: IngestReport | None = None  # set once flushed (or failed)
    won: bool = True


class Writer:
    """Settles, collects, writes, flushes and reports volumes, in input order."""

    def __init__(self, store: SliceStore, coll: str, embedder: Embedder, stats: PipelineStats,
                 *, intensity: str, upsert_batch: int, flush_every: float, force: bool,
                 labels_given: bool, progress: ProgressFn | None = None,
                 on_report: Callable[[IngestReport], None] | None = None) -> None:
        self.store, self.coll, self.embedder, self.stats = store, coll, embedder, stats
        self.intensity, self.upsert_batch, self.flush_every = intensity, upsert_batch, flush_every
        self.force, self.labels_given = force, labels_given
        self.progress, self.on_report = progress, on_report
        self.reports: list[IngestReport] = []  # emitted, in input order
        self.order: deque[_Open | IngestReport] = deque()  # not yet emitted, in input order
        self.open: dict[int, _Open] = {}  # by seq: started, not yet written
        self.unflushed: list[_Open] = []  # written, reported once flushed
        self.last_flush = time.perf_counter()

    # -- before embedding --
    def answer(self, ask: Ask) -> None:
        """Answer a source's pre-check; an error (a PACS that cannot be reached) is raised
        and leaves the question unanswered (the reader is stopped)."""
        t0 = time.perf_counter()
        try:
            space = vector_space_id(self.embedder.embedder_id, self.intensity)
            ask.report = ask.source.precheck(self.store, self.coll, space)
        finally:
            self.stats.settle_s += time.perf_counter() - t0
        if ask.report is not None:
            self.order.append(ask.report)
        ask.answered.set()

    def add(self, report: IngestReport) -> None:
        """A report decided upstream (a source or volume that could not be read)."""
        self.order.append(report)

    def begin(self, start: Start) -> None:
        """A volume read: skip or relabel it (its chunks are then cancelled), or open it."""
        v = start.volume
        t0 = time.perf_counter()
        try:
            settled = settle(self.store, self.coll, v, self.embedder, start.mode, self.force,
                             self.labels_given)
        except MedirError as exc:
            settled = start.source.failed(v.source, v.volume_id, exc, start.t0)
        finally:
            self.stats.settle_s += time.perf_counter() - t0
        if settled is not None:
            start.cancel.set()
            self.order.append(settled)
            return
        vol = _Open(start, np.empty((v.n_slices, self.embedder.dim), np.float32))
        self.open[start.seq] = vol
        self.order.append(vol)
        self.stats.peak_open_volumes = max(self.stats.peak_open_volumes, len(self.open))
        if v.n_slices == 0:
            self._write(vol)

    def is_open(self, seq: int) -> bool:
        """Whether volume ``seq`` still wants its slices (not skipped, failed or written)."""
        return seq in self.open

    # -- after embedding --
    def fill(self, chunk: Chunk, rows: np.ndarray) -> None:
        """The embedded rows of ``chunk``; the volume is written once all its rows are in."""
        vol = self.open.get(chunk.seq)
        if vol is None:  # the volume failed while this chunk was on its way
            return
        vol.vectors[chunk.start:chunk.start + chunk.rows] = rows
        vol.filled += chunk.rows
        n = vol.start.volume.n_slices
        if self.progress is not None:
            self.progress(vol.start.volume.volume_id, vol.filled, n)
        if vol.filled == n:
            self._write(vol)

    def fail(self, seqs: Iterable[int], exc: MedirError) -> None:
        """Volumes ``seqs`` failed (their batch could not be embedded); the others go on."""
        for seq in dict.fromkeys(seqs):
            if seq in self.open:
                self._fail(self.open[seq], exc)

    def emit(self) -> None:
        """Release the reports that are due: in input order, a written volume's once flushed."""
        while self.order:
            head = self.order[0]
            if isinstance(head, _Open):
                if head.report is None:
                    return
                rep = head.report
            else:
                rep = head
            self.order.popleft()
            self.reports.append(rep)
            if self.on_report is not None:
                self.on_report(rep)

    def finish(self) -> None:
        """End of stream: flush what is written and release every report."""
        self._flush(force=True)
        self.emit()

    def close(self) -> None:
        """After an error: persist the volumes already written (their reports are lost with
        the error, their points are ready)."""
        if self.unflushed:
            try:
                self.store.flush()
            except Exception:
                pass

    # -- the writes --
    def _write(self, vol: _Open) -> None:
        t0 = time.perf_counter()
        v = vol.start.volume
        try:
            vol.won = write_volume(self.store, self.coll, self.embedder, v, vol.vectors,
                                   vol.start.mode, self.upsert_batch, flush=False,
                                   gen=vol.start.gen)
        except DiskFull:  # every later volume would fail the same way: stop here
            raise
        except MedirError as exc:  # e.g. the store refused it; pending points are removed
            self._fail(vol, exc)
            return
        finally:
            self.stats.upsert_s += time.perf_counter() - t0
        self.stats.volumes += 1
        del self.open[vol.start.seq]
        self.unflushed.append(vol)
        self._flush()

    def _fail(self, vol: _Open, exc: MedirError) -> None:
        v = vol.start.volume
        vol.start.cancel.set()
        vol.report = vol.start.source.failed(v.source, v.volume_id, exc, vol.start.t0)
        del self.open[vol.start.seq]

    def _flush(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.unflushed or (not force and now - self.last_flush < self.flush_every):
            return
        self.store.flush()
        self.last_flush = time.perf_counter()
        self.stats.upsert_s += self.last_flush - now
        self.stats.flushes += 1
        for vol in self.unflushed:
            v = vol.start.volume
            vol.report = IngestReport(v.source, v.volume_id,
                                      "indexed" if vol.won else "superseded", v.n_slices,
                                      self.last_flush - vol.start.t0,
                                      duplicate_of=versions.duplicates_of(self.store, self.coll,
                                                                          v),
                                      warnings=list(v.warnings))
        self.unflushed.clear()
