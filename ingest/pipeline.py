"""Index volumes: read → intensity window → embed all axial slices → upsert → mark complete.

A volume is written with ``state="pending"`` points and switched to ``"ready"`` only after its
last batch, so a query never sees half a volume. A failure removes the volume's pending points;
an earlier complete version of the same volume stays searchable until the new one is complete.
Re-ingesting unchanged content is skipped (content hash + embedder id are in the point ids).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ingest.embedders.base import Embedder
from ingest.preprocess import normalize_intensity, resolve_intensity
from ingest.reader import open_volume
from ingest.volume import Volume
from medir.errors import MedirError, VolumeError
from search.store import (
    COMPLETE,
    PENDING,
    Filter,
    SlicePoint,
    SliceStore,
    collection_name,
    content_id,
    point_id,
)

# progress(volume_id, slices_done, slices_total)
ProgressFn = Callable[[str, int, int], None]
LabelMap = Mapping[str, Mapping[str, str]]


@dataclass
class IngestReport:
    """What happened to one volume (one 3D volume of a file)."""

    path: str
    volume_id: str
    status: str  # indexed | skipped | failed
    n_slices: int = 0
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def labels_for(labels: LabelMap | None, path: Path, volume_id: str, case_id: str) -> dict[str, str]:
    """Labels of a volume from a labels table keyed by volume id, case id or file name."""
    if not labels:
        return {}
    for key in (volume_id, case_id, path.name, str(path)):
        if key in labels:
            return {k: str(v) for k, v in labels[key].items() if v}
    return {}


def embed_volume(
    volume: Volume,
    embedder: Embedder,
    intensity: str = "auto",
    on_batch: Callable[[int], None] | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Embeddings of every axial slice of ``volume``: (Z, dim) float32, unit rows."""
    norm = normalize_intensity(volume.data, intensity)
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
                 intensity: str) -> list[SlicePoint]:
    """One point per slice, payload per the store contract (labels never used for ranking)."""
    base = volume.payload()
    cid = content_id(volume.sha256, volume.index_4d)
    z = volume.z_mm
    return [
        SlicePoint(
            id=point_id(volume.sha256, volume.index_4d, i, embedder.embedder_id),
            vector=vectors[i],
            payload={
                **base,
                "slice": i,
                "z_mm": float(z[i]),
                "content_id": cid,
                "embedder": embedder.embedder_id,
                "model": embedder.name,
                "model_version": embedder.info.version,
                "intensity": intensity,
                "state": PENDING,
            },
        )
        for i in range(volume.n_slices)
    ]


def is_indexed(store: SliceStore, collection: str, volume: Volume, embedder_id: str) -> bool:
    cid = content_id(volume.sha256, volume.index_4d)
    flt = Filter({"volume_id": volume.volume_id, "content_id": cid, "embedder": embedder_id,
                  "state": COMPLETE})
    return store.count(collection, flt) == volume.n_slices


def index_volume(
    store: SliceStore,
    embedder: Embedder,
    volume: Volume,
    *,
    intensity: str = "auto",
    upsert_batch: int = 512,
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Index one volume; idempotent; raises on failure after removing its pending points."""
    t0 = time.perf_counter()
    coll = collection_name(embedder.name)
    store.ensure_collection(coll, embedder.dim)
    if store.collection_dim(coll) != embedder.dim:
        raise MedirError(f"collection {coll} holds {store.collection_dim(coll)}-d vectors but "
                         f"{embedder.name} makes {embedder.dim}-d ones")
    if is_indexed(store, coll, volume, embedder.embedder_id):
        return IngestReport(volume.source, volume.volume_id, "skipped", volume.n_slices)
    cid = content_id(volume.sha256, volume.index_4d)
    mine = Filter({"volume_id": volume.volume_id, "content_id": cid})
    try:
        store.delete(coll, Filter({"volume_id": volume.volume_id, "state": PENDING}))
        mode = resolve_intensity(volume.data, intensity)

        def tick(done: int) -> None:
            if progress is not None:
                progress(volume.volume_id, done, volume.n_slices)

        vectors = embed_volume(volume, embedder, mode, on_batch=tick)
        points = slice_points(volume, vectors, embedder, mode)
        for start in range(0, len(points), upsert_batch):
            store.upsert(coll, points[start:start + upsert_batch])
        # Retire an older version of this volume id (other content or model version), then
        # make the new one visible in a single filtered update.
        store.delete(coll, Filter({"volume_id": volume.volume_id},
                                  must_not={"content_id": cid}))
        store.delete(coll, Filter({"volume_id": volume.volume_id, "content_id": cid},
                                  must_not={"embedder": embedder.embedder_id}))
        store.set_payload(coll, mine, {"state": COMPLETE})
        store.flush()
    except BaseException:
        try:
            store.delete(coll, Filter({**mine.must, "state": PENDING}))
            store.flush()
        except Exception:  # the store itself failed; the pending points stay invisible
            pass
        raise
    return IngestReport(volume.source, volume.volume_id, "indexed", volume.n_slices,
                        time.perf_counter() - t0)


def ingest_paths(
    paths: Iterable[str | Path],
    store: SliceStore,
    embedder: Embedder,
    *,
    labels: LabelMap | None = None,
    intensity: str = "auto",
    upsert_batch: int = 512,
    progress: ProgressFn | None = None,
    on_report: Callable[[IngestReport], None] | None = None,
) -> list[IngestReport]:
    """Index every volume of every file. A bad file is reported and the others go on."""
    reports: list[IngestReport] = []

    def emit(r: IngestReport) -> None:
        reports.append(r)
        if on_report is not None:
            on_report(r)

    for raw in paths:
        path = Path(raw)
        try:
            vf = open_volume(path)
        except VolumeError as exc:
            emit(IngestReport(str(path), path.name, "failed", error=str(exc)))
            continue
        for k in range(vf.n_volumes):
            vid = vf.volume_ids()[k]
            try:
                vol = vf.read(k if vf.is_4d else None)
                vol.labels = labels_for(labels, path, vol.volume_id, vol.case_id)
                emit(index_volume(store, embedder, vol, intensity=intensity,
                                  upsert_batch=upsert_batch, progress=progress))
            except MedirError as exc:
                emit(IngestReport(str(path), vid, "failed", error=str(exc)))
    return reports
