"""``medir bench audit``: precision and recall of the near-duplicate audit on known pairs.

Known duplicates come from the perturbation suite: each volume of a collection is stored next
to changed copies of itself (z-crops, an in-plane crop, halved resolution, noise, another voxel
order ...), so every (volume, its copy) pair must be found; volumes of one case (the manifest's
``case`` column: a crop or a re-saved series of one scan) are duplicates too. Known
non-duplicates are pairs of distinct cases. Pairs of two copies of one volume are neither
required nor counted as errors.

All volumes go into a temporary embedded store (Qdrant Edge, the product's engine) with the
slices the quality bench stores (every ``stride_mm``, at most ``max_slices``), embedded through
the quality bench's content cache, and :func:`search.audit.audit_duplicates` runs over it once
per slice threshold; the pair threshold is swept on its scores.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.cache import ArrayCache, SliceEmbedder
from benchmarks.datasets import Dataset
from benchmarks.perturb import NamedPerturbation
from benchmarks.quality import read_volumes
from benchmarks.quality_embed import Prep, embed_slices, stride_slices
from search.audit import DuplicatePair, audit_duplicates
from search.store import COMPLETE, SlicePoint, collection_name, point_id
from search.store_edge import EdgeStore

AUDIT_PERTURBATIONS = ("z50", "upper", "crop180", "half-res", "thick5", "lps", "noise")
SLICE_THRESHOLDS = (0.85, 0.9, 0.93, 0.95, 0.97)
PAIR_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class AuditPoint:
    """Precision and recall at one (slice, pair) threshold."""

    slice_min: float
    pair_min: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    missed: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)


def _truth(a: str, b: str, study: dict[str, str], origin: dict[str, str]) -> bool | None:
    """True: a known duplicate; False: a known non-duplicate; None: not judged."""
    if study[a] != study[b]:
        return False
    if origin[a] == origin[b] and a != origin[a] and b != origin[b]:
        return None  # two copies of one volume
    return True


def score_pairs(pairs: Sequence[DuplicatePair], volumes: Sequence[str], study: dict[str, str],
                origin: dict[str, str], slice_min: float, pair_min: float) -> AuditPoint:
    """Precision/recall of the reported ``pairs`` (score >= pair_min) against the truth."""
    found = {frozenset((p.a, p.b)) for p in pairs if p.score >= pair_min}
    positives = {frozenset((a, b)) for i, a in enumerate(volumes) for b in volumes[i + 1:]
                 if _truth(a, b, study, origin) is True}
    judged = {p for p in found if _truth(min(p), max(p), study, origin) is not None}
    tp = len(judged & positives)
    fp = len(judged - positives)
    fn = len(positives - found)
    prec = tp / (tp + fp) if tp + fp else 1.0
    rec = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return AuditPoint(slice_min, pair_min, tp, fp, fn, round(prec, 4), round(rec, 4),
                      round(f1, 4), sorted("~".join(sorted(p)) for p in positives - found),
                      sorted("~".join(sorted(p)) for p in judged - positives))


def run_audit_eval(dataset: Dataset, embedder: SliceEmbedder, cache: ArrayCache,
                   suite: Sequence[NamedPerturbation], *, prep: str = "auto",
                   stride_mm: float = 5.0, max_slices: int = 40, k: int = 8,
                   slice_thresholds: Sequence[float] = SLICE_THRESHOLDS,
                   pair_thresholds: Sequence[float] = PAIR_THRESHOLDS,
                   progress: bool = True) -> dict[str, Any]:
    """Store every volume and its perturbed copies, audit, and score every threshold pair."""
    p = Prep.parse(prep)
    study: dict[str, str] = {}
    origin: dict[str, str] = {}
    coll = collection_name(embedder.embedder_id)
    with tempfile.TemporaryDirectory(prefix="medir-audit-") as tmp:
        store = EdgeStore(Path(tmp) / "store")
        try:
            store.ensure_collection(coll, embedder.dim)
            for vol, case, labels in tqdm(read_volumes(dataset), desc="audit db",
                                          disable=not progress, leave=False):
                variants = [(vol.volume_id, vol)]
                for pert in suite:
                    pv = pert.apply(vol)
                    if pv is not None:
                        variants.append((f"{vol.volume_id}~{pert.name}", pv))
                for vid, v in variants:
                    sl = stride_slices(v.n_slices, v.spacing[2], stride_mm, max_slices)
                    vec = embed_slices(v, sl, embedder, p, cache)
                    study[vid], origin[vid] = case, vol.volume_id
                    pts = [SlicePoint(point_id(vid, "audit", i, embedder.embedder_id, "g"),
                                      vec[i], {"volume_id": vid, "slice": i,
                                               "z_mm": float(s) * v.spacing[2],
                                               "n_slices": len(sl), "state": COMPLETE,
                                               "gen": "g", "embedder": embedder.embedder_id,
                                               "case_id": case, "source": vid, **labels})
                           for i, s in enumerate(sl)]
                    store.upsert(coll, pts)
            store.flush()
            ids = sorted(study)
            points = []
            for smin in slice_thresholds:
                pairs = audit_duplicates(store, coll, k=k, slice_min=smin, pair_min=0.0)
                points += [score_pairs(pairs, ids, study, origin, smin, pmin)
                           for pmin in pair_thresholds]
        finally:
            store.close()
    best = max(points, key=lambda a: (a.f1, a.precision, -a.slice_min))
    return {"dataset": dataset.name, "n_volumes": len(study),
            "n_originals": len(set(origin.values())),
            "perturbations": [s.name for s in suite], "prep": str(p), "k": k,
            "stride_mm": stride_mm, "max_slices": max_slices,
            "grid": [a.__dict__ for a in points], "best": best.__dict__,
            "pair_scores_hint": float(np.round(best.pair_min, 3))}
