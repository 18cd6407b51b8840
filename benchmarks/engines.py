"""``medir bench engines``: the same vectors in FAISS exact, FAISS HNSW and the Qdrant store.

Per engine (and per query-time beam width ``ef`` for the graph indexes) it records: build time
(adds, training, graph), memory (RSS delta of this process over the build, and bytes the index
takes serialised or on disk), recall@k against exact search, single-query and batch QPS,
p50/p95 latency of one 100-slice volume query (one batched request, as medir's search does),
and how often the top-voted volume of that query equals exact search's.

Vector sets: ``sample`` (the cached embeddings of a real collection), or N synthetic 384-d
"volumes": smooth random walks on the unit sphere, 60–300 slices each, a crude stand-in for
slice embeddings (neighbouring slices are similar, volumes differ). Queries are database slices
plus noise, so every query has true near neighbours.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from benchmarks.cache import atomic_path
from benchmarks.indexes import VectorIndex, as_unit, make_index, tie_aware_recall
from benchmarks.machine import BenchGuard, rss_bytes, stamp
from medir.errors import ConfigError

DEFAULT_ENGINES = ("flat", "hnsw:M=32,efC=128", "qdrant:m=32,efc=128")


@dataclass
class VectorSet:
    """Database vectors, the volume each row belongs to, and the query material."""

    name: str
    vectors: NDArray[np.float32]
    volume_of: NDArray[np.int64]
    queries: NDArray[np.float32]  # single slices, for recall and QPS
    volume_queries: list[NDArray[np.float32]] = field(default_factory=list)  # 100-slice batches


def parse_size(text: str) -> int | str:
    """``sample`` | ``100000`` | ``100k`` | ``0.44m``."""
    t = text.strip().lower()
    if t == "sample":
        return "sample"
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise ConfigError(f"bad size {text!r}; use sample, 100000, 100k or 0.44m") from None
    if n < 2:
        raise ConfigError(f"size {text!r} is too small")
    return n


def synthetic_volumes(n: int, dim: int = 384, seed: int = 0, slices: tuple[int, int] = (60, 300),
                      step: float = 0.15) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """``n`` unit vectors grouped in volumes of smooth random walks; (vectors, volume_of)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    vol = np.empty(n, np.int64)
    start, v = 0, 0
    while start < n:
        m = min(int(rng.integers(slices[0], slices[1] + 1)), n - start)
        walk = rng.standard_normal((m, dim)).astype(np.float32) * step
        walk[0] = rng.standard_normal(dim).astype(np.float32)
        out[start:start + m] = np.cumsum(walk, axis=0)
        vol[start:start + m] = v
        start += m
        v += 1
    return as_unit(out), vol


def _noisy(x: np.ndarray, rng: np.random.Generator, noise: float) -> NDArray[np.float32]:
    scale = noise / np.sqrt(x.shape[1])  # noise = expected norm of the perturbation
    return as_unit(x + rng.standard_normal(x.shape).astype(np.float32) * scale)


