"""The weighted count vote: slice hits → a ranking of volumes (pure, no I/O).

Each chosen query slice i with weight w_i contributes its k nearest database slices; every hit
is a vote of weight w_i for the volume it belongs to. Volumes rank by total weighted votes; ties
break on the summed similarity of their hits, then on the volume id, so rankings are
deterministic. ``score`` is the share of all cast vote weight a volume received (k·Σw).

While a volume is being re-ingested, its old and new versions can both be ready for a moment
(the new one is made ready before the old one is retired); only the hits of the highest
generation (``gen``) of each volume id count, so a query always sees exactly one version.

Slice-wise (SW) prediction, the paper's no-aggregation baseline, is each slice's own nearest
volume: :attr:`VoteResult.slice_predictions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from search.store import DICOM_META_KEYS, LABEL_KEYS, Hit


@dataclass(frozen=True)
class SliceMatch:
    """One query slice matched to one database slice."""

    query_slice: int
    volume_id: str
    db_slice: int
    similarity: float
    weight: float


@dataclass
class VolumeResult:
    rank: int
    volume_id: str
    votes: float  # weighted votes
    hits: int  # unweighted number of hits
    score: float  # votes / total cast weight, in [0, 1]
    similarity: float  # mean similarity of the hits
    labels: dict[str, str] = field(default_factory=dict)
    source: str = ""
    matches: list[SliceMatch] = field(default_factory=list)
    # DICOM Study/Series UIDs, Modality, BodyPartExamined of the volume (display, viewer links)
    dicom: dict[str, str] = field(default_factory=dict)
    rerank_score: float | None = None  # stage 2 (search.rerank), when a re-ranker ran

    def to_dict(self, with_matches: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_matches:
            d.pop("matches")
        return d


@dataclass
class VoteResult:
    ranking: list[VolumeResult]
    slice_predictions: list[SliceMatch]  # SW: each query slice's top hit
    total_weight: float


def vote(
    query_slices: Sequence[int],
    weights: Sequence[float],
    hits: Sequence[Sequence[Hit]],
    top: int | None = None,
) -> VoteResult:
    """Aggregate ``hits[i]`` (the neighbours of query slice ``query_slices[i]``) into a ranking."""
    if not (len(query_slices) == len(weights) == len(hits)):
        raise ValueError("query_slices, weights and hits must have the same length")
    votes: dict[str, float] = {}
    sims: dict[str, float] = {}
    counts: dict[str, int] = {}
    matches: dict[str, list[SliceMatch]] = {}
    meta: dict[str, Mapping[str, Any]] = {}
    predictions: list[SliceMatch] = []
    k_max = 0
    newest: dict[str, str] = {}
    for row in hits:
        for h in row:
            vid, gen = str(h.payload["volume_id"]), str(h.payload.get("gen", ""))
            if gen > newest.get(vid, ""):
                newest[vid] = gen
    for qs, w, row in zip(query_slices, weights, hits, strict=True):
        k_max = max(k_max, len(row))
        row = [h for h in row if str(h.payload.get("gen", "")) ==
               newest.get(str(h.payload["volume_id"]), "")]
        for j, h in enumerate(row):
            vid = str(h.payload["volume_id"])
            m = SliceMatch(int(qs), vid, int(h.payload.get("slice", -1)), float(h.score),
                           float(w))
            votes[vid] = votes.get(vid, 0.0) + float(w)
            sims[vid] = sims.get(vid, 0.0) + float(h.score)
            counts[vid] = counts.get(vid, 0) + 1
            matches.setdefault(vid, []).append(m)
            meta.setdefault(vid, h.payload)
            if j == 0:
                predictions.append(m)
    total = float(sum(weights)) * max(k_max, 1)
    order = sorted(votes, key=lambda v: (-round(votes[v], 12), -round(sims[v], 12), v))
    if top is not None:
        order = order[:top]
    ranking = [
        VolumeResult(
            rank=i + 1,
            volume_id=vid,
            votes=votes[vid],
            hits=counts[vid],
            score=votes[vid] / total if total > 0 else 0.0,
            similarity=sims[vid] / counts[vid],
            labels={k: str(meta[vid][k]) for k in LABEL_KEYS if meta[vid].get(k)},
            source=str(meta[vid].get("source", "")),
            matches=sorted(matches[vid], key=lambda m: (m.query_slice, -m.similarity)),
            dicom={k: str(meta[vid][k]) for k in DICOM_META_KEYS if meta[vid].get(k)},
        )
        for i, vid in enumerate(order)
    ]
    return VoteResult(ranking, predictions, total)
