"""What is indexed, per volume: listing (``medir volumes``), removing volumes whose files are
gone (``medir prune``), and upgrading a store written before volume identities
(``medir migrate``), and the store statistics (``medir info``, the collection page)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medir.ids import case_id_of
from search.store import COMPLETE, LABEL_KEYS, LAYOUT, PENDING, READY, Filter, SliceStore

OLD_GEN = "0" * 20  # the generation given to points written before generations existed


@dataclass
class VolumeInfo:
    """One indexed volume (its live version, or a write in progress / abandoned)."""

    volume_id: str
    collection: str
    source: str
    n_slices: int
    points: int
    state: str  # ready | pending
    embedder: str
    intensity: str
    content_id: str
    gen: str
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_META_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined")


def list_volumes(store: SliceStore, collections: Sequence[str] | None = None,
                 filters: Mapping[str, Sequence[str]] | None = None) -> list[VolumeInfo]:
    """Every volume of the store (or of ``collections``), one row per volume id: its highest
    ready generation, or its pending write when it has no ready one. ``filters`` are label
    equalities (any of the values)."""
    must: dict[str, Any] = {"slice": 0}
    for key, values in (filters or {}).items():
        vals = [v for v in values if v]
        if vals:
            must[key] = vals if len(vals) > 1 else vals[0]
    out: list[VolumeInfo] = []
    for coll in collections or store.collections():
        best: dict[str, tuple[tuple[bool, str], Mapping[str, Any]]] = {}
        for rec in store.scroll(coll, Filter(must)):
            p = rec.payload
            vid = str(p.get("volume_id", ""))
            rank = (p.get("state") == COMPLETE, str(p.get("gen", "")))
            if vid not in best or rank > best[vid][0]:
                best[vid] = (rank, p)
        for vid in sorted(best):
            p = best[vid][1]
            points = store.count(coll, Filter({"volume_id": vid, "gen": str(p.get("gen", ""))}))
            out.append(VolumeInfo(
                vid, coll, str(p.get("source", "")), int(p.get("n_slices", 0)), points,
                str(p.get("state", PENDING)), str(p.get("embedder", "")),
                str(p.get("intensity", "")), str(p.get("content_id", "")),
                str(p.get("gen", "")), {k: str(p[k]) for k in LABEL_KEYS if p.get(k)},
                {k: str(p[k]) for k in _META_KEYS if p.get(k)}))
    return out


def source_exists(source: str) -> bool:
    """Whether a volume's source is still there (a file, or a DICOM series' folder)."""
    return bool(source) and Path(source).exists()


def gone_volumes(store: SliceStore) -> list[VolumeInfo]:
    """Volumes whose source file (or series folder) no longer exists."""
    return [v for v in list_volumes(store) if not source_exists(v.source)]


def prune(store: SliceStore, volumes: Sequence[VolumeInfo]) -> int:
    """Delete every point (all generations) of ``volumes``; returns the points deleted."""
    n = 0
    for v in volumes:
        flt = Filter({"volume_id": v.volume_id})
        n += store.count(v.collection, flt)
        store.delete(v.collection, flt)
    store.flush()
    return n


def old_points(store: SliceStore, coll: str) -> int:
    """Points written by a release before volume identities (no ``layout`` marker)."""
    return store.count(coll, Filter(must_not={"layout": LAYOUT}))


def migrate(store: SliceStore, roots: Sequence[Path] = ()) -> dict[str, int]:
    """Upgrade collections written before volume identities, in place (no re-embedding).

    Old points get the missing keyword indexes, generation :data:`OLD_GEN` and the layout
    marker; abandoned pending points are removed. Old volume ids were file stems; with
    ``roots``, a volume whose source lies under one of them gets the new id (path relative to
    the root, without the suffix), the id a folder ingest of that root now gives. Returns the
    points upgraded per collection.
    """
    done: dict[str, int] = {}
    for coll in store.collections():
        n = old_points(store, coll)
        if not n:
            continue
        store.ensure_indexes(coll)
        old = Filter(must_not={"layout": LAYOUT})
        store.delete(coll, old.and_(Filter({"state": PENDING})))
        if roots:
            _rekey(store, coll, [r.expanduser().absolute() for r in roots], old)
        store.set_payload(coll, old, {"gen": OLD_GEN, "layout": LAYOUT})
        done[coll] = n
    store.flush()
    return done


def _rekey(store: SliceStore, coll: str, roots: Sequence[Path], old: Filter) -> None:
    seen: set[tuple[str, str]] = set()
    for rec in store.scroll(coll, old.and_(Filter({"slice": 0}))):
        vid, source = str(rec.payload.get("volume_id", "")), str(rec.payload.get("source", ""))
        if (vid, source) in seen or not source:
            continue
        seen.add((vid, source))
        src = Path(source).absolute()
        for root in roots:
            if root in src.parents:
                rel = src.relative_to(root)
                base = "/".join([*rel.parts[:-1], case_id_of(rel.name)])
                index = rec.payload.get("index_4d")
                new = base if index is None else f"{base}#{index}"
                store.set_payload(coll, old.and_(Filter({"volume_id": vid, "source": source})),
                                  {"volume_id": new, "case_id": base})
                break


def store_stats(store: SliceStore) -> dict[str, Any]:
    """Collections, volumes and points per model, label facets (the collection page, info)."""
    collections = []
    for name in store.collections():
        facets = {key: _volumes_per_value(store, name, key) for key in LABEL_KEYS}
        collections.append({
            "name": name,
            "dim": store.collection_dim(name),
            "points": store.count(name),
            "ready_points": store.count(name, READY),
            "volumes": len(store.facet(name, "volume_id", READY, limit=1_000_000)),
            "embedders": sorted(map(str, store.facet(name, "embedder", READY))),
            "facets": facets,
        })
    return {"mode": store.mode, "location": store.location, "collections": collections}


def _volumes_per_value(store: SliceStore, name: str, key: str) -> dict[str, int]:
    """Number of complete volumes per value of a label (facets count points, not volumes)."""
    out: dict[str, int] = {}
    for value in store.facet(name, key, READY):
        flt = READY.and_(Filter({key: value}))
        out[str(value)] = len(store.facet(name, "volume_id", flt, limit=1_000_000))
    return dict(sorted(out.items()))
