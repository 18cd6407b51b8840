"""Versions of a volume in the store: what is live, what to do on re-ingest, and the write
protocol that never loses a volume (docs/collections.md).

Every write of a volume is one *generation* (:func:`search.store.new_generation`): its points
carry ``gen`` and have their own ids, so a new version never overwrites the live one. A write:

1. upserts the new points with ``state="pending"`` (invisible to queries);
2. gives up (deleting its own points) if a higher generation of the volume is ready, or if its
   points are no longer all there (a concurrent writer with a higher generation retired them);
3. switches its points to ``state="ready"`` in one filtered payload update;
4. deletes every lower generation of the volume (the old version, a losing concurrent write).

Between 3 and 4 two versions are ready; queries keep only the highest generation per volume
id (:func:`search.vote.vote`, :func:`search.live.live_records`), so they always see one
complete version.
Two writers of one volume end with exactly one complete version, the highest generation that
completed: a writer only ever deletes lower generations, and it finishes its upserts before
step 2, so either the higher writer's step 4 sees (and retires) the lower one's points, or the
lower one's step 2 sees the higher one ready and retires itself. A writer that fails removes
only its own pending points, so the version that was live stays live.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ingest.volume import Volume
from search.live import live_version
from search.store import (
    COMPLETE,
    LABEL_KEYS,
    LAYOUT,
    PENDING,
    Filter,
    SlicePoint,
    SliceStore,
    content_id,
    point_id,
)

EMBED, SKIP, RELABEL = "embed", "skip", "relabel"


def labels_of(payload: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(payload[k]) for k in LABEL_KEYS if payload.get(k)}


def decide(store: SliceStore, coll: str, volume: Volume, embedder_id: str, intensity: str,
           force: bool = False, labels_given: bool = True) -> str:
    """What re-ingesting ``volume`` needs: :data:`SKIP` (unchanged), :data:`RELABEL` (same
    content, model version and intensity mode, other labels: a payload update) or
    :data:`EMBED` (new, changed content, other model version or intensity mode, ``force``).

    Without a labels table (``labels_given=False``) the live version's labels are kept: they
    are copied into ``volume.labels``, so a re-embedded version carries them on.
    """
    live = live_version(store, coll, volume.volume_id)
    if not labels_given:
        volume.labels = labels_of(live.payload) if live is not None else {}
    if force or live is None or not live.complete:
        return EMBED
    p = live.payload
    same = (p.get("content_id") == content_id(volume.sha256, volume.index_4d)
            and p.get("embedder") == embedder_id and p.get("intensity") == intensity
            and int(p.get("n_slices", -1)) == volume.n_slices)
    if not same:
        return EMBED
    return SKIP if labels_of(p) == {k: v for k, v in volume.labels.items() if v} else RELABEL


def relabel(store: SliceStore, coll: str, volume: Volume) -> None:
    """Re-apply the labels of an unchanged volume to every point of it (no re-embedding)."""
    everything = Filter({"volume_id": volume.volume_id})
    new = {k: v for k, v in volume.labels.items() if v}
    gone = [k for k in LABEL_KEYS if k not in new]
    if new:
        store.set_payload(coll, everything, new)
    store.delete_payload(coll, everything, gone)


def duplicates_of(store: SliceStore, coll: str, volume: Volume) -> list[str]:
    """Other volume ids whose ready points hold the same content as ``volume``."""
    flt = Filter({"content_id": content_id(volume.sha256, volume.index_4d), "state": COMPLETE},
                 must_not={"volume_id": volume.volume_id})
    return sorted(str(v) for v in store.facet(coll, "volume_id", flt))


def slice_points(volume: Volume, vectors: np.ndarray, embedder_id: str, model: str,
                 model_version: str, intensity: str, gen: str) -> list[SlicePoint]:
    """One point per slice, payload per the store contract (labels never used for ranking)."""
    base = volume.payload()
    cid = content_id(volume.sha256, volume.index_4d)
    z = volume.z_mm
    return [
        SlicePoint(
            id=point_id(volume.volume_id, cid, i, embedder_id, gen),
            vector=vectors[i],
            payload={
                **base,
                "slice": i,
                "z_mm": float(z[i]),
                "content_id": cid,
                "embedder": embedder_id,
                "model": model,
                "model_version": model_version,
                "intensity": intensity,
                "gen": gen,
                "layout": LAYOUT,
                "state": PENDING,
            },
        )
        for i in range(volume.n_slices)
    ]


def _newer_ready(store: SliceStore, coll: str, volume_id: str, gen: str) -> bool:
    gens = store.facet(coll, "gen", Filter({"volume_id": volume_id, "state": COMPLETE}))
    return any(str(g) > gen for g in gens)


def write_version(store: SliceStore, coll: str, points: list[SlicePoint], volume_id: str,
                  gen: str, upsert_batch: int = 512) -> bool:
    """Write one generation of a volume (the protocol in the module docstring).

    Returns False when a concurrent write with a higher generation won (this one removed
    itself). On any failure this generation's points are removed and the error raised again;
    the live version is untouched.
    """
    mine = Filter({"volume_id": volume_id, "gen": gen})
    try:
        for start in range(0, len(points), upsert_batch):
            store.upsert(coll, points[start:start + upsert_batch])
        if _newer_ready(store, coll, volume_id, gen) or store.count(coll, mine) != len(points):
            store.delete(coll, mine)
            return False
        store.set_payload(coll, mine, {"state": COMPLETE})
        older = [str(g) for g in store.facet(coll, "gen", Filter({"volume_id": volume_id}))
                 if str(g) < gen]
        if older:
            store.delete(coll, Filter({"volume_id": volume_id, "gen": older}))
        # a higher generation may have retired this one after step 2
        return store.count(coll, mine.and_(Filter({"state": COMPLETE}))) == len(points)
    except BaseException:
        try:
            store.delete(coll, Filter({**mine.must, "state": PENDING}))
        except Exception:  # the store itself failed; pending points stay invisible
            pass
        raise

