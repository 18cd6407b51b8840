"""A query's answer judged against its collection: the evidence of the vote
(:mod:`search.confidence`) and the collection's calibration, computed lazily from the stored
vectors and kept per process until the collection changes.

Calibration: up to :data:`SAMPLE_VOLUMES` stored volumes (evenly spread over the sorted volume
ids, so the sample is the same in every process), up to :data:`SAMPLE_SLICES` evenly spaced
slices each; each volume's slices query the collection without its own case (and without the
other intensity domain, as a query would), and the mean best cosine is that volume's value.
One scroll and one batch k-NN request per sampled volume, the first time a collection (of a
given size) is judged in a process.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from search.confidence import (
    DEFAULT_THRESHOLD,
    Calibration,
    Confidence,
    Evidence,
    class_of,
    evidence,
    judge,
)
from search.domain import opposite
from search.live import live_records
from search.store import READY, Filter, Record, SliceStore
from search.vote import VoteResult

SAMPLE_VOLUMES = 24
SAMPLE_SLICES = 6
_CACHE: dict[tuple[str, str, str, int], Calibration | None] = {}
_LOCK = threading.Lock()


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` items, evenly spread (deterministic)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def collection_calibration(store: SliceStore, coll: str, space: str) -> Calibration | None:
    """What the collection's volumes (of vector space ``space``) reach with each other; None
    when fewer than 3 sampled volumes have another case to match."""
    base = Filter({**READY.must, **({"embedder": space} if space else {})})
    key = (str(store.location), coll, space, store.count(coll, base))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    vids = sorted(str(v) for v in store.facet(coll, "volume_id", base, limit=1_000_000))
    sample = _spread(vids, SAMPLE_VOLUMES)
    by_volume: dict[str, list[Record]] = {}
    if sample:
        flt = base.and_(Filter({"volume_id": sample if len(sample) > 1 else sample[0]}))
        for rec in store.scroll(coll, flt, with_vectors=True):
            by_volume.setdefault(str(rec.payload.get("volume_id")), []).append(rec)
    values = []
    for vid in sample:
        recs = sorted(live_records(by_volume.get(vid, [])),
                      key=lambda r: int(r.payload.get("slice", 0)))
        recs = [r for r in _spread(recs, SAMPLE_SLICES) if r.vector is not None]
        if not recs:
            continue
        p = recs[0].payload
        must_not: dict[str, Any] = {"case_id": str(p.get("case_id", vid))}
        if p.get("domain"):
            must_not["domain"] = opposite(str(p["domain"]))
        hits = store.search_batch(coll, np.stack([np.asarray(r.vector, np.float32)
                                                  for r in recs]), 1,
                                  Filter(base.must, must_not), payload_keys=["volume_id"])
        best = [row[0].score for row in hits if row]
        if best:
            values.append(float(np.mean(best)))
    cal = Calibration.of(values)
    with _LOCK:
        _CACHE[key] = cal
    return cal


def vote_evidence(result: VoteResult) -> Evidence:
    """The evidence of a vote's answer (its ranking's first volume, after any re-ranking):
    the ranked volumes grouped into classes by their labels (read after ranking, never for
    it) and each chosen slice's own best match (:func:`search.confidence.evidence`; all
    zeros when nothing matched). The product's query judges it against its collection's
    calibration (:func:`judge_vote`); ``medir bench quality`` against several."""
    classes = {r.volume_id: class_of(r.labels, r.volume_id) for r in result.ranking}
    ranking = [(r.volume_id, r.votes, classes[r.volume_id]) for r in result.ranking]
    tops = [(m.weight, m.similarity, classes.get(m.volume_id, f"volume:{m.volume_id}"))
            for m in result.slice_predictions]
    return evidence(ranking, result.total_weight, tops)


def judge_vote(result: VoteResult, cal: Calibration | None,
               threshold: float = DEFAULT_THRESHOLD) -> Confidence | None:
    """The confidence of a vote's answer (its ranking's first volume, after any re-ranking);
    None when nothing matched."""
    if not result.ranking:
        return None
    return judge(vote_evidence(result), cal, threshold)


def answer_dict(result: VoteResult, verdict: Confidence | None) -> dict[str, Any]:
    """The answer of a query as JSON: its volume, labels, confidence and verdict."""
    if verdict is None or not result.ranking:
        return {}
    top = result.ranking[0]
    labels: Mapping[str, str] = top.labels
    return {"volume_id": top.volume_id, "labels": dict(labels), **verdict.to_dict()}
