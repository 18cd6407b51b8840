"""Recall/precision/confusion on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import NONE, evaluate, evaluate_levels
from benchmarks.report import fmt


def test_recall_precision_and_confusion_by_hand() -> None:
    truth = ["head", "head", "head", "chest", "chest", "abdomen"]
    pred = ["head", "head", "chest", "chest", "abdomen", "abdomen"]
    m = evaluate("region", truth, pred, order=["abdomen", "chest", "head"])
    assert m.labels == ["abdomen", "chest", "head"]
    # rows true, columns predicted
    assert m.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    assert m.classes["head"].recall == pytest.approx(2 / 3)
    assert m.classes["head"].precision == pytest.approx(1.0)
    assert m.classes["chest"].recall == pytest.approx(1 / 2)
    assert m.classes["chest"].precision == pytest.approx(1 / 2)
    assert m.classes["abdomen"].recall == pytest.approx(1.0)
    assert m.classes["abdomen"].precision == pytest.approx(1 / 2)
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.macro_recall == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m.n == 6


def test_unknown_truth_is_skipped_and_unknown_prediction_is_a_miss() -> None:
    truth = ["liver", "", "spleen", "spleen"]
    pred = ["liver", "spleen", "", "liver"]
    m = evaluate("organ", truth, pred)
    assert m.n == 3  # the query without an organ label is left out
    assert m.labels[-1] == NONE
    assert m.classes["spleen"].support == 2
    assert m.classes["spleen"].tp == 0
    assert m.classes["spleen"].recall == 0.0
    assert m.classes["spleen"].precision is None  # never predicted among labelled queries
    assert m.classes["liver"].precision == pytest.approx(1 / 2)
    assert NONE not in m.classes
    assert int(m.confusion.sum()) == 3


def test_class_only_predicted_has_precision_zero_and_no_recall() -> None:
    m = evaluate("modality", ["CT", "CT"], ["MR", "CT"])
    assert m.classes["MR"].support == 0
    assert m.classes["MR"].recall is None
    assert m.classes["MR"].precision == 0.0
    assert m.macro_precision == pytest.approx(1.0)  # only true classes count


def test_levels_and_shapes() -> None:
    truth = [{"modality": "CT", "region": "chest"}, {"modality": "MR", "region": "head"}]
    pred = [{"modality": "CT", "region": "head"}, {"modality": "MR", "region": "head"}]
    out = evaluate_levels(truth, pred)
    assert out["modality"].accuracy == 1.0
    assert out["region"].accuracy == 0.5
    assert out["organ"].n == 0 and out["organ"].accuracy is None
    d = out["region"].to_dict()
    assert np.array(d["confusion"]["matrix"]).shape == (2, 2)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError):
        evaluate("region", ["a"], [])


@pytest.mark.parametrize(("value", "text"), [(1.0, "1.0"), (0.9861, ".986"), (0.0, "0"),
                                             (None, ""), (0.5, ".500")])
def test_paper_number_format(value: float | None, text: str) -> None:
    assert fmt(value) == text
