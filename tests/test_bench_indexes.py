"""Congruence: every index answers the same call, and agrees with exact search: the same
vectors go to each engine and the ids and scores are compared with numpy's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.engines import VectorSet, bench_set, make_queries, parse_size, synthetic_volumes
from benchmarks.indexes import as_unit, exact_search, make_index, recall_at_k
from medir.errors import ConfigError

DIM = 24


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, vol = synthetic_volumes(1500, DIM, seed=3, slices=(20, 60))
    q, _ = make_queries(x, vol, 60, 0, noise=0.2, seed=4)
    return x, q


@pytest.mark.parametrize("spec", ["flat", "qdrant:exact", "qdrant-local:exact"])
def test_exact_engines_equal_numpy(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    truth = exact_search(x, q, 10)
    index = make_index(spec, DIM).build(x)
    try:
        got = index.search(q, 10)
    finally:
        index.close()
    assert got.ids.shape == (len(q), 10)
    # ids may only differ where two scores tie; scores must agree everywhere
    np.testing.assert_allclose(got.scores, truth.scores, atol=1e-5)
    assert recall_at_k(got.ids, truth.ids) >= 0.99


@pytest.mark.parametrize("spec", ["hnsw:M=16,efC=64,efS=64", "qdrant:m=16,efc=64,ef=64"])
def test_graph_engines_near_exact(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    truth = exact_search(x, q, 10)
    index = make_index(spec, DIM).build(x)
    try:
        got = index.search(q, 10)
    finally:
        index.close()
    assert recall_at_k(got.ids, truth.ids) >= 0.9
    # every returned score is the true cosine of the returned row, best first
    true_scores = np.einsum("qd,qkd->qk", as_unit(q), x[got.ids])
    np.testing.assert_allclose(got.scores, true_scores, atol=1e-5)
    assert np.all(np.diff(got.scores, axis=1) <= 1e-6)


def test_lsh_returns_true_cosines_and_beats_chance(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    truth = exact_search(x, q, 10)
    index = make_index("lsh:nbits=96", DIM).build(x)
    got = index.search(q, 10)
    index.close()
    np.testing.assert_allclose(got.scores, np.einsum("qd,qkd->qk", as_unit(q), x[got.ids]),
                               atol=1e-5)
    chance = 10 / len(x)
    assert recall_at_k(got.ids, truth.ids) > 20 * chance


def test_index_pads_when_k_exceeds_rows() -> None:
    x = as_unit(np.random.default_rng(0).standard_normal((5, DIM)))
    for spec in ("flat", "hnsw"):
        r = make_index(spec, DIM).build(x).search(x[:2], 8)
        assert (r.ids[:, 5:] == -1).all() and set(r.ids[0, :5].tolist()) == set(range(5))


@pytest.mark.parametrize("spec", ["nope", "hnsw:Q=3", "lsh:nbits=x"])
def test_bad_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        make_index(spec, DIM)


def test_recall_at_k_by_hand() -> None:
    truth = np.array([[1, 2], [3, 4]])
    found = np.array([[2, 9], [4, 3]])
    assert recall_at_k(found, truth) == pytest.approx(3 / 4)
    assert recall_at_k(found, truth, 1) == pytest.approx(0.0)


def test_parse_size() -> None:
    assert parse_size("100k") == 100_000
    assert parse_size("0.44m") == 440_000
    assert parse_size("sample") == "sample"
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_engines_bench_rows(tmp_path: Path) -> None:
    x, vol = synthetic_volumes(1200, DIM, seed=5, slices=(30, 80))
    q, vq = make_queries(x, vol, 50, 4, volume_slices=100, seed=6)
    vs = VectorSet("tiny", x, vol, q, vq)
    rows = bench_set(vs, ["flat", "hnsw:M=8,efC=32", "qdrant:m=8,efc=32"], [16, 64], k=5,
                     n_single=10, progress=False)
    by = {(r["engine"], r["ef"]): r for r in rows}
    assert set(by) == {("flat", None), ("hnsw", 16), ("hnsw", 64), ("qdrant", 16),
                       ("qdrant", 64)}
    assert by[("flat", None)]["recall@5"] == 1.0
    assert by[("flat", None)]["top_volume_agreement"] == 1.0
    for r in rows:
        assert 0.0 <= r["recall@5"] <= 1.0 and r["volume_queries"] == 4
        assert r["single_qps"] > 0 and r["batch_qps"] > 0
        assert r["volume_query_p95_ms"] >= r["volume_query_p50_ms"]
    # a wider beam never finds fewer true neighbours on the same graph
    assert by[("hnsw", 64)]["recall@5"] >= by[("hnsw", 16)]["recall@5"]


def test_engines_cli_writes_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medir.cli.bench import app

    res = CliRunner().invoke(app, ["engines", "--sizes", "800", "--dim", "16", "--engines",
                                   "flat", "--engines", "hnsw:M=8,efC=32", "--ef", "32",
                                   "--queries", "40", "--volume-queries", "3", "--single", "5",
                                   "--out", str(tmp_path), "--no-progress",
                                   "--allow-busy"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "engines.json").read_text())
    assert doc["git"]["commit"] and doc["machine"]["cpu_count"]
    assert [r["engine"] for r in doc["results"]] == ["flat", "hnsw"]
    assert all(r["n"] == 800 and r["dim"] == 16 for r in doc["results"])
    assert "synthetic-800" in (tmp_path / "engines.md").read_text()
