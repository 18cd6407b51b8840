"""Stage 2: re-rank the vote's top candidates using the whole volume (pure numpy, no I/O).

The vote (:mod:`search.vote`) counts, per candidate volume, how many query slices had one of
its slices among their k nearest neighbours; it forgets how well the rest of the candidate
matches and where along z the matches lie. The re-rankers here score each of the top-N
candidates from all of its stored slice vectors:

- ``maxsim`` (late interaction, ColBERT's MaxSim): the weighted mean over the query's chosen
  slices of the best cosine similarity to any of the candidate's slices.
- ``zorder``: MaxSim restricted to monotone alignments: query slices, in z order, must map to
  candidate slices in non-decreasing z order (a subsequence alignment: any start, any end,
  skips allowed on both sides, so a query covering part of the candidate is not penalised).
  Solved exactly by dynamic programming in O(m·n). A candidate whose slices match in the
  anatomical order beats one whose matching slices are shuffled.

Scores are in [−1, 1] (cosine on unit vectors). The final order: the rerank score, then the
vote's order for ties. Candidates past N keep their vote order after the re-ranked ones.
Nothing here reads labels or names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from medir.errors import ConfigError

RERANKERS: tuple[str, ...] = ("none", "maxsim", "zorder")
DEFAULT_RERANK_TOP = 10


def check_rerank(name: str) -> str:
    """The re-ranker's canonical name, or a :class:`ConfigError` listing the choices."""
    key = name.strip().lower()
    if key not in RERANKERS:
        raise ConfigError(f"bad rerank {name!r}; use one of {', '.join(RERANKERS)}")
    return key


def _weights(weights: Sequence[float] | NDArray[np.float64] | None, m: int) -> NDArray[np.float64]:
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,):
        raise ValueError(f"{w.shape[0] if w.ndim else 0} weights for {m} query slices")
    total = float(w.sum())
    return w / total if total > 0 else np.full(m, 1.0 / max(m, 1))


def maxsim(query: NDArray[np.float32], candidate: NDArray[np.float32],
           weights: Sequence[float] | NDArray[np.float64] | None = None) -> float:
    """Weighted mean over query rows of the best similarity to any candidate row."""
    if query.shape[0] == 0 or candidate.shape[0] == 0:
        return -1.0
    sims = query @ candidate.T
    return float(_weights(weights, query.shape[0]) @ sims.max(axis=1))


def monotone_alignment(sims: NDArray[np.float64], weights: NDArray[np.float64]) -> float:
    """max over non-decreasing maps j(1) ≤ … ≤ j(m) of Σ_i w_i · sims[i, j(i)].

    ``sims`` is (m, n): query rows in z order, candidate columns in z order.
    """
    m, n = sims.shape
    if m == 0 or n == 0:
        return -1.0
    best = np.maximum.accumulate(weights[0] * sims[0])  # best[j]: rows ≤ i end at column ≤ j
    for i in range(1, m):
        best = np.maximum.accumulate(best + weights[i] * sims[i])
    return float(best[-1])


def zorder(query: NDArray[np.float32], query_z: Sequence[float] | NDArray[np.float64],
           candidate: NDArray[np.float32], candidate_z: Sequence[float] | NDArray[np.float64],
           weights: Sequence[float] | NDArray[np.float64] | None = None) -> float:
    """Weighted mean similarity of the best z-monotone alignment of query to candidate slices.

    Both sides are sorted by their z (mm, any origin) first; equal to :func:`maxsim` when the
    best matches already lie in z order, lower when they do not.
    """
    if query.shape[0] == 0 or candidate.shape[0] == 0:
        return -1.0
    w = _weights(weights, query.shape[0])
    qo = np.argsort(np.asarray(query_z, dtype=np.float64), kind="stable")
    co = np.argsort(np.asarray(candidate_z, dtype=np.float64), kind="stable")
    sims = (query[qo] @ candidate[co].T).astype(np.float64)
    return monotone_alignment(sims, w[qo])


def rerank_scores(method: str, query: NDArray[np.float32], query_z: NDArray[np.float64],
                  candidates: Sequence[tuple[NDArray[np.float32], NDArray[np.float64]]],
                  weights: Sequence[float] | NDArray[np.float64] | None = None,
                  ) -> list[float]:
    """The score of each (vectors, z) candidate under ``method`` (``maxsim`` or ``zorder``)."""
    key = check_rerank(method)
    if key == "maxsim":
        return [maxsim(query, c, weights) for c, _ in candidates]
    if key == "zorder":
        return [zorder(query, query_z, c, cz, weights) for c, cz in candidates]
    raise ConfigError("rerank 'none' has no scores")


def rerank_order(scores: Sequence[float]) -> list[int]:
    """Positions of the candidates by descending score; ties keep the incoming order."""
    return sorted(range(len(scores)), key=lambda i: (-round(scores[i], 9), i))
