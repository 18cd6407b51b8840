"""The query steps (search.steps) are the product's and the quality benchmark's, and their
split out of search.query changed no answer.

The digests below were recorded on synthetic vectors with the code before the split (the
product's query over an embedded store; the quality bench's own sampling, vote and re-rank
copy, since removed): every product query, and every bench method over all slices, must give
the same rankings, votes, scores, weights and confidences. The bench's methods over a sampling
changed on purpose: they now choose the product's slices (test below).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.methods import parse_method, parse_sampling
from benchmarks.quality import Database, StoredVolume, run_query
from benchmarks.quality_embed import stride_slices
from medir.errors import ConfigError
from search.query import QueryOptions, search_indexed, search_vectors
from search.sampling import Sampling, Weighting
from search.steps import choose_slices
from search.store import COMPLETE, LAYOUT, SlicePoint, collection_name, point_id
from search.store_edge import EdgeStore

DIM = 8
# (volume id, case, modality, region, domain, n_slices, z spacing): spacings of 2 and 4 mm
# put every-mm:7 targets exactly between two slices
VOLUMES = [("ct_a", "s1", "CT", "chest", "hu", 14, 2.0),
           ("ct_a2", "s1", "CT", "chest", "hu", 9, 2.0),
           ("ct_b", "s2", "CT", "chest", "hu", 12, 4.0),
           ("ct_c", "s3", "CT", "abdomen", "hu", 16, 1.5),
           ("mr_a", "s4", "MR", "head", "non-hu", 11, 3.0),
           ("mr_b", "s5", "MR", "head", "non-hu", 13, 2.5),
           ("mr_c", "s6", "MR", "knee", "non-hu", 10, 1.0)]


def _vectors() -> dict[str, np.ndarray]:
    """Every slice's unit vector: its class's direction drifting along z, plus noise."""
    rng = np.random.default_rng(7)
    base = {c: rng.normal(size=(2, DIM)) for c in ("CT/chest", "CT/abdomen", "MR/head",
                                                    "MR/knee")}
    out = {}
    for vid, _, mod, reg, _, n, _ in VOLUMES:
        a, b = base[f"{mod}/{reg}"]
        t = np.linspace(0, 1, n)[:, None]
        x = (1 - t) * a + t * b + 0.6 * rng.normal(size=(n, DIM))
        out[vid] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _digest(obj: Any) -> str:
    """sha256 of the JSON of ``obj``, floats to 6 decimals (bit-level BLAS differences
    between machines do not count)."""
    def rounded(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 6)
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [rounded(v) for v in x]
        return x

    return hashlib.sha256(json.dumps(rounded(obj), sort_keys=True).encode()).hexdigest()[:16]


# ---- the product's query over a store ---------------------------------------------------------
@dataclass(frozen=True)
class _Model:
    name: str = "synth"
    embedder_id: str = "synth@1"
    dim: int = DIM


PRODUCT_OPTIONS: list[dict[str, Any]] = [
    {}, {"weighting": "gaussian"}, {"weighting": "gaussian:0.3", "k": 3},
    {"sampling": "every-mm:7", "weighting": "gaussian"}, {"sampling": "every-n:3"},
    {"sampling": "random:5:2", "k": 2}, {"sampling": "every-mm:5", "max_slices": 3},
    {"sampling": "all,max=4", "weighting": "gaussian"},
    {"rerank": "maxsim", "k": 2, "rerank_top": 3}, {"rerank": "zorder", "k": 2, "top": 3},
    {"cross_modality": True, "weighting": "gaussian"}, {"exclude_cases": ["s2"]},
    {"like": ["ct_b"], "k": 2}, {"unlike": ["mr_a"], "like": ["ct_c"], "k": 2, "rerank": "zorder"},
    {"filters": {"modality": ["CT"]}}]
#: recorded before search.query was split into options, result and steps
PRODUCT_BEFORE = [
    "a69334be578f6413", "e7ab35f8654a9def", "336afffe32a76fc8", "b46b779a3f43125f",
    "2bad5677c53dff6c", "601947d2548ccaec", "cae65d9001e9449d", "81ca2f5d14c4fe37",
    "044e341f9688791b", "1a36ffca83ea6fe7", "b18346987e4da2dc", "ed9e85708c774d1e",
    "6d38532a15cf5740", "c1a64a4dd8b4444b", "09a1ec1ca0d02466"]


def _compact(chosen: Any, weights: Any, ranking: Any, predictions: Any, answer: Any) -> dict:
    return {"chosen": list(chosen), "weights": list(weights),
            "ranking": [[r.rank, r.volume_id, r.votes, r.hits, r.score, r.similarity,
                         r.rerank_score, r.labels] for r in ranking],
            "predictions": [[m.query_slice, m.volume_id, m.db_slice, m.similarity, m.weight]
                            for m in predictions],
            "answer": answer}


def product_outcomes(root: Path) -> list[str]:
    """Per option set: the digest of every indexed volume's query and of a query with the
    vectors of a file's chosen slices."""
    vec = _vectors()
    coll = collection_name("synth")
    digests = []
    with EdgeStore(root) as store:
        store.ensure_collection(coll, DIM)
        for vid, case, mod, reg, dom, n, dz in VOLUMES:
            store.upsert(coll, [SlicePoint(
                point_id(vid, "c", i, "synth@1", "g"), vec[vid][i],
                {"volume_id": vid, "slice": i, "n_slices": n, "z_mm": i * dz,
                 "spacing": [1.0, 1.0, dz], "state": COMPLETE, "gen": "g",
                 "embedder": "synth@1", "layout": LAYOUT, "domain": dom, "case_id": case,
                 "source": vid, "modality": mod, "region": reg}) for i in range(n)])
        store.flush()
        for i, o in enumerate(PRODUCT_OPTIONS):
            opts = QueryOptions(exact=True, **o)
            out = {}
            for vid, *_ in VOLUMES:
                if vid not in (*opts.like, *opts.unlike):
                    r = search_indexed(vid, store, _Model(), opts)
                    out[vid] = _compact(r.chosen_slices, r.weights, r.ranking,
                                        r.slice_predictions, r.answer)
            rng = np.random.default_rng(i)
            chosen = opts.parsed()[0].select(16, 1.5)
            q = vec["ct_c"][chosen] + 0.2 * rng.normal(size=(chosen.size, DIM))
            f = search_vectors(store, coll, q.astype(np.float32), 16, 1.5, opts,
                               slice_indices=chosen, embedder_id="synth@1", domain="hu")
            out["vectors"] = _compact(f.chosen_slices, f.weights, f.vote.ranking,
                                      f.vote.slice_predictions, f.answer)
            digests.append(_digest(out))
    return digests


