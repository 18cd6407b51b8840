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
from search.query import QueryOptions, search_volume
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
