"""This machine's matrix-multiply peak and the default model's share of it.

- ``matmul_peak``: float32 GEMM GFLOP/s of numpy (its BLAS) and torch (oneDNN/MKL) on square
  matrices, best of a few repeats, with the threads each library uses;
- ``vit_s14_flops``: the forward FLOPs of DINOv2 ViT-S/14 per slice, counted analytically
  (1 MAC = 2 FLOPs): patch embedding, per block q/k/v/output projections, attention scores and
  weighted sum, the MLP; LayerNorm, softmax and GELU (a few %) are left out;
- ``compare_forward``: forward-only slices/s of several embedders and onnxruntime session
  options, **interleaved** round by round, so that the load of a shared machine hits all alike.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.perf.common import load_average, log

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