def test_the_products_answers_are_unchanged(tmp_path: Path) -> None:
    got = product_outcomes(tmp_path / "edge")
    changed = [PRODUCT_OPTIONS[i] for i, (a, b) in enumerate(zip(got, PRODUCT_BEFORE,
                                                                 strict=True)) if a != b]
    assert not changed, f"answers changed for options {changed}"


# ---- the quality bench over its in-memory database ---------------------------------------------
#: the methods over all slices: the bench's answers recorded before it called the product's
#: steps (its own copy of sampling, weighting, vote and re-rank, now removed)
BENCH_BEFORE = {"all": "20d96764f9e0a2cf", "W": "5775b116950e333d", "SW": "b2dccd8d297e9668",
                "W+maxsim": "be5c10051205d99f", "W+zorder": "5041795e18d5e444",
                "all+zorder": "395a7e1bda9aaf12", "W+domain": "81c93ea1f8789ef9",
                "W+maxsim+domain": "3902bb74fcc42f61"}


def _database(stride: float) -> Database:
    vec = _vectors()
    vols = []
    for vid, case, mod, reg, dom, n, dz in VOLUMES:
        sl = stride_slices(n, dz, stride, 8 if stride else None)
        vols.append(StoredVolume(vid, case, {"modality": mod, "region": reg}, sl,
                                 sl.astype(np.float64) * dz, dz, vec[vid][sl], dom))
    return Database(vols)


