"""The steps of a query on vectors already at hand: which query slices vote and with what
weight (:func:`choose_slices`), the k-NN request and the vote over its hits (:func:`knn_vote`),
and the re-ranking of the vote's first volumes (:func:`rerank_ranking`).

They are the product's query (:mod:`search.query` feeds them from the store) and the quality
benchmark's (``benchmarks/quality.py`` feeds them from an exact in-memory index over vectors
computed once for many methods), so a change here changes both. What differs between the two
is passed in as a function: the k-NN search itself (:data:`Search`) and where the candidates'
slice vectors come from (:data:`Candidates`). The vote (:mod:`search.vote`), the slice weights
(:mod:`search.sampling`) and the re-rankers' scores (:mod:`search.rerank`) are pure functions
these steps call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from search.rerank import rerank_order, rerank_scores
from search.sampling import Sampling, Weighting
from search.store import Hit
from search.vote import VolumeResult, VoteResult, vote

#: The k-NN request: each query row's neighbours (best first), one list per row.
Search = Callable[[NDArray[np.float32]], Sequence[Sequence[Hit]]]
#: The slice vectors of candidate volumes (by volume id, in that order), each as
#: (vectors, z in mm), for a re-ranker.
Candidates = Callable[[list[str]], list[tuple[NDArray[np.float32], NDArray[np.float64]]]]


@dataclass(frozen=True)
class QuerySlices:
    """The query slices that vote: their rows in the query's vectors, their slice indices in
    the volume (ascending) and their vote weights."""

    rows: list[int]
    slices: list[int]
    weights: NDArray[np.float64]

    def z_mm(self, z_spacing: float) -> NDArray[np.float64]:
        """Their positions along z (mm from the first slice), for the ``zorder`` re-ranker."""
        return np.asarray(self.slices, dtype=np.float64) * float(z_spacing)


def choose_slices(sampling: Sampling, weighting: Weighting, n_slices: int, z_spacing: float,
                  slice_indices: ArrayLike | None = None) -> QuerySlices:
    """The sampling's slices of a volume of ``n_slices`` slices ``z_spacing`` mm apart, with
    their weights; ``slice_indices[i]`` is the slice of the query's vector row i (default:
    row i is slice i).

    The sampling chooses among all the volume's slices (:meth:`Sampling.select`), so a query
    that embeds only the chosen slices and one that reads back all of a volume's stored
    vectors choose alike. Where a chosen slice has no vector (a benchmark that stores every
    n-th slice), the nearest slice that has one stands in for it (equidistant: the lower one),
    each at most once.
    """
    idx = np.arange(n_slices) if slice_indices is None else np.asarray(slice_indices)
    chosen = sampling.select(n_slices, z_spacing)
    row_of = {int(s): i for i, s in enumerate(idx)}
    have = np.sort(idx.astype(np.int64))
    rows: list[int] = []
    taken: set[int] = set()
    for c in (int(c) for c in chosen):
        if c not in row_of:
            if not have.size:
                break
            j = int(np.searchsorted(have, c))
            lo, hi = int(have[max(j - 1, 0)]), int(have[min(j, have.size - 1)])
            c = lo if abs(c - lo) <= abs(hi - c) else hi
        if c not in taken:
            taken.add(c)
            rows.append(row_of[c])
    slices = [int(idx[r]) for r in rows]
    return QuerySlices(rows, slices, weighting.weights(np.asarray(slices), n_slices))


def knn_vote(vectors: NDArray[np.float32], chosen: QuerySlices, search: Search,
             top: int | None) -> tuple[VoteResult, dict[str, float]]:
    """One k-NN request for the chosen rows of ``vectors`` and the vote over its hits, ranked
    ``top`` deep (None: every volume hit), with the seconds of each (``knn_s``, ``vote_s``)."""
    t0 = time.perf_counter()
    hits = search(vectors[chosen.rows])
    t1 = time.perf_counter()
    result = vote(chosen.slices, chosen.weights.tolist(), hits, top=top)
    return result, {"knn_s": t1 - t0, "vote_s": time.perf_counter() - t1}


def rerank_ranking(method: str, query: NDArray[np.float32], query_z: NDArray[np.float64],
                   weights: NDArray[np.float64], ranking: list[VolumeResult], rerank_top: int,
                   candidates: Candidates) -> list[VolumeResult]:
    """The ranking with its first ``rerank_top`` volumes re-ordered by ``method`` (``maxsim``
    or ``zorder``, :mod:`search.rerank`) from their slice vectors (``candidates``), scored
    against the chosen query slices (``query``, at ``query_z`` with ``weights``); the others
    keep their vote order after them. Ranks are renumbered; re-ranked rows get their
    ``rerank_score``."""
    head, tail = ranking[: max(rerank_top, 1)], ranking[max(rerank_top, 1):]
    scores = rerank_scores(method, query.astype(np.float32), query_z,
                           candidates([r.volume_id for r in head]), weights)
    out = []
    for rank, i in enumerate(rerank_order(scores), start=1):
        head[i].rank, head[i].rerank_score = rank, scores[i]
        out.append(head[i])
    for rank, r in enumerate(tail, start=len(out) + 1):
        r.rank = rank
        out.append(r)
    return out
