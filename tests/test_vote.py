"""The weighted vote on hand-made hits with known answers."""

from __future__ import annotations

import pytest

from search.store import Hit
from search.vote import vote


def h(vid: str, sl: int, score: float, **labels: str) -> Hit:
    return Hit(f"{vid}-{sl}", score, {"volume_id": vid, "slice": sl, **labels})


def test_count_vote_ranking_and_pairs() -> None:
    hits = [[h("A", 3, 0.9, modality="CT")], [h("B", 1, 0.8)], [h("A", 5, 0.7, modality="CT")]]
    r = vote([0, 1, 2], [1.0, 1.0, 1.0], hits)
    assert [x.volume_id for x in r.ranking] == ["A", "B"]
    a = r.ranking[0]
    assert a.votes == 2 and a.hits == 2 and a.score == pytest.approx(2 / 3)
    assert a.similarity == pytest.approx(0.8)
    assert a.labels == {"modality": "CT"}
    assert [(m.query_slice, m.db_slice) for m in a.matches] == [(0, 3), (2, 5)]
    assert [p.volume_id for p in r.slice_predictions] == ["A", "B", "A"]


def test_weights_change_the_winner() -> None:
    hits = [[h("A", 0, 0.9)], [h("A", 1, 0.9)], [h("B", 2, 0.9)]]
    assert vote([0, 1, 2], [1, 1, 1], hits).ranking[0].volume_id == "A"
    r = vote([0, 1, 2], [0.1, 0.1, 1.0], hits)
    assert r.ranking[0].volume_id == "B"
    assert r.ranking[0].votes == pytest.approx(1.0)
    assert r.total_weight == pytest.approx(1.2)


def test_k_neighbours_all_vote() -> None:
    hits = [[h("A", 0, 0.9), h("B", 0, 0.8)], [h("B", 1, 0.9), h("C", 1, 0.5)]]
    r = vote([0, 1], [1, 1], hits)
    assert [x.volume_id for x in r.ranking] == ["B", "A", "C"]
    assert r.ranking[0].score == pytest.approx(2 / 4)


def test_ties_break_on_similarity_then_id() -> None:
    hits = [[h("B", 0, 0.5)], [h("A", 0, 0.9)]]
    assert [x.volume_id for x in vote([0, 1], [1, 1], hits).ranking] == ["A", "B"]
    hits = [[h("B", 0, 0.5)], [h("A", 0, 0.5)]]
    assert [x.volume_id for x in vote([0, 1], [1, 1], hits).ranking] == ["A", "B"]


def test_top_and_empty() -> None:
    hits = [[h(v, 0, 0.5)] for v in "ABCDE"]
    assert len(vote(list(range(5)), [1] * 5, hits, top=2).ranking) == 2
    assert vote([], [], []).ranking == []
    with pytest.raises(ValueError):
        vote([0], [1, 2], [[]])
