"""Index volumes: read → intensity window → embed all axial slices → upsert → mark complete.

A volume is written with ``state="pending"`` points and switched to ``"ready"`` only after its
last batch, so a query never sees half a volume. Re-ingest follows :mod:`ingest.versions`: an
unchanged volume is skipped, a volume whose labels alone changed gets a payload update, and a
changed file (or another model version or intensity mode, or ``force``) is embedded as a new
generation that becomes ready before the old one is retired, so the volume is never missing.
A failure removes only the new generation's pending points.

Bulk ingest (:func:`ingest_paths`) is a two-role pipeline, each role timed:

- a **reader** thread opens each file once, reads its volumes one at a time (a 4D file through
  one persistent file handle, so a ``.gz`` is decompressed once, front to back), windows the
  intensity and cuts the volume into chunks of ``batch_size`` slices. On a CPU device it also
  resizes and normalises each chunk (``Embedder.prepare``) so that this work overlaps the
  forward pass; on CUDA it hands over pinned host chunks and the resize runs on the device;
- the **embedder** (the calling thread) concatenates prepared chunks into full batches, across
  volumes when they are small, runs the forward pass, routes each output row back to its volume
  and writes a volume (upsert, retire older versions, pending → ready) once all its slices are
  embedded. All store calls stay on this thread.

The hand-over is a queue of at most ``prefetch`` chunks, so memory is one volume being read plus
a fixed number of chunks, whatever the number of volumes. Reports come out in input order.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ingest import versions
from ingest.collection import VolumeSource, file_source, labels_for
from ingest.embedders.base import Embedder
from ingest.intensity_domain import intensity_domain
from ingest.preprocess import input_size_of, preprocess_slices, resolve_intensity
from ingest.reader import Limits, VolumeFile
from ingest.volume import Volume
from medir.config import vector_space_id
from medir.errors import DiskFull, MedirError, VolumeError
from search.live import check_layout
from search.store import (
    SlicePoint,
    SliceStore,
    collection_name,
    new_generation,
)

# progress(volume_id, slices_done, slices_total)
ProgressFn = Callable[[str, int, int], None]
LabelMap = Mapping[str, Mapping[str, str]]

DEFAULT_PREFETCH = 4  # chunks of batch_size slices between the reader and the embedder


@dataclass
class IngestReport:
    """What happened to one volume (one 3D volume of a file)."""

    path: str
    volume_id: str
    status: str  # indexed | skipped | relabelled | superseded | failed
    n_slices: int = 0
    seconds: float = 0.0
    error: str = ""
    warnings: list[str] = field(default_factory=list)  # repaired input (e.g. NaN voxels)
    # other volume ids holding the same content (kept as separate volumes, reported)
    duplicate_of: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class PipelineStats:
    """What one :func:`ingest_paths` run measured, per stage and for memory boundedness.

    Stage times are busy seconds of the thread that runs the stage: ``read_s`` and
    ``intensity_resize_s`` on the reader thread, ``embed_s`` and ``upsert_s`` on the calling
    thread; with overlap their sum exceeds ``wall_s``. ``peak_*`` are high-water marks.
    """

    prefetch: int = DEFAULT_PREFETCH
    batch_size: int = 0
    read_s: float = 0.0  # open, hash, read + decompress, reorient
    intensity_resize_s: float = 0.0  # window + (CPU) resize/normalise of each chunk
    embed_s: float = 0.0  # device moves, (CUDA) resize, forward, L2 normalisation
    upsert_s: float = 0.0  # points, upserts, retire, pending → ready, flushes
    wait_s: float = 0.0  # embedder thread waiting for the reader (starved)
    wall_s: float = 0.0
    slices: int = 0  # embedded slices
    volumes: int = 0  # indexed volumes
    batches: int = 0
    flushes: int = 0
    mixed_batches: int = 0  # batches holding slices of more than one volume
    peak_queue_chunks: int = 0
    peak_buffered_bytes: int = 0  # prepared slices queued or waiting for a batch
    peak_open_volumes: int = 0  # volumes started but not yet written
    _buffered: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _add_buffered(self, nbytes: int) -> None:
        with self._lock:
            self._buffered += nbytes
            self.peak_buffered_bytes = max(self.peak_buffered_bytes, self._buffered)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.name.startswith("_")}


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
    interval: a Qdrant Edge flush costs ≈ 0.3 s on this machine's disk, more than embedding a
    small volume).
    """
    g = gen or new_generation()
    points = slice_points(volume, vectors, embedder, mode, g)
    won = versions.write_version(store, coll, points, volume.volume_id, g, upsert_batch)
    if flush:
        store.flush()
    return won


