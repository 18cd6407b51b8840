"""How sure an answer is: a confidence in [0, 1] from the query's own evidence, and a verdict
("uncertain") below a threshold, with the reason in words.

The answer of a query is its top volume (and that volume's labels). Three kinds of evidence say
whether to trust it (pure functions here; the query and the bench compute the inputs):

- **agreement**: how much of the weighted vote went to the answer's class (volumes whose labels
  agree with the top volume's modality and region; without labels, the top volume alone),
  together with how many query slices along z have their nearest stored slice in that class.
  A query torn between classes, or whose slices disagree along z, is not sure.
- **familiarity**: the query slices' best cosine similarities, compared with what the
  collection's own volumes reach with each other (:class:`Calibration`, the same quantity for
  each stored volume queried against the other cases). A query from a class the collection
  does not hold (a knee against heads and chests) finds only weak neighbours: its similarity
  lies below the collection's usual range, however the vote is split.
- the **vote share** of the top volume itself is reported but not used alone: on the
  evaluation collection right and wrong answers overlap widely in it.

``confidence = familiarity × √agreement``, in [0, 1]. Measured on the evaluation collection
(docs/quality.md, "Confidence"): the similarity against the collection's calibration separates
right from wrong answers best (AUROC with the leave-one-class-out answers 0.84 for medir's
default query, 0.87 with all slices, against 0.52 for the vote share alone); the agreement
added nothing there (with k = 1 a wrong answer's slices mostly agree on it) and enters softened
(its square root) as the guard against votes split between classes. Labels are read only after
ranking, to group the ranked volumes into classes: they never change the ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Below this confidence an answer is "uncertain". Chosen on the evaluation collection (default
#: preprocessing and query, docs/quality.md "Confidence"): the highest threshold that keeps 11
#: of 12 right LOCO answers confident (on its first 20 volumes and on all 23); there 12 of 23
#: leave-one-class-out answers are uncertain and 3 of 23 LOCO answers confident and wrong.
#: ``medir bench quality`` reports the sweep.
DEFAULT_THRESHOLD = 0.6
#: The labels that make an answer's class.
CLASS_KEYS = ("modality", "region")


@dataclass(frozen=True)
class Calibration:
    """What a collection's own volumes reach with each other: for each sampled stored volume,
    the mean over some of its slices of the best cosine similarity to any slice of another
    case. ``low``, ``mid`` and ``high`` are the 10th, 50th and 90th percentiles of those
    values."""

    low: float
    mid: float
    n: int
    high: float = float("nan")  # the 90th percentile


    @classmethod
    def of(cls, values: Sequence[float]) -> Calibration | None:
        """From the per-volume values; None with fewer than 3 (no usable reference)."""
        v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
        if v.size < 3:
            return None
        lo, mid, hi = (float(x) for x in np.percentile(v, [10.0, 50.0, 90.0]))
        return cls(lo, mid, int(v.size), hi)


@dataclass(frozen=True)
class Evidence:
    """One query's evidence, each in [0, 1] except ``similarity`` (a cosine)."""

    top_share: float  # the top volume's share of the weighted vote
    class_share: float  # the share of the answer's class (the top volume's labels)
    z_agreement: float  # weighted share of query slices whose nearest volume is in that class
    similarity: float  # weighted mean over query slices of their best cosine similarity


@dataclass(frozen=True)
class Confidence:
    """The verdict on one answer: ``confidence`` in [0, 1], ``uncertain`` below the
    threshold, and ``reason``: the weaker factor, in words."""

    confidence: float
    uncertain: bool
    reason: str
    agreement: float
    familiarity: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def familiarity(similarity: float, cal: Calibration | None) -> float:
    """1 at or above the 90th percentile of the collection's self-similarity, falling linearly
    to 0 at one (median − 10th percentile) spread below its 10th percentile; 1 without a
    calibration. (Anchored at the median instead, right and wrong answers tie at 1 more often:
    AUROC of the familiarity alone 0.77 against 0.87, all slices, with leave-one-class-out.)"""
    if cal is None:
        return 1.0
    spread = max(cal.mid - cal.low, 0.02)
    top = cal.high if math.isfinite(cal.high) else cal.mid
    return float(np.clip((similarity - (cal.low - spread)) / (top - cal.low + spread),
                         0.0, 1.0))


def judge(ev: Evidence, cal: Calibration | None,
          threshold: float = DEFAULT_THRESHOLD) -> Confidence:
    """The confidence of an answer from its evidence and the collection's calibration."""
    agreement = float(np.clip(0.5 * (ev.class_share + ev.z_agreement), 0.0, 1.0))
    fam = familiarity(ev.similarity, cal)
    conf = fam * math.sqrt(agreement)
    uncertain = conf < threshold
    if not uncertain:
        reason = "the vote and the slices along z agree, with usual similarities"
    elif fam < math.sqrt(agreement):
        ref = f" (the collection's volumes reach {cal.mid:.2f} with each other)" if cal else ""
        reason = (f"no close match: the query's slices reach a similarity of "
                  f"{ev.similarity:.2f}{ref}; its class may not be in the collection")
    else:
        reason = (f"the vote is split: {ev.class_share:.0%} of it and {ev.z_agreement:.0%} of "
                  "the slices along z go to the answer's class")
    return Confidence(conf, uncertain, reason, agreement, fam, threshold)


def class_of(labels: Mapping[str, str], volume_id: str) -> str:
    """The class an answer is judged by: modality/region when labelled, else the volume."""
    parts = [labels.get(k, "") for k in CLASS_KEYS]
    return "/".join(parts) if any(parts) else f"volume:{volume_id}"


def evidence(ranking: Sequence[tuple[str, float, str]], total_weight: float,
             slice_tops: Sequence[tuple[float, float, str]]) -> Evidence:
    """Evidence from a vote: ``ranking`` is (volume id, weighted votes, class) best first;
    ``slice_tops`` is, per chosen query slice, (weight, best cosine, class of its nearest
    volume)."""
    if not ranking or total_weight <= 0:
        return Evidence(0.0, 0.0, 0.0, 0.0)
    top_id, top_votes, top_class = ranking[0]
    same = sum(v for _, v, c in ranking if c == top_class)
    w = np.asarray([t[0] for t in slice_tops], np.float64)
    sims = np.asarray([t[1] for t in slice_tops], np.float64)
    agree = np.asarray([t[2] == top_class for t in slice_tops], np.float64)
    wsum = float(w.sum())
    return Evidence(
        top_share=float(top_votes / total_weight),
        class_share=float(min(same / total_weight, 1.0)),
        z_agreement=float((w * agree).sum() / wsum) if wsum > 0 else 0.0,
        similarity=float((w * sims).sum() / wsum) if wsum > 0 else 0.0,
    )


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` separating positives (right answers) from
    negatives (wrong ones); ties count half. None without both kinds."""
    s = np.asarray(scores, np.float64)
    p = np.asarray(positive, bool)
    pos, neg = s[p], s[~p]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))