def bench_outcomes(spec: str) -> str:
    """The digest of a method's answers: every volume queries with its stored vectors (its
    case left out) and with a noisy copy of all its slices (k, rerank_top 2 and 3, 1 and 2),
    over a database of every slice and one of every 5 mm (at most 8 slices)."""
    vec = _vectors()
    m = parse_method(spec)
    out = {}
    for stride in (0.0, 5.0):
        db = _database(stride)
        for qi, v in enumerate(db.volumes):
            n = VOLUMES[qi][5]
            rng = np.random.default_rng(qi)
            q = vec[v.volume_id] + 0.3 * rng.normal(size=vec[v.volume_id].shape)
            q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
            runs = {"loco": run_query(db, v.vectors, v.slices, int(v.slices[-1]) + 1,
                                      v.z_spacing, m, db.study_mask(v.study), 2, 3, v.domain),
                    "full": run_query(db, q, np.arange(n), n, v.z_spacing, m, None, 1, 2,
                                      v.domain)}
            for mode, o in runs.items():
                ev = o.evidence
                out[f"{stride}|{v.volume_id}|{mode}"] = {
                    "ranking": o.ranking, "slice_top": o.slice_top,
                    "evidence": None if ev is None else [ev.top_share, ev.class_share,
                                                         ev.z_agreement, ev.similarity]}
    return _digest(out)


@pytest.mark.parametrize("spec", list(BENCH_BEFORE))
def test_the_benchs_answers_over_all_slices_are_unchanged(spec: str) -> None:
    assert bench_outcomes(spec) == BENCH_BEFORE[spec]


def test_the_bench_chooses_the_products_slices() -> None:
    """Over every slice of a volume the bench's every-mm, every-n, random and capped methods
    use exactly the slices of medir's query (the bench's own every-mm rule, removed, took the
    nearest slice to each target and broke ties downwards where the query rounds half to
    even); over every n-th slice, the nearest stored one stands in for each chosen slice."""
    for spec in ("every-mm:7", "W:every-mm:7,max=3", "every-n:3", "random:5", "all,max=4"):
        m = parse_method(spec)
        for *_, n, dz in VOLUMES:
            q = choose_slices(m.sampling, m.weighting, n, dz, np.arange(n))
            assert q.slices == m.sampling.select(n, dz).tolist()
            assert q.rows == q.slices
    s = Sampling.parse("every-mm:7")
    assert s.select(14, 2.0).tolist() == [0, 4, 7, 10]  # 3.5 mm -> 4, 10.5 -> 10
    stored = np.array([1, 3, 5, 7, 9, 11, 13])  # every 2nd slice of 14, 2 mm apart
    q = choose_slices(s, Weighting("none"), 14, 2.0, stored)
    # chosen 0, 4, 7, 10 -> the nearest stored 1, 3 (4: 3 and 5 tie, the lower), 7, 9
    assert q.slices == [1, 3, 7, 9] and q.rows == [0, 1, 3, 4]
    w = choose_slices(s, Weighting("gaussian"), 14, 2.0, stored)
    assert w.weights.tolist() == Weighting("gaussian").weights(np.array(w.slices), 14).tolist()
    # a stored slice stands in once, however many chosen slices it is nearest to
    assert choose_slices(Sampling("all"), Weighting("none"), 14, 2.0, stored).slices == \
        stored.tolist()