def _settle(store: SliceStore, coll: str, volume: Volume, embedder: Embedder, mode: str,
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
    settled = _settle(store, coll, volume, embedder, mode, force, labels_given)
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


# ---- the pipelined bulk ingest ---------------------------------------------------------------
@dataclass
class _Start:
    """A volume read and windowed; ``volume.data`` is a (Z, 0, 0) placeholder (the pixels
    travel in chunks). The embedder sets ``cancel`` when it skips the volume."""

    seq: int
    volume: Volume
    mode: str
    t0: float
    gen: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Chunk:
    """Slices ``start:start + len(x)`` of volume ``seq``: model input (CPU) or windowed
    slices in pinned host memory (CUDA)."""

    seq: int
    start: int
    x: torch.Tensor
    prepared: bool


@dataclass
class _Failed:
    report: IngestReport


@dataclass
class _Done:
    """End of stream; ``error`` is an unexpected exception raised in the reader thread."""

    error: BaseException | None = None


_Item = _Start | _Chunk | _Failed | _Done


@dataclass
class _Open:
    """A volume on the embedder side: vectors being filled, written when complete."""

    start: _Start
    vectors: np.ndarray
    filled: int = 0
    skipped: bool = False
    report: IngestReport | None = None
    won: bool = True


def _sequential(vf: VolumeFile) -> VolumeFile:
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


def _reader(
    paths: Iterable[str | Path | VolumeSource],
    out: queue.Queue[_Item],
    stop: threading.Event,
    embedder: Embedder,
    labels: LabelMap | None,
    intensity: str,
    stats: PipelineStats,
    limits: Limits | None = None,
) -> None:
    """Producer role: files → volumes → windowed (and on CPU resized) chunks, in order."""
    step = max(embedder.batch_size, 1)
    on_cpu = embedder.device.type == "cpu"
    pin = embedder.device.type == "cuda"

    def put(item: _Item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
            except queue.Full:
                continue
            stats.peak_queue_chunks = max(stats.peak_queue_chunks, out.qsize())
            return True
        return False

    seq = 0
    try:
        for raw in paths:
            src = raw if isinstance(raw, VolumeSource) else file_source(raw)
            path = src.path
            t0 = time.perf_counter()
            try:
                vf = _sequential(src.open(limits))
            except VolumeError as exc:
                stats.read_s += time.perf_counter() - t0
                if not put(_Failed(IngestReport(src.source, src.volume_id, "failed",
                                                error=str(exc)))):
                    return
                continue
            stats.read_s += time.perf_counter() - t0
            for k in range(vf.n_volumes):
                vid = vf.volume_ids()[k]
                t_read = time.perf_counter()
                try:
                    gen = new_generation()
                    vol = vf.read(k if vf.is_4d else None)
                    t_norm = time.perf_counter()
                    stats.read_s += t_norm - t_read
                    vol.labels = labels_for(labels, vol.volume_id, src)
                    mode = resolve_intensity(vol.data, intensity)
                    vol.domain = intensity_domain(vol.data).domain  # HU or not, stored
                    norm = preprocess_slices(vol.data, vol.spacing, mode,
                                             input_size_of(embedder))
                except MedirError as exc:
                    stats.read_s += time.perf_counter() - t_read
                    if not put(_Failed(IngestReport(str(path), vid, "failed",
                                                    error=str(exc)))):
                        return
                    continue
                n = vol.n_slices
                meta = dataclasses.replace(vol, data=np.empty((n, 0, 0), np.float32))
                del vol  # the raw pixels: only the windowed copy is kept while chunking
                start_item = _Start(seq, meta, mode, t_read, gen)
                stats.intensity_resize_s += time.perf_counter() - t_norm
                if not put(start_item):
                    return
                for s in range(0, n, step):
                    if start_item.cancel.is_set():
                        break
                    t1 = time.perf_counter()
                    block = torch.from_numpy(norm[s:s + step])
                    if on_cpu:
                        with torch.inference_mode():
                            x = embedder.prepare(block)
                    else:
                        x = block.pin_memory() if pin else block.clone()
                    stats.intensity_resize_s += time.perf_counter() - t1
                    stats._add_buffered(x.element_size() * x.nelement())
                    if not put(_Chunk(seq, s, x, on_cpu)):
                        return
                del norm
                seq += 1
        put(_Done())
    except BaseException as exc:  # surfaced on the embedder thread
        put(_Done(exc))


def ingest_paths(
    paths: Iterable[str | Path | VolumeSource],
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
    suffix); folders are expanded by :func:`ingest.collection.scan_paths` into sources.
    ``force`` re-embeds volumes that are already indexed and unchanged. ``limits``: what a
    volume file may declare (the settings', :meth:`ingest.reader.Limits.of`).

    Reading and windowing of the next volumes overlap the embedding of the current ones;
    small volumes share batches (see the module docstring). Written volumes are flushed
    together at most every ``flush_every`` seconds and reported (``on_report``) after their
    flush, so "indexed" still means durable. ``stats`` receives stage times and
    the memory high-water marks. Vectors equal those of :func:`embed_volume` per volume for
    models whose output for a slice does not depend on the other slices of its batch.
    """
    st = stats if stats is not None else PipelineStats()
    st.prefetch = max(1, prefetch)
    st.batch_size = max(embedder.batch_size, 1)
    t_wall = time.perf_counter()
    reports: list[IngestReport] = []
    coll = open_collection(store, embedder)
    embedder.load()

    q: queue.Queue[_Item] = queue.Queue(maxsize=st.prefetch)
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader, args=(paths, q, stop, embedder, labels, intensity, st, limits),
        name="medir-ingest-reader", daemon=True,
    )
    order: deque[_Open | IngestReport] = deque()  # reports leave in input order
    unflushed: list[_Open] = []  # written, reported once flushed
    last_flush = [time.perf_counter()]

    def flush(force: bool = False) -> None:
        if not unflushed or (not force and time.perf_counter() - last_flush[0] < flush_every):
            return
        t0 = time.perf_counter()
        store.flush()
        last_flush[0] = time.perf_counter()
        st.upsert_s += last_flush[0] - t0
        st.flushes += 1
        for vol in unflushed:
            v = vol.start.volume
            vol.report = IngestReport(v.source, v.volume_id,
                                      "indexed" if vol.won else "superseded", v.n_slices,
                                      last_flush[0] - vol.start.t0,
                                      duplicate_of=versions.duplicates_of(store, coll, v),
                                      warnings=list(v.warnings))
        unflushed.clear()
    volumes: dict[int, _Open] = {}
    pending: list[_Chunk] = []  # prepared chunks waiting for a full batch
    n_pending = 0

    def emit_ready() -> None:
        while order:
            head = order[0]
            if isinstance(head, _Open):
                if head.report is None:
                    return
                rep = head.report
            else:
                rep = head
            order.popleft()
            reports.append(rep)
            if on_report is not None:
                on_report(rep)

    def fail(vol: _Open, exc: MedirError) -> None:
        v = vol.start.volume
        vol.start.cancel.set()
        vol.report = IngestReport(v.source, v.volume_id, "failed", error=str(exc))
        del volumes[vol.start.seq]

    def finish(vol: _Open) -> None:
        """Write a volume whose slices are all embedded."""
        t0 = time.perf_counter()
        v = vol.start.volume
        try:
            vol.won = write_volume(store, coll, embedder, v, vol.vectors, vol.start.mode,
                                    upsert_batch, flush=False, gen=vol.start.gen)
        except DiskFull:  # every later volume would fail the same way: stop here
            raise
        except MedirError as exc:  # e.g. the store refused it; pending points are removed
            fail(vol, exc)
            return
        finally:
            st.upsert_s += time.perf_counter() - t0
        st.volumes += 1
        del volumes[vol.start.seq]
        unflushed.append(vol)
        flush()

    def run_batch() -> None:
        nonlocal n_pending
        chunks, pending[:] = list(pending), []
        n_pending = 0
        t0 = time.perf_counter()
        for c in chunks:
            st._add_buffered(-c.x.element_size() * c.x.nelement())
        try:
            with torch.inference_mode():
                parts = [c.x if c.prepared else embedder.prepare(c.x) for c in chunks]
                x = parts[0] if len(parts) == 1 else torch.cat(parts)
                y = embedder.forward(x)
        except MedirError as exc:  # e.g. the model cannot run: these volumes fail, others go on
            for seq in dict.fromkeys(c.seq for c in chunks):
                fail(volumes[seq], exc)
            return
        finally:
            st.embed_s += time.perf_counter() - t0
        st.batches += 1
        st.slices += int(y.shape[0])
        if len({c.seq for c in chunks}) > 1:
            st.mixed_batches += 1
        row = 0
        for c in chunks:
            m = int(c.x.shape[0])
            vol = volumes[c.seq]
            vol.vectors[c.start:c.start + m] = y[row:row + m]
            vol.filled += m
            row += m
            n = vol.start.volume.n_slices
            if progress is not None:
                progress(vol.start.volume.volume_id, vol.filled, n)
            if vol.filled == n:
                finish(vol)
        emit_ready()

    reader.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            st.wait_s += time.perf_counter() - t0
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                break
            if isinstance(item, _Failed):
                order.append(item.report)
            elif isinstance(item, _Start):
                v = item.volume
                try:
                    settled = _settle(store, coll, v, embedder, item.mode, force,
                                      labels is not None)
                except MedirError as exc:
                    settled = IngestReport(v.source, v.volume_id, "failed", error=str(exc))
                if settled is not None:
                    item.cancel.set()
                    order.append(settled)
                else:
                    vol = _Open(item, np.empty((v.n_slices, embedder.dim), np.float32))
                    volumes[item.seq] = vol
                    order.append(vol)
                    st.peak_open_volumes = max(st.peak_open_volumes, len(volumes))
                    if v.n_slices == 0:
                        finish(vol)
            elif item.seq not in volumes:  # a chunk of a skipped or failed volume
                st._add_buffered(-item.x.element_size() * item.x.nelement())
            else:
                chunk: _Chunk | None = item
                while chunk is not None:  # fill batches of exactly batch_size rows
                    room = st.batch_size - n_pending
                    m = int(chunk.x.shape[0])
                    if m > room:
                        head = _Chunk(chunk.seq, chunk.start, chunk.x[:room], chunk.prepared)
                        chunk = _Chunk(chunk.seq, chunk.start + room, chunk.x[room:],
                                       chunk.prepared)
                        pending.append(head)
                        n_pending += room
                    else:
                        pending.append(chunk)
                        n_pending += m
                        chunk = None
                    if n_pending >= st.batch_size:
                        run_batch()
            emit_ready()
        if pending:
            run_batch()
        flush(force=True)
        emit_ready()
    finally:
        if unflushed:  # an error after some volumes were written: persist those
            try:
                store.flush()
            except Exception:
                pass
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)
        st.wall_s = time.perf_counter() - t_wall
    return reports

