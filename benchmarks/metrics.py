"""Recall and precision per class, and confusion matrices, of label predictions (pure, no I/O).

A query is one prediction: the labels (modality, body region, organ) of the volume that won the
vote, compared with the query's own labels. For a class c at one level:

- recall(c) = queries of class c predicted c / queries of class c (``None`` without support);
- precision(c) = queries of class c predicted c / queries predicted c (``None`` when nothing
  was predicted c, as in the paper's tables where such a cell is empty).

Queries whose true label at a level is unknown (empty) are left out of that level. A predicted
label that is unknown (the winning database volume has no label at that level) counts as the
class :data:`NONE`, so it is a miss for the true class and never a hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

NONE = "(none)"


@dataclass(frozen=True)
class ClassScore:
    """The counts and scores of one class at one level."""

    label: str
    support: int  # queries whose true label is this class
    predicted: int  # queries predicted as this class
    tp: int
    recall: float | None
    precision: float | None


@dataclass
class LevelMetrics:
    """Metrics of one label level (modality, region or organ) over a set of queries."""

    level: str
    n: int
    accuracy: float | None
    classes: dict[str, ClassScore] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # confusion matrix row/column order
    confusion: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    @property
    def macro_recall(self) -> float | None:
        """Mean recall over the classes that have queries."""
        vals = [c.recall for c in self.classes.values() if c.recall is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def macro_precision(self) -> float | None:
        """Mean precision over the true classes that were predicted at least once."""
        vals = [c.precision for c in self.classes.values()
                if c.precision is not None and c.support > 0]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_recall": self.macro_recall,
            "macro_precision": self.macro_precision,
            "classes": {k: asdict(v) for k, v in self.classes.items()},
            "confusion": {"labels": list(self.labels),
                          "matrix": self.confusion.astype(int).tolist()},
        }


def evaluate(
    level: str,
    truth: Sequence[str],
    predicted: Sequence[str],
    order: Sequence[str] | None = None,
) -> LevelMetrics:
    """Per-class recall/precision and the confusion matrix (rows true, columns predicted).

    ``order`` fixes the order of the classes that appear (e.g. the paper's organ order); other
    classes follow sorted, and :data:`NONE` comes last.
    """
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted must have the same length")
    pairs = [(t, p or NONE) for t, p in zip(truth, predicted, strict=True) if t]
    seen = {t for t, _ in pairs} | {p for _, p in pairs}
    first = [c for c in (order or []) if c in seen]
    rest = sorted(c for c in seen if c not in first and c != NONE)
    labels = first + rest + ([NONE] if NONE in seen else [])
    pos = {c: i for i, c in enumerate(labels)}
    conf = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in pairs:
        conf[pos[t], pos[p]] += 1
    classes: dict[str, ClassScore] = {}
    for c in labels:
        if c == NONE:
            continue
        i = pos[c]
        tp = int(conf[i, i])
        support = int(conf[i].sum())
        npred = int(conf[:, i].sum())
        classes[c] = ClassScore(
            label=c,
            support=support,
            predicted=npred,
            tp=tp,
            recall=tp / support if support else None,
            precision=tp / npred if npred else None,
        )
    n = len(pairs)
    acc = float(np.trace(conf)) / n if n else None
    return LevelMetrics(level, n, acc, classes, labels, conf)


def evaluate_levels(
    truth: Sequence[dict[str, str]],
    predicted: Sequence[dict[str, str]],
    levels: Sequence[str] = ("modality", "region", "organ"),
    orders: dict[str, Sequence[str]] | None = None,
) -> dict[str, LevelMetrics]:
    """:func:`evaluate` at each label level, from per-query label dictionaries."""
    orders = orders or {}
    return {
        lv: evaluate(lv, [t.get(lv, "") for t in truth], [p.get(lv, "") for p in predicted],
                     orders.get(lv))
        for lv in levels
    }
