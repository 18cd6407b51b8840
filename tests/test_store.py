"""Store round trip on both engines (embedded Qdrant Edge, qdrant-client), and their congruence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medir.errors import StoreUnavailable
from search.store import READY, Filter, SlicePoint, SliceStore, collection_name, point_id
from search.store_edge import EdgeStore
from search.store_qdrant import QdrantStore

DIM = 16


def _points(n_vol: int = 4, n_slices: int = 10, seed: int = 0) -> list[SlicePoint]:
    rng = np.random.default_rng(seed)
    pts = []
    for v in range(n_vol):
        centre = rng.normal(size=DIM)
        for s in range(n_slices):
            vec = centre + 0.1 * rng.normal(size=DIM)
            pts.append(SlicePoint(point_id(f"v{v}", f"sha{v}", s, "m@1"),
                                  (vec / np.linalg.norm(vec)).astype(np.float32),
                                  {"volume_id": f"vol{v}", "slice": s, "state": "pending",
                                   "modality": "CT" if v % 2 else "MR", "content_id": f"sha{v}"}))
    return pts


@pytest.fixture(params=["edge", "qdrant-local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SliceStore]:
    s: SliceStore = EdgeStore(tmp_path / "edge") if request.param == "edge" else QdrantStore(
        path=":memory:")
    yield s
    s.close()


def test_round_trip(store: SliceStore) -> None:
    coll = collection_name("My Model-1")
    assert coll == "medir_my_model_1"
    store.ensure_collection(coll, DIM)
    store.ensure_collection(coll, DIM)  # idempotent
    assert store.collections() == [coll] and store.collection_dim(coll) == DIM
    pts = _points()
    store.upsert(coll, pts[:25])
    store.upsert(coll, pts[20:])  # overlapping ids overwrite, no duplicates
    assert store.count(coll) == 40
    assert store.count(coll, READY) == 0
    # pending points are invisible to searches
    assert store.search_batch(coll, pts[0].vector[None], 3, READY) == [[]]
    store.set_payload(coll, Filter({"volume_id": ["vol0", "vol1"]}), {"state": "ready"})
    assert store.count(coll, READY) == 20
    hits = store.search_batch(coll, np.stack([pts[0].vector, pts[15].vector]), 3, READY,
                              exact=True, payload_keys=["volume_id", "slice"])
    assert hits[0][0].payload == {"volume_id": "vol0", "slice": 0}
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert all(x.payload["volume_id"] == "vol1" for x in hits[1])
    assert store.facet(coll, "modality", READY) == {"MR": 10, "CT": 10}
    recs = list(store.scroll(coll, Filter({"volume_id": "vol1"}), with_vectors=True, batch=3))
    assert len(recs) == 10 and all(r.vector is not None and r.vector.shape == (DIM,)
                                   for r in recs)
    store.delete(coll, Filter({"volume_id": "vol1"}))
    assert store.count(coll) == 30
    with pytest.raises(ValueError):
        store.delete(coll, Filter())
    # must_not and any-of filters
    flt = Filter({"state": "ready"}, must_not={"content_id": "sha0"})
    assert store.count(coll, flt) == 0
    store.drop_collection(coll)
    assert store.collections() == []


def test_engines_agree(tmp_path: Path) -> None:
    """Congruence: the same points and queries give the same exact neighbours in both engines."""
    pts = _points(6, 20, seed=3)
    queries = np.stack([p.vector for p in pts[::17]])
    results = []
    for s in (EdgeStore(tmp_path / "e"), QdrantStore(path=":memory:")):
        with s:
            s.ensure_collection("medir_c", DIM)
            s.upsert("medir_c", pts)
            s.set_payload("medir_c", Filter({"state": "pending"}), {"state": "ready"})
            res = s.search_batch("medir_c", queries, 5, READY, exact=True)
            results.append([[(h.id, round(h.score, 4)) for h in row] for row in res])
    assert results[0] == results[1]


def test_edge_store_persists_and_locks(tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_collection("medir_c", DIM)
        s.upsert("medir_c", _points(1, 5))
    with EdgeStore(tmp_path / "s") as s:
        assert s.count("medir_c") == 5
        with pytest.raises(StoreUnavailable, match="in use by another medir process"):
            EdgeStore(tmp_path / "s", lock_wait_s=0)  # refused before it loads anything
        assert s.count("medir_c") == 5
    with EdgeStore(tmp_path / "s", lock_wait_s=0) as s:  # closing released the lock
        assert s.count("medir_c") == 5


def test_hnsw_search_finds_exact_neighbours(tmp_path: Path) -> None:
    """After the index is built, HNSW answers equal exact search on well-separated data."""
    pts = _points(10, 200, seed=1)
    with EdgeStore(tmp_path / "h") as s:
        s.ensure_collection("medir_c", DIM)
        s.upsert("medir_c", pts)
        s.set_payload("medir_c", Filter({"state": "pending"}), {"state": "ready"})
        s.optimize("medir_c")
        q = np.stack([p.vector for p in pts[::50]])
        approx = s.search_batch("medir_c", q, 1, READY)
        exact = s.search_batch("medir_c", q, 1, READY, exact=True)
        assert [r[0].id for r in approx] == [r[0].id for r in exact]
