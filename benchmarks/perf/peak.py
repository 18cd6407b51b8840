"""This machine's matrix-multiply peak and the default model's share of it.

- ``matmul_peak``: float32 GEMM GFLOP/s of numpy (its BLAS) and torch (oneDNN/MKL) on square
  matrices, best of a few repeats, with the threads each library uses;
- ``vit_s14_flops``: the forward FLOPs of DINOv2 ViT-S/14 per slice, counted analytically
  (1 MAC = 2 FLOPs): patch embedding, per block q/k/v/output projections, attention scores and
  weighted sum, the MLP; LayerNorm, softmax and GELU (a few %) are left out;
- ``compare_forward``: forward-only slices/s of several embedders and onnxruntime session
  options, **interleaved** round by round, so that the load of a shared machine hits all alike;
- ``bench_peak``: all three, as ``medir bench perf peak`` records them.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.perf.common import load_average, log, make_embedder, sample_files
from medir.config import DEFAULT_MODEL

PATCH, DIM, DEPTH, MLP_RATIO = 14, 384, 12, 4


def vit_s14_flops(size: int = 224) -> dict[str, float]:
    """Analytic forward FLOPs of ViT-S/14 (with CLS token) on a ``size``² input."""
    patches = (size // PATCH) ** 2
    n = patches + 1
    embed = patches * DIM * 3 * PATCH * PATCH
    linear = n * DIM * DIM * 4 + n * DIM * DIM * MLP_RATIO * 2  # qkv + proj, fc1 + fc2
    attention = 2 * n * n * DIM  # q·kᵀ and softmax·v over all heads
    macs = embed + DEPTH * (linear + attention)
    return {"tokens": n, "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9,
            "linear_share": DEPTH * linear / macs}


def _best_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak(n: int = 1536, repeats: int = 5) -> dict[str, Any]:
    """float32 GEMM GFLOP/s (n×n @ n×n) through numpy and torch."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out: dict[str, Any] = {"n": n, "torch_threads": torch.get_num_threads(),
                           "cpu_count": os.cpu_count(), "load_average": load_average()}
    out["numpy_gflops"] = flops / _best_s(lambda: a @ b, repeats) / 1e9
    out["torch_gflops"] = flops / _best_s(lambda: torch.mm(ta, tb), repeats) / 1e9
    out["peak_gflops"] = max(out["numpy_gflops"], out["torch_gflops"])
    log(f"matmul n={n}: numpy {out['numpy_gflops']:.1f}, torch {out['torch_gflops']:.1f} GFLOP/s")
    return out


def onnx_session_variants(path: str) -> dict[str, Any]:
    """onnxruntime sessions of one graph with the options compared against the embedders'
    own (``cores`` intra-op threads, ``ORT_ENABLE_ALL``, sequential execution): basic graph
    optimisation only, and a single intra-op thread."""
    import onnxruntime as ort

    cores = os.cpu_count() or 1
    variants: dict[str, Any] = {}
    for label, threads, level in (
        (f"threads{cores}-basic", cores, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("threads1-all", 1, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ):
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.graph_optimization_level = level
        variants[label] = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    return variants


def compare_forward(runners: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray,
                    rounds: int = 3) -> dict[str, Any]:
    """Median slices/s of each runner on the same prepared batch ``x``, interleaved."""
    for run in runners.values():  # warm-up
        run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t0)
        log(f"forward round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {len(x) / v[-1]:.1f}/s" for k, v in times.items()))
    base = next(iter(runners))
    base_s = statistics.median(times[base])
    return {name: {"slices_per_s": len(x) / statistics.median(t),
                   "speedup_vs_" + base: base_s / statistics.median(t)}
            for name, t in times.items()}


def real_batch(samples: Path, emb: Any, n: int) -> Any:
    """``n`` prepared slices from the sample volumes (evenly spaced), else random ones."""
    from ingest.preprocess import normalize_intensity, resolve_intensity
    from ingest.reader import open_volume

    files = sample_files(samples)
    chunks = []
    for path in files[: max(1, min(len(files), 4))]:
        vf = open_volume(path)
        vol = vf.read(0 if vf.is_4d else None)
        norm = normalize_intensity(vol.data, resolve_intensity(vol.data, "auto"))
        idx = np.linspace(0, vol.n_slices - 1, max(1, n // 4)).astype(int)
        chunks.append(emb.prepare(np.ascontiguousarray(norm[idx])))
    if not chunks:
        return emb.prepare(torch.rand(n, 256, 256))
    return torch.cat(chunks)[:n].contiguous()


def bench_peak(samples: Path, *, batch_size: int, rounds: int, onnx_cache: Path) -> dict[str, Any]:
    """Matrix-multiply peak vs the default model's forward pass (float, int8, torch, ORT
    options), interleaved in one run; fraction of peak = slices/s × FLOPs/slice ÷ peak.
    ``onnx_cache`` is where the packaged embedders keep their ONNX graphs."""
    from ingest.embedders import packaged as pk

    flops = vit_s14_flops(224)
    peak_start = matmul_peak()
    embs = {name: make_embedder(name, "cpu", batch_size)
            for name in (DEFAULT_MODEL, "dinov2-s-onnx-int8", "dinov2-s-torch")}
    x = real_batch(samples, embs[DEFAULT_MODEL], batch_size)
    runners: dict[str, Any] = {
        name: (lambda xx, e=e: e.forward(xx)) for name, e in embs.items()}
    float_path = embs[DEFAULT_MODEL]._model_path(onnx_cache)  # type: ignore[attr-defined]
    for label, path in (("float", float_path),
                        ("int8", pk.quantized_onnx_path(float_path, onnx_cache))):
        for variant, sess in onnx_session_variants(str(path)).items():
            runners[f"ort-{label}-{variant}"] = (
                lambda xx, s=sess: s.run([pk.DINOV2_CUT], {pk.DINOV2_INPUT: xx.numpy()}))
    forward = compare_forward(runners, x, rounds=rounds)
    peak_end = matmul_peak()
    peak = max(peak_start["peak_gflops"], peak_end["peak_gflops"])
    for row in forward.values():
        row["gflops_per_s"] = row["slices_per_s"] * flops["gflops"]
        row["fraction_of_fp32_peak"] = row["gflops_per_s"] / peak
    return {"flops_per_slice": flops, "matmul_start": peak_start, "matmul_end": peak_end,
            "peak_gflops": peak, "forward": forward,
            "input": {"slices": int(x.shape[0]), "from": "sample volumes"},
            "note": "int8 rows are compared with the float32 GEMM peak"}
