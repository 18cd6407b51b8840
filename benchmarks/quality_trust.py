"""``medir bench quality``: does the answer know when it does not know?

- Every leave-one-case-out (LOCO) answer of a vote method gets a confidence
  (:mod:`search.confidence`, from the query's evidence and the collection's calibration without
  the query's case). Right (modality and region of the top volume) and wrong answers should
  separate: the **AUROC** of right vs wrong by confidence, and the **confident-wrong rate**
  (wrong answers at or above the threshold, over all answers) at each threshold.
- **Leave-one-class-out** (LOClO): every volume of a class (modality/region) is removed from the
  database, then each volume of that class queries. The answer must be wrong, so it should be
  uncertain: the share of these answers below the threshold.

The calibration of a database is what its volumes reach with each other: each stored volume's
slices against the other cases' slices (best cosine per slice, mean over the volume), the same
quantity the product computes lazily from stored vectors (:mod:`search.calibration`).
Labels are read only after ranking (to score, and to group ranked volumes into classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from search.confidence import DEFAULT_THRESHOLD, Calibration, auroc, judge

if TYPE_CHECKING:
    from benchmarks.methods import Method
    from benchmarks.quality import Database, MethodResult

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))


def _class(labels: dict[str, str]) -> str:
    return f"{labels.get('modality', '')}/{labels.get('region', '')}"


def self_similarity(db: Database) -> list[float]:
    """Per stored volume: the mean over its slices of the best cosine to another case."""
    out = []
    for v in db.volumes:
        mask = db.study_mask(v.study)
        if bool(mask.all()):
            out.append(float("nan"))
            continue
        sims = v.vectors @ db.matrix.T
        sims[:, mask] = -np.inf
        out.append(float(sims.max(axis=1).mean()))
    return out


def calibration_without(db: Database, values: Sequence[float],
                        leave_out: np.ndarray) -> Calibration | None:
    """The calibration of the database less the volumes flagged in ``leave_out``."""
    return Calibration.of([x for x, gone in zip(values, leave_out, strict=True) if not gone])


def record(result: MethodResult, protocol: str, query: str, right: bool, ev: Any,
           cal: Calibration | None) -> None:
    """One answer's confidence and whether it was right."""
    c = judge(ev, cal)
    result.trust.append({"protocol": protocol, "query": query, "right": bool(right),
                         "confidence": round(c.confidence, 4),
                         "agreement": round(c.agreement, 4),
                         "familiarity": round(c.familiarity, 4),
                         "top_share": round(ev.top_share, 4),
                         "similarity": round(ev.similarity, 4),
                         "class_share": round(ev.class_share, 4),
                         "z_agreement": round(ev.z_agreement, 4),
                         "calibration": [round(x, 4) for x in (cal.low, cal.mid, cal.high)]
                         if cal else None})


def leave_one_class_out(db: Database, methods: Sequence[Method],
                        results: dict[str, MethodResult], k: int, rerank_top: int,
                        values: Sequence[float]) -> None:
    """Each volume queries a database without any volume of its class (modality/region)."""
    from benchmarks.quality import run_query

    classes = np.array([_class(v.labels) for v in db.volumes])
    for v in db.volumes:
        gone = classes == _class(v.labels)
        mask = gone[db.row_volume]
        if bool(mask.all()):
            continue
        cal = calibration_without(db, values, gone)
        for m in methods:
            if m.slice_wise:
                continue
            out = run_query(db, v.vectors, v.slices, int(v.slices[-1]) + 1, v.z_spacing, m,
                            mask, k, rerank_top, v.domain)
            if out.evidence is not None:  # nothing left to answer (+domain) is confidence 0
                record(results[m.name], "loclo", v.volume_id, False, out.evidence, cal)


def summary(trust: Sequence[dict[str, Any]],
            threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """AUROC, confident-wrong rate, the share of right answers kept confident, and the share
    of leave-one-class-out answers called uncertain, at ``threshold`` and over a sweep."""
    loco = [t for t in trust if t["protocol"] == "loco"]
    loclo = [t for t in trust if t["protocol"] == "loclo"]
    if not loco:
        return {}

    def at(th: float) -> dict[str, Any]:
        n = len(loco)
        wrong_conf = sum(1 for t in loco if not t["right"] and t["confidence"] >= th)
        right = [t for t in loco if t["right"]]
        return {"threshold": th,
                "confident_wrong": wrong_conf, "confident_wrong_rate": wrong_conf / n,
                "right_confident": sum(1 for t in right if t["confidence"] >= th),
                "n_right": len(right), "n": n,
                "loclo_uncertain": sum(1 for t in loclo if t["confidence"] < th),
                "n_loclo": len(loclo)}

    both = loco + loclo
    return {
        "auroc": auroc([t["confidence"] for t in loco], [t["right"] for t in loco]),
        "auroc_with_loclo": auroc([t["confidence"] for t in both], [t["right"] for t in both]),
        "auroc_vote_share": auroc([t["top_share"] for t in both], [t["right"] for t in both]),
        "auroc_similarity": auroc([t["similarity"] for t in both], [t["right"] for t in both]),
        "auroc_agreement": auroc([t["agreement"] for t in both], [t["right"] for t in both]),
        "at_threshold": at(threshold),
        "sweep": [at(th) for th in THRESHOLDS],
    }
