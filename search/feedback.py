"""Relevance feedback: "more like these, not like those", by medir's own vote.

A first query is rarely the cohort; users refine it by marking results. Each marked volume's
stored slice vectors are a query of their own (no model pass): its chosen slices vote, as any
query's do. The feedback ranking combines the votes, as shares of each query's cast weight:

    score(v) = mean(share of v in the query's vote and in each liked volume's vote)
               - unlike_weight * mean(share of v in each unliked volume's vote)

so a volume near the query *and* the liked examples rises, one near an unliked example sinks,
and a single mark counts as much as the original query. The marked volumes themselves are left
out of the ranking; each row keeps its vote share (``score``) from the first positive vote that
holds it, and the combined score is its ``rerank_score``. This is Qdrant's "recommend" idea
(average of positives minus negatives) done on volume votes instead of single vectors, because
medir's unit is a volume of many slices: a per-vector recommend query would need one request
per slice pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from medir.errors import ConfigError
from search.store import COMPLETE, Filter, SliceStore
from search.vote import VolumeResult, VoteResult

DEFAULT_UNLIKE_WEIGHT = 1.0
MAX_MARKED = 50  # liked + unliked volumes in one request
FEEDBACK_DEPTH = 50  # volumes each vote ranks before the votes are combined


def volume_vectors(store: SliceStore, coll: str, volume_id: str, embedder_id: str | None
                   ) -> tuple[NDArray[np.float32], NDArray[np.int64], int, float] | None:
    """An indexed volume's live slice vectors (its highest ready generation), their slice
    indices, its slice count and z spacing; None when it is not indexed (with ``embedder_id``,
    when given)."""
    by_gen: dict[str, list[tuple[int, NDArray[np.float32]]]] = {}
    meta: dict[str, tuple[int, float]] = {}
    must: dict[str, str] = {"volume_id": volume_id, "state": COMPLETE}
    if embedder_id:
        must["embedder"] = embedder_id
    flt = Filter(must)
    for rec in store.scroll(coll, flt, with_vectors=True):
        if rec.vector is None:
            continue
        gen = str(rec.payload.get("gen", ""))
        by_gen.setdefault(gen, []).append((int(rec.payload.get("slice", 0)),
                                           np.asarray(rec.vector, np.float32)))
        spacing = rec.payload.get("spacing") or [1.0, 1.0, 1.0]
        meta[gen] = (int(rec.payload.get("n_slices", 0)), float(spacing[2]))
    if not by_gen:
        return None
    gen = max(by_gen)
    rows = sorted(by_gen[gen], key=lambda t: t[0])
    n, dz = meta[gen]
    return (np.stack([v for _, v in rows]), np.asarray([s for s, _ in rows], np.int64),
            max(n, rows[-1][0] + 1), dz)


def _shares(result: VoteResult) -> dict[str, float]:
    return {r.volume_id: r.score for r in result.ranking}


def feedback_ranking(
    query: VoteResult | None,
    liked: Sequence[VoteResult],
    unliked: Sequence[VoteResult],
    marked: Sequence[str],
    *,
    top: int,
    unlike_weight: float = DEFAULT_UNLIKE_WEIGHT,
) -> list[VolumeResult]:
    """Combine the votes of the query and of the marked volumes (module docstring)."""
    positive = ([query] if query is not None else []) + list(liked)
    if not positive:
        raise ValueError("relevance feedback needs a query or at least one liked volume")
    pos = [_shares(v) for v in positive]
    neg = [_shares(v) for v in unliked]
    candidates: dict[str, VolumeResult] = {}
    for res in positive:  # the first positive that holds a volume gives its display row
        for r in res.ranking:
            candidates.setdefault(r.volume_id, r)
    skip = set(marked)
    scored = []
    for vid, row in candidates.items():
        if vid in skip:
            continue
        s = float(np.mean([p.get(vid, 0.0) for p in pos]))
        if neg:
            s -= unlike_weight * float(np.mean([n.get(vid, 0.0) for n in neg]))
        scored.append((s, row.similarity, vid, row))
    scored.sort(key=lambda t: (-round(t[0], 12), -t[1], t[2]))
    return [replace(row, rank=i + 1, rerank_score=s) for i, (s, _, _, row) in
            enumerate(scored[:top])]


def check_marks(like: Sequence[str], unlike: Sequence[str]) -> None:
    """One :class:`ConfigError` line for marks that cannot be used together."""
    if len(like) + len(unlike) > MAX_MARKED:
        raise ConfigError(f"at most {MAX_MARKED} marked volumes, got {len(like) + len(unlike)}")
    both = sorted(set(like) & set(unlike))
    if both:
        raise ConfigError(f"volume {both[0]!r} is marked both like and unlike")