def make_queries(vectors: NDArray[np.float32], volume_of: NDArray[np.int64], n_queries: int,
                 n_volume_queries: int, volume_slices: int = 100, noise: float = 0.3,
                 seed: int = 1) -> tuple[NDArray[np.float32], list[NDArray[np.float32]]]:
    """Noisy copies of random database slices, and of ``volume_slices``-slice runs of random
    volumes (the shape of a volume query)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(vectors.shape[0], size=min(n_queries, vectors.shape[0]), replace=False)
    singles = _noisy(vectors[rows], rng, noise)
    vols: list[NDArray[np.float32]] = []
    ids = np.unique(volume_of)
    for _ in range(n_volume_queries):
        v = int(rng.choice(ids))
        idx = np.flatnonzero(volume_of == v)
        take = idx[:volume_slices]
        if take.size < volume_slices:  # short volume: repeat it, a query is 100 slices
            take = np.resize(idx, volume_slices)
        vols.append(_noisy(vectors[take], rng, noise))
    return singles, vols


def _top_volume(ids: NDArray[np.int64], volume_of: NDArray[np.int64]) -> int:
    top = ids[:, 0]
    top = top[top >= 0]
    if top.size == 0:
        return -1
    return int(np.bincount(volume_of[top]).argmax())


def measure(index: VectorIndex, vs: VectorSet, truth: NDArray[np.float32], k: int,
            volume_k: int, exact_volumes: Sequence[int], n_single: int) -> dict[str, Any]:
    """Recall (tie aware, against the exact scores ``truth``), QPS, volume-query latency and
    vote agreement of a built index."""
    res = index.search(vs.queries, k)
    recall = tie_aware_recall(res.ids, vs.queries, vs.vectors, truth, k)
    recall1 = tie_aware_recall(res.ids, vs.queries, vs.vectors, truth, 1)
    singles = vs.queries[:n_single]
    t0 = time.perf_counter()
    for q in singles:
        index.search(q[None, :], k)
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.search(vs.queries, k)
    batch_s = time.perf_counter() - t0
    lat: list[float] = []
    agree = 0
    for vq, ev in zip(vs.volume_queries, exact_volumes, strict=True):
        t0 = time.perf_counter()
        r = index.search(vq, volume_k)
        lat.append(time.perf_counter() - t0)
        agree += int(_top_volume(r.ids, vs.volume_of) == ev)
    return {
        f"recall@{k}": round(recall, 4),
        "recall@1": round(recall1, 4),
        "single_qps": round(len(singles) / single_s, 1) if single_s > 0 else None,
        "batch_qps": round(len(vs.queries) / batch_s, 1) if batch_s > 0 else None,
        "volume_query_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2) if lat else None,
        "volume_query_p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 2) if lat else None,
        "top_volume_agreement": round(agree / len(lat), 4) if lat else None,
    }


def bench_set(vs: VectorSet, engines: Sequence[str], efs: Sequence[int], k: int = 10,
              volume_k: int = 1, n_single: int = 200, progress: bool = True,
              ) -> list[dict[str, Any]]:
    """Every engine on one vector set; one row per (engine, ef)."""
    dim = int(vs.vectors.shape[1])
    ref = make_index("flat", dim).build(vs.vectors)
    truth = ref.search(vs.queries, k).scores
    exact_volumes = [_top_volume(ref.search(vq, volume_k).ids, vs.volume_of)
                     for vq in vs.volume_queries]
    ref.close()
    rows: list[dict[str, Any]] = []
    for spec in engines:
        gc.collect()
        index = make_index(spec, dim)
        before = rss_bytes()
        desc = f"{vs.name}: build {spec}"
        with tqdm(total=1, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
            index.build(vs.vectors)
        delta = rss_bytes() - before
        stored = index.stored_bytes()
        graph = index.kind in ("hnsw", "qdrant")
        for ef in (efs if graph else [None]):
            if ef is not None:
                index.set_ef(ef)
            row = {"set": vs.name, "n": int(vs.vectors.shape[0]), "dim": dim,
                   "engine": index.kind, "spec": index.spec, "ef": ef, "k": k,
                   "build_seconds": round(index.build_seconds, 3),
                   "rss_delta_bytes": int(delta),
                   "rss_bytes_per_vector": round(delta / vs.vectors.shape[0], 1),
                   "stored_bytes": stored,
                   "queries": int(vs.queries.shape[0]),
                   "volume_queries": len(vs.volume_queries)}
            row.update(measure(index, vs, truth, k, volume_k, exact_volumes, n_single))
            rows.append(row)
            if progress:
                tqdm.write(f"{vs.name:>8} {index.spec:<34} ef={ef!s:>4} "
                           f"recall@{k}={row[f'recall@{k}']:.3f} "
                           f"p50={row['volume_query_p50_ms']}ms build={row['build_seconds']}s")
        index.close()
        del index
    return rows


def write_engines(rows: list[dict[str, Any]], out: Path, config: dict[str, Any],
                  guard: BenchGuard | None = None) -> dict[str, Path]:
    """``engines.json`` (with machine, commit and ``guard``'s load record), ``engines.csv``
    and ``engines.md``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "engines.json", "csv": out / "engines.csv",
             "markdown": out / "engines.md"}
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps({"benchmark": "engines", **stamp(guard), "config": config,
                                   "results": rows}, indent=1))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    import csv

    with atomic_path(files["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    k = config.get("k", 10)
    lines = [f"| set | n | engine | ef | build s | recall@{k} | recall@1 | single QPS | "
             "batch QPS | 100-slice p50 ms | p95 ms | top volume = exact | RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['n']} | {r['spec']} | {r['ef'] or ''} | {r['build_seconds']} | "
            f"{r[f'recall@{k}']} | {r['recall@1']} | {r['single_qps']} | {r['batch_qps']} | "
            f"{r['volume_query_p50_ms']} | {r['volume_query_p95_ms']} | "
            f"{r['top_volume_agreement']} | {r['rss_delta_bytes'] / 2**20:.1f} |")
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return files
