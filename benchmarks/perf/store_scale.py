"""The embedded store (Qdrant Edge) at scale: upsert rate, HNSW build time, query p50 of a
100-slice volume query (k-NN + vote, the embedding excluded), recall and memory.

Points are synthetic but shaped like medir's: unit 384-d vectors that drift smoothly along
each volume's slices around a per-volume centre, with the payload the ingest writes. The query
is a perturbed copy of 100 consecutive slices of one stored volume.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks.machine import rss_bytes
from benchmarks.perf.common import log, percentile_ms
from medir.config import HnswSettings, StoreSettings
from search.query import QueryOptions, search_vectors
from search.store import LAYOUT, READY, SlicePoint, collection_name, point_id
from search.store_edge import EdgeStore

COLL = collection_name("perf-synthetic")


def volume_vectors(v: int, n: int, dim: int, seed: int) -> NDArray[np.float32]:
    """Unit vectors of volume ``v``'s ``n`` slices (deterministic in ``seed`` and ``v``)."""
    rng = np.random.default_rng((seed, v))
    centre = rng.normal(size=dim)
    walk = np.cumsum(rng.normal(scale=0.15, size=(n, dim)), axis=0)
    x = (centre + walk + rng.normal(scale=0.3, size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_points(total: int, dim: int, per_volume: int, seed: int = 0
                     ) -> Iterator[list[SlicePoint]]:
    """Batches of one volume's points each until ``total`` points."""
    made, v = 0, 0
    while made < total:
        n = min(per_volume, total - made)
        vec = volume_vectors(v, n, dim, seed)
        sha = f"{v:064x}"
        base = {"volume_id": f"syn{v:06d}", "case_id": f"syn{v:06d}", "n_slices": n,
                "source": "synthetic", "content_id": sha, "embedder": "perf@1",
                "modality": "CT" if v % 2 else "MR", "state": READY.must["state"],
                "gen": "0", "layout": LAYOUT}
        yield [SlicePoint(point_id(f"syn{v:06d}", sha, i, "perf@1", "0"), vec[i],
                          {**base, "slice": i, "z_mm": 2.5 * i}) for i in range(n)]
        made += n
        v += 1


def _fill(store: EdgeStore, n_points: int, dim: int, per_volume: int, upsert_batch: int,
          seed: int) -> tuple[float, float]:
    """Upsert ``n_points`` synthetic slices in batches, then build the HNSW graph:
    (upsert seconds, build seconds)."""
    t_up = 0.0
    buf: list[SlicePoint] = []
    done = 0
    next_log = n_points // 10

    def upsert() -> float:
        t0 = time.perf_counter()
        store.upsert(COLL, buf)
        return time.perf_counter() - t0

    for pts in synthetic_points(n_points, dim, per_volume, seed):
        buf.extend(pts)
        if len(buf) >= upsert_batch:
            t_up += upsert()
            done += len(buf)
            buf = []
            if done >= next_log:
                log(f"store {n_points}: upserted {done}")
                next_log += n_points // 10
    if buf:
        t_up += upsert()
    t0 = time.perf_counter()
    store.flush()
    store.optimize(COLL)
    build_s = time.perf_counter() - t0
    log(f"store {n_points}: HNSW built in {build_s:.1f} s")
    return t_up, build_s


def _noisy_query(n_points: int, dim: int, per_volume: int, query_slices: int,
                 seed: int) -> NDArray[np.float32]:
    """The query: a noisy copy of slices 50..149 of volume 3 (unit rows)."""
    q_vol = min(3, max(0, n_points // per_volume - 1))
    src = volume_vectors(q_vol, per_volume, dim, seed)
    rng = np.random.default_rng(seed + 1)
    lo = max(0, min(50, per_volume - query_slices))
    q = src[lo:lo + query_slices] + rng.normal(scale=0.05, size=(query_slices, dim))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _measure_ef(store: EdgeStore, q: NDArray[np.float32], repeats: int,
                exact_ids: list[str | None], exact_top: str) -> dict[str, Any]:
    """k-NN and vote latency (first run a warm-up), recall@1 against exact search, and
    whether the top volume matches exact search, at the store's current ``ef``."""
    opts = QueryOptions(sampling="all", weighting="gaussian", k=1, top=10)
    knn, vote_t, total = [], [], []
    top = ""
    for _ in range(repeats + 1):
        found = search_vectors(store, COLL, q, len(q), 2.5, opts)
        t = found.timings
        knn.append(t["knn_s"])
        vote_t.append(t["vote_s"])
        total.append(t["knn_s"] + t["vote_s"])
        top = found.vote.ranking[0].volume_id if found.vote.ranking else ""
    knn, vote_t, total = knn[1:], vote_t[1:], total[1:]  # first: warm-up
    hits = store.search_batch(COLL, q, 1, READY)
    recall = float(np.mean([bool(h) and h[0].id == e
                            for h, e in zip(hits, exact_ids, strict=True)]))
    return {
        "knn_p50_ms": percentile_ms(knn, 50), "knn_p95_ms": percentile_ms(knn, 95),
        "vote_p50_ms": percentile_ms(vote_t, 50),
        "knn_vote_p50_ms": percentile_ms(total, 50),
        "recall_at_1": recall,
        "top_volume_matches_exact": top == exact_top,
    }


def bench_store(n_points: int, dim: int = 384, per_volume: int = 200, query_slices: int = 100,
                repeats: int = 20, efs: tuple[int, ...] = (64, 128, 256), m: int = 16,
                ef_construct: int = 128, upsert_batch: int = 512, seed: int = 0,
                keep_dir: Path | None = None, storage: StoreSettings | None = None
                ) -> dict[str, Any]:
    """Build a store of ``n_points`` and measure it; the store is deleted afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="medir-perf-store-", dir=keep_dir))
    try:
        rss0 = rss_bytes()
        storage = storage or StoreSettings()
        store = EdgeStore(tmp, HnswSettings(m=m, ef_construct=ef_construct), storage)
        store.ensure_collection(COLL, dim)
        t_up, build_s = _fill(store, n_points, dim, per_volume, upsert_batch, seed)
        count = store.count(COLL)
        q = _noisy_query(n_points, dim, per_volume, query_slices, seed)
        exact_hits = store.search_batch(COLL, q, 1, READY, exact=True)
        exact_ids = [h[0].id if h else None for h in exact_hits]
        exact = search_vectors(store, COLL, q, len(q), 2.5,
                               QueryOptions(sampling="all", k=1, exact=True))
        exact_top = exact.vote.ranking[0].volume_id if exact.vote.ranking else ""
        by_ef: dict[str, Any] = {}
        for ef in efs:
            store.hnsw = store.hnsw.model_copy(update={"ef": ef})
            by_ef[str(ef)] = _measure_ef(store, q, repeats, exact_ids, exact_top)
            log(f"store {n_points} ef={ef}: {by_ef[str(ef)]}")
        disk = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        rss1 = rss_bytes()
        store.close()
        return {
            "points": count, "dim": dim, "engine": "qdrant-edge", "m": m,
            "storage": storage.model_dump(),
            "ef_construct": ef_construct, "query_slices": query_slices, "repeats": repeats,
            "upsert_s": t_up, "upsert_points_per_s": n_points / t_up if t_up else None,
            "index_build_s": build_s,
            "exact_knn_ms": exact.timings["knn_s"] * 1000.0,
            "by_ef": by_ef,
            "rss_growth_bytes": rss1 - rss0, "rss_bytes": rss1, "disk_bytes": disk,
            "p50_target_ms": 50.0,
            "median_knn_vote_ms_default_ef": by_ef.get("128", {}).get("knn_vote_p50_ms"),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
