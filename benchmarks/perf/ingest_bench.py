"""End-to-end ingest throughput by stage: the pipelined :func:`ingest_paths` and, as the
reference it replaced, the sequential per-volume loop (read → window → resize → forward →
upsert, one volume after the other), on the sample collection and a synthetic set.

Both runs write to fresh embedded stores; their stored vectors are compared point by point
(``max_abs_diff`` 0 means bit-identical), so the speed-up is shown not to change results.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.perf.common import log
from ingest.embedders import Embedder
from ingest.pipeline import (
    PipelineStats,
    ingest_paths,
    open_collection,
    write_volume,
)
from ingest.preprocess import normalize_intensity, resolve_intensity
from ingest.reader import open_volume
from search.store import collection_name
from search.store_edge import EdgeStore

# The synthetic set: many small volumes (cross-volume batching matters) and a few large ones.
SYNTHETIC_SPECS: list[tuple[int, tuple[int, int, int]]] = [
    (24, (128, 128, 12)),
    (6, (256, 256, 40)),
    (2, (512, 512, 80)),
]


def scaled_specs(scale: float) -> list[tuple[int, tuple[int, int, int]]]:
    """``SYNTHETIC_SPECS`` with each volume count multiplied by ``scale`` (at least one)."""
    return [(max(1, round(c * scale)), s) for c, s in SYNTHETIC_SPECS]


def run_pipelined(files: list[Path], embedder: Embedder, store_dir: Path,
                  prefetch: int = 4) -> dict[str, Any]:
    """Slices/s and stage seconds of :func:`ingest_paths` over ``files``."""
    stats = PipelineStats()
    done = [0]

    def progress(vid: str, d: int, n: int) -> None:
        if d == n:
            done[0] += 1
            if done[0] % 10 == 0:
                log(f"pipelined: {done[0]} volumes written")

    with EdgeStore(store_dir) as store:
        reports = ingest_paths(files, store, embedder, prefetch=prefetch, stats=stats,
                               progress=progress)
    log(f"pipelined: {stats.summary()}")
    failed = [r.to_dict() for r in reports if r.status == "failed"]
    out = stats.to_dict()  # stage seconds by field (read_s, ...) and by stage name (stages)
    out.update(slices_per_s=stats.slices / stats.wall_s, failed=failed,
               volumes_reported=len(reports))
    return out


def run_sequential(files: list[Path], embedder: Embedder, store_dir: Path) -> dict[str, Any]:
    """The pre-pipeline loop, timed by stage (what ``Embedder.embed`` and ``index_volume`` do,
    one volume at a time, one thread)."""
    t = {"read_s": 0.0, "intensity_resize_s": 0.0, "embed_s": 0.0, "upsert_s": 0.0}
    slices = 0
    t_wall = time.perf_counter()
    b = max(embedder.batch_size, 1)
    with EdgeStore(store_dir) as store, torch.inference_mode():
        coll = open_collection(store, embedder)
        for path in files:
            t0 = time.perf_counter()
            vf = open_volume(path)
            t["read_s"] += time.perf_counter() - t0
            for k in range(vf.n_volumes):
                t0 = time.perf_counter()
                vol = vf.read(k if vf.is_4d else None)
                t1 = time.perf_counter()
                mode = resolve_intensity(vol.data, "auto")
                norm = normalize_intensity(vol.data, mode)
                t["read_s"] += t1 - t0
                t["intensity_resize_s"] += time.perf_counter() - t1
                vectors = np.empty((vol.n_slices, embedder.dim), np.float32)
                for s in range(0, vol.n_slices, b):
                    t0 = time.perf_counter()
                    x = embedder.prepare(norm[s:s + b])
                    t1 = time.perf_counter()
                    vectors[s:s + b] = embedder.forward(x)
                    t["intensity_resize_s"] += t1 - t0
                    t["embed_s"] += time.perf_counter() - t1
                t0 = time.perf_counter()
                write_volume(store, coll, embedder, vol, vectors, mode, 512)
                t["upsert_s"] += time.perf_counter() - t0
                slices += vol.n_slices
    wall = time.perf_counter() - t_wall
    return {**t, "wall_s": wall, "slices": slices, "slices_per_s": slices / wall}


def compare_stores(a: Path, b: Path, model: str) -> dict[str, Any]:
    """Points and vectors of two stores: the same (volume, content, slice) points? largest
    absolute vector difference. (Point ids also hold each write's generation, so two stores
    written apart never share ids; points are matched by what they are instead.)"""
    coll = collection_name(model)

    def key(p: Any) -> str:
        return f"{p['volume_id']}|{p['content_id']}|{p['slice']}|{p['embedder']}"

    with EdgeStore(a) as sa, EdgeStore(b) as sb:
        va = {key(r.payload): r.vector for r in sa.scroll(coll, with_vectors=True)}
        vb = {key(r.payload): r.vector for r in sb.scroll(coll, with_vectors=True)}
    same_ids = set(va) == set(vb)
    diffs: list[float] = []
    for i in va.keys() & vb.keys():
        x, y = va[i], vb[i]
        if x is not None and y is not None:
            diffs.append(float(np.max(np.abs(x - y))))
    return {"same_point_ids": same_ids, "points": len(va),
            "max_abs_diff": max(diffs) if diffs else None,
            "bit_identical_fraction": (sum(d == 0.0 for d in diffs) / len(diffs)) if diffs
            else None}


def bench_collection(name: str, files: list[Path], embedder: Embedder,
                     ceiling_slices_per_s: float | None, sequential: bool = True
                     ) -> dict[str, Any]:
    """Pipelined (and sequential) ingest of ``files`` into temporary stores."""
    with tempfile.TemporaryDirectory(prefix="medir-perf-") as tmp:
        root = Path(tmp)
        log(f"ingest {name}: pipelined, {len(files)} files")
        res: dict[str, Any] = {"files": len(files),
                               "pipelined": run_pipelined(files, embedder, root / "p")}
        if sequential:
            log(f"ingest {name}: sequential reference")
            res["sequential"] = run_sequential(files, embedder, root / "s")
            res["equivalence"] = compare_stores(root / "p", root / "s", embedder.name)
            res["speedup_vs_sequential"] = (res["pipelined"]["slices_per_s"]
                                            / res["sequential"]["slices_per_s"])
    if ceiling_slices_per_s:
        res["fraction_of_forward_only"] = res["pipelined"]["slices_per_s"] / ceiling_slices_per_s
    return res
