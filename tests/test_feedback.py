"""Relevance feedback: marked volumes' votes re-rank a query (pure combination, then a real
store with a small real embedder)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.pipeline import ingest_paths
from medir.errors import ConfigError, MedirError
from search.feedback import check_marks, feedback_ranking
from search.query import QueryOptions, search_indexed
from search.store_edge import EdgeStore
from search.vote import VolumeResult, VoteResult
from tests.test_pipeline import _blob_volume


def _vote(shares: dict[str, float]) -> VoteResult:
    ranking = [VolumeResult(i + 1, v, s, 1, s, 0.5) for i, (v, s) in
               enumerate(sorted(shares.items(), key=lambda t: -t[1]))]
    return VoteResult(ranking, [], 1.0)


def test_feedback_combines_positive_and_negative_shares() -> None:
    q = _vote({"a": 0.5, "b": 0.4, "c": 0.1})
    liked = _vote({"b": 0.6, "d": 0.4})
    unliked = _vote({"a": 0.9, "c": 0.1})
    out = feedback_ranking(q, [liked], [unliked], ["x"], top=10)
    assert [r.volume_id for r in out] == ["b", "d", "c", "a"]
    assert out[0].rerank_score == pytest.approx(0.5) and out[0].score == pytest.approx(0.4)
    assert out[-1].rerank_score == pytest.approx(0.25 - 0.9)
    # marked volumes never come back; without a query the liked votes rank alone
    assert [r.volume_id for r in feedback_ranking(None, [liked], [], ["b"], top=5)] == ["d"]
    with pytest.raises(ValueError):
        feedback_ranking(None, [], [unliked], [], top=5)
    with pytest.raises(ConfigError, match="both"):
        check_marks(["a"], ["a"])


def test_marks_move_a_real_ranking(tmp_path: Path, make_nifti) -> None:
    # case k and case k+3 share an anatomy (kind k % 3); case6 is a third of kind 0
    files = [make_nifti(_blob_volume(k % 3, seed=k), np.diag([1, 1, 2.0, 1]),
                        name=f"case{k}.nii.gz") for k in range(7)]
    emb = get_embedder("test-tiny", device="cpu")
    opts = QueryOptions(weighting="none", top=5)
    with EdgeStore(tmp_path / "s") as store:
        ingest_paths(files, store, emb)
        base = search_indexed("case0", store, emb, opts)
        assert sorted(r.volume_id for r in base.ranking) == ["case3", "case6"]  # its kind
        # "more like case1": case1's twin case4 joins the ranking with the query's own kind
        liked = search_indexed("case0", store, emb, replace(opts, like=["case1"]))
        assert sorted(r.volume_id for r in liked.ranking) == ["case3", "case4", "case6"]
        assert liked.options["like"] == ["case1"] and "feedback_s" in liked.timings
        # ... and "not like case6" (a third volume of case0's anatomy, whose own vote goes to
        # case0 and case3) sinks case3 below case4
        both = search_indexed("case0", store, emb, replace(opts, like=["case1"],
                                                            unlike=["case6"]))
        ids = [r.volume_id for r in both.ranking]
        assert "case1" not in ids and "case6" not in ids
        assert ids.index("case4") < ids.index("case3")
        with pytest.raises(MedirError, match="no indexed volume"):
            search_indexed("case0", store, emb, replace(opts, like=["nope"]))
    with pytest.raises(ConfigError, match="list of volume ids"):
        QueryOptions(like="case1")


def test_bench_feedback_measures_one_mark(tmp_path: Path) -> None:
    """`medir bench feedback` on a synthetic collection: every query runs before and after one
    simulated mark through the product's query; the JSON counts the marks and the answers."""
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from ingest.labels import EVAL_MANIFEST_COLUMNS, write_manifest
    from medir.cli import app
    from tests.test_audit import _textured

    coll = tmp_path / "coll"
    coll.mkdir()
    rows = []
    for i in range(6):  # three classes, two cases each; similar textures within a class
        vol = _textured(i % 3, n=16) + np.float32(i * 3)
        name = f"v{i}"
        nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1.0])), str(coll / f"{name}.nii.gz"))
        rows.append({"case_id": name, "file": f"{name}.nii.gz", "modality": "MR",
                     "region": ["head", "chest", "knee"][i % 3], "case": name, "dataset": "t"})
    write_manifest(coll / "manifest.csv", rows, EVAL_MANIFEST_COLUMNS)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [
        "bench", "feedback", "--dataset", str(coll), "--model", "test-tiny", "--prep",
        "percentile", "--cache", str(tmp_path / "c"), "--out", str(out), "--no-progress",
        "--allow-busy", "--page", "5", "--k", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "feedback.json").read_text())
    assert doc["git"]["commit"] and set(doc["results"]) == {"like", "unlike", "like+unlike"}
    assert doc["results"]["like"]["n"] == doc["marks"]["like"] == 6
    assert len(doc["queries"]) == 6
    # a liked volume is of the query's class, an unliked one is not, and neither comes back
    for q in doc["queries"]:
        assert q["like"] != q["volume"]
        assert q["unlike"] is None or q["unlike"] == q["top"]["query"]
        if q["like"]:
            assert q["top"]["like"] != q["like"]
        if q["unlike"]:
            assert q["top"]["unlike"] != q["unlike"]
    like = doc["results"]["like"]
    assert 0 <= like["after"]["rank1"] <= like["n"] and 0 <= like["after"]["precision"] <= 1