def test_slice_wise_over_a_sampling_scores_only_the_chosen_slices() -> None:
    db = _database(0.0)
    v = db.volumes[3]
    every = run_query(db, v.vectors, v.slices, v.slices.size, v.z_spacing,
                      parse_method("SW"), db.study_mask(v.study), 1, 1)
    some = run_query(db, v.vectors, v.slices, v.slices.size, v.z_spacing,
                     parse_method("SW:every-n:4"), db.study_mask(v.study), 1, 1)
    assert len(every.slice_top) == v.slices.size == 16
    assert some.slice_top == every.slice_top[::4] and not some.ranking


# ---- the one grammar ----------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "name", "sampling", "weighting", "rerank", "sw", "domain"), [
    ("W", "W", "all", "gaussian:0.25", "none", False, False),
    ("all", "all", "all", "none", "none", False, False),
    ("SW", "SW", "all", "none", "none", True, False),
    ("W:every-mm:7", "W:every-mm:7", "every-mm:7", "gaussian:0.25", "none", False, False),
    ("W:every-mm:7,max=20+domain", "W:every-mm:7,max=20+domain", "every-mm:7,max=20",
     "gaussian:0.25", "none", False, True),
    ("W+maxsim+domain", "W+maxsim+domain", "all", "gaussian:0.25", "maxsim", False, True),
    ("W,sigma=0.5", "W,sigma=0.5", "all", "gaussian:0.5", "none", False, False),
    ("w : every-mm:7 , max=3", "W:every-mm:7,max=3", "every-mm:7,max=3", "gaussian:0.25",
     "none", False, False),
    ("SW:every-n:4+domain", "SW:every-n:4+domain", "every-n:4", "none", "none", True, True),
    ("random:5", "random:5", "random:5:0", "none", "none", False, False),
    # the grid's older spelling of Gaussian weights over a sampling
    ("every-mm:7+gaussian:0.3", "W:every-mm:7,sigma=0.3", "every-mm:7", "gaussian:0.3",
     "none", False, False),
])
def test_one_method_grammar(spec: str, name: str, sampling: str, weighting: str, rerank: str,
                            sw: bool, domain: bool) -> None:
    m = parse_method(spec)
    assert (m.name, str(m.sampling), str(m.weighting), m.rerank, m.slice_wise, m.domain) == \
        (name, sampling, weighting, rerank, sw, domain)
    assert parse_method(m.name) == m  # a report's name reads back as the same method


@pytest.mark.parametrize(("spec", "match"), [
    ("W:0.5", r"W,sigma=0\.5"),  # the grid's old σ: one line with the new spelling
    ("W+maxsim+zorder", "at most one re-ranker"), ("W+domain+maxsim", "then domain"),
    ("SW+zorder", "no ranking to re-rank"), ("all,sigma=0.2", "W:<sampling>,sigma=S"),
    ("W+gaussian", "already"), ("sometimes", "bad sampling"), ("W:", "followed by a sampling"),
])
def test_bad_methods_are_one_line(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        parse_method(spec)
    assert "\n" not in str(err.value)


def test_the_grid_takes_votes_and_perf_takes_a_sampling() -> None:
    from benchmarks.grid import parse_variant

    v = parse_variant("W:every-mm:7")
    assert (v.name, v.group, v.column, v.weighting.kind) == ("W:every-mm:7", "W",
                                                             "W:every-mm:7", "gaussian")
    assert parse_variant("every-mm:7,max=20").column == "7,max=20"
    with pytest.raises(ConfigError, match="medir bench quality"):
        parse_variant("W+zorder")
    with pytest.raises(ConfigError, match="W,sigma=0.5"):
        parse_variant("W:0.5")
    assert str(parse_sampling("every-mm:7,max=20")) == "every-mm:7,max=20"
    with pytest.raises(ConfigError, match="takes the <sampling> of a method"):
        parse_sampling("W:every-mm:7")


def test_cli_lists_keep_a_methods_options() -> None:
    from medir.cli.bench import _split

    assert _split(["W:every-mm:7,max=12,W,sigma=0.3", "all,max=20+domain,SW"]) == \
        ["W:every-mm:7,max=12", "W,sigma=0.3", "all,max=20+domain", "SW"]
