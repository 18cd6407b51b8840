"""Query time through the real store: the database vectors of a quality run are written to
an embedded Qdrant Edge store (no re-embedding) and every stored volume queries it with
:func:`search.query.search_indexed`, once per re-ranker. What a query costs end to end in
medir: the batch k-NN request, the vote and, for a re-ranker, its one scroll of the
candidates' vectors and the scoring."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ingest.embedders.base import Embedder
from ingest.pipeline import open_collection, write_volume
from ingest.volume import Volume
from search.query import QueryOptions, search_indexed
from search.store_edge import EdgeStore

if TYPE_CHECKING:
    from benchmarks.quality import Database


def store_query_times(db: Database, embedder: Embedder, reranks: Sequence[str] = (
        "none", "maxsim", "zorder"), rerank_top: int = 5) -> dict[str, Any]:
    """Mean and p95 milliseconds per query (and of the re-rank step) for each re-ranker."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medir-quality-store-") as tmp, \
            EdgeStore(Path(tmp) / "edge") as store:
        coll = open_collection(store, embedder)
        for i, v in enumerate(db.volumes):
            step = float(v.z_mm[1] - v.z_mm[0]) if v.z_mm.size > 1 else v.z_spacing
            sha = hashlib.sha256(f"{i}:{v.volume_id}".encode()).hexdigest()
            vol = Volume(f"v{i}", f"v{i}", np.zeros((v.vectors.shape[0], 1, 1), np.float32),
                         (1.0, 1.0, step), "quality", sha)
            write_volume(store, coll, embedder, vol, v.vectors, "stored", 512, flush=False)
        store.flush()
        for rr in reranks:
            total: list[float] = []
            stage2: list[float] = []
            opts = QueryOptions(sampling="all", weighting="gaussian", k=1, top=10, rerank=rr,
                                rerank_top=rerank_top)
            for i in range(len(db.volumes)):
                t0 = time.perf_counter()
                res = search_indexed(f"v{i}", store, embedder, opts)
                total.append(time.perf_counter() - t0)
                stage2.append(res.timings.get("rerank_s", 0.0))
            t, s = np.asarray(total) * 1e3, np.asarray(stage2) * 1e3
            out[rr] = {"query_ms_mean": round(float(t.mean()), 2),
                       "query_ms_p95": round(float(np.percentile(t, 95)), 2),
                       "rerank_ms_mean": round(float(s.mean()), 2), "n": len(total)}
    return out
