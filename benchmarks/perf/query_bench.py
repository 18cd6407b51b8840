"""Query latency by stage (embed, k-NN, vote) for 10, 100 and all slices of a query volume,
against a store holding the sample collection (or any files given)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.perf.common import log
from ingest.embedders import Embedder
from ingest.pipeline import ingest_paths
from ingest.reader import open_volume
from runner.query_service import search_volume
from search.query import QueryOptions
from search.store_edge import EdgeStore

SIZES: tuple[str, ...] = ("10", "100", "all")


def bench_queries(files: list[Path], query_file: Path, embedder: Embedder,
                  repeats: int = 5, sizes: tuple[str, ...] = SIZES) -> dict[str, Any]:
    """Median embed / k-NN / vote seconds of ``repeats`` volume queries per size."""
    with tempfile.TemporaryDirectory(prefix="medir-perf-q-") as tmp, \
            EdgeStore(Path(tmp) / "store") as store:
        log(f"query: indexing {len(files)} files")
        ingest_paths(files, store, embedder)
        vf = open_volume(query_file)
        vol = vf.read(0 if vf.is_4d else None)
        out: dict[str, Any] = {"query": vol.volume_id, "query_slices": vol.n_slices,
                               "indexed_files": len(files), "by_size": {}}
        for size in sizes:
            n = vol.n_slices if size == "all" else min(int(size), vol.n_slices)
            sampling = "all" if size == "all" else f"random:{n}:0"
            opts = QueryOptions(sampling=sampling, weighting="gaussian", k=1)
            search_volume(vol, store, embedder, opts)  # warm-up
            runs = [search_volume(vol, store, embedder, opts).timings for _ in range(repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            out["by_size"][size] = {
                "slices": n, "repeats": repeats,
                **{f"{k[:-2]}_ms": v * 1000.0 for k, v in med.items()},
                "knn_vote_ms": (med["knn_s"] + med["vote_s"]) * 1000.0,
            }
            log(f"query {size}: {out['by_size'][size]}")
    return out


def bench_latency(index_files: list[Path], query_file: Path, models: list[str],
                  samplings: list[str], embedder_factory: Any, repeats: int = 1
                  ) -> dict[str, Any]:
    """End-to-end latency of one volume query (read + window + embed + k-NN + vote) per
    (model, sampling), interleaved round by round; the store holds ``index_files`` embedded
    with each model (one collection per model)."""
    import time

    out: dict[str, Any] = {"query": query_file.name, "rows": {}}
    with tempfile.TemporaryDirectory(prefix="medir-perf-ql-") as tmp, \
            EdgeStore(Path(tmp) / "store") as store:
        embs = {m: embedder_factory(m) for m in models}
        for m, emb in embs.items():
            log(f"query latency: indexing {len(index_files)} files with {m}")
            ingest_paths(index_files, store, emb)
        times: dict[str, list[dict[str, float]]] = {}
        for _ in range(repeats):
            for m, emb in embs.items():
                for s in samplings:
                    t0 = time.perf_counter()
                    vf = open_volume(query_file)
                    vol = vf.read(0 if vf.is_4d else None)
                    t_read = time.perf_counter() - t0
                    res = search_volume(vol, store, emb,
                                        QueryOptions(sampling=s, weighting="gaussian", k=1))
                    total = time.perf_counter() - t0
                    row = {"read_s": t_read, "total_s": total, "slices": len(res.chosen_slices),
                           **res.timings}
                    times.setdefault(f"{m}|{s}", []).append(row)
                    log(f"query {m} {s}: {row}")
        for key, rows in times.items():
            out["rows"][key] = {k: statistics.median(float(x[k]) for x in rows) for k in rows[0]}
            out["query_slices"] = vol.n_slices
    return out
