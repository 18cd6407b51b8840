"""What a query answers: :class:`SearchResult` (the query, its chosen slices and weights, the
ranking, each slice's own best match, the answer and its confidence, the timings) and the
options as a result reports them (:func:`result_options`).

``SearchResult.to_dict`` is the JSON a query answers with (``medir search --json``, the
runner's result for the queue and the UI): keep its shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search.options import QueryOptions
from search.vote import SliceMatch, VolumeResult, VoteResult


@dataclass
class SearchResult:
    query_id: str
    query_source: str
    model: str
    n_slices: int
    chosen_slices: list[int]
    weights: list[float]
    options: dict[str, Any]
    ranking: list[VolumeResult]
    slice_predictions: list[SliceMatch]
    timings: dict[str, float]
    #: "embedded" (the model ran on the query) or "stored" (the query's content is indexed and
    #: its stored slice vectors were used).
    vectors: str = "embedded"
    #: The query's intensity domain ("hu", "non-hu"; "" unknown) and why (from its voxels).
    domain: str = ""
    domain_reason: str = ""
    #: the answer's volume, labels, ``confidence`` in [0, 1], ``uncertain`` and ``reason``
    answer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_matches: bool = True) -> dict[str, Any]:
        ranking = [r.to_dict(with_matches) for r in self.ranking]
        if ranking and self.answer:  # the answer is the first volume: its verdict on it too
            ranking[0].update({k: self.answer[k] for k in ("confidence", "uncertain", "reason")})
        return {
            "query": {"volume_id": self.query_id, "source": self.query_source,
                      "n_slices": self.n_slices, "chosen_slices": self.chosen_slices,
                      "weights": self.weights, "vectors": self.vectors,
                      "domain": self.domain, "domain_reason": self.domain_reason},
            "model": self.model,
            "options": self.options,
            "answer": self.answer,
            "ranking": ranking,
            "slice_predictions": [m.__dict__ for m in self.slice_predictions],
            "timings": self.timings,
        }


@dataclass(frozen=True)
class VectorSearch:
    """What :func:`search.query.search_vectors` found: the query slices it chose, their
    weights, the vote (its ranking cut to the options' ``top``) and the seconds of the k-NN
    request, the vote and any re-ranking (``knn_s``, ``vote_s``, ``rerank_s``)."""

    chosen_slices: list[int]
    weights: list[float]
    vote: VoteResult
    timings: dict[str, float]
    #: the answer (the ranking's first volume) with its confidence (search.calibration)
    answer: dict[str, Any] = field(default_factory=dict)


def result_options(options: QueryOptions) -> dict[str, Any]:
    """The options as a query result reports them (``SearchResult.options``)."""
    return {"sampling": options.sampling, "weighting": options.weighting, "k": options.k,
            "top": options.top, "filters": {k: list(v) for k, v in options.filters.items()},
            "exact": options.exact, "rerank": options.rerank, "rerank_top": options.rerank_top,
            "cross_modality": options.cross_modality,
            **({"max_slices": options.max_slices} if options.max_slices else {}),
            **({"like": list(options.like)} if options.like else {}),
            **({"unlike": list(options.unlike)} if options.unlike else {}),
            **({"exclude_cases": list(options.exclude_cases)} if options.exclude_cases else {})}
