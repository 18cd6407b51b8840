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

from medir.errors import ConfigError
from search.vote import VolumeResult, VoteResult

DEFAULT_UNLIKE_WEIGHT = 1.0
MAX_MARKED = 50  # liked + unliked volumes in one request
FEEDBACK_DEPTH = 50  # volumes each vote ranks before the votes are combined


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
