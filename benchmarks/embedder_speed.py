"""Embedder throughput: slices per second through ``Embedder.embed`` (resize, normalise, forward,
L2 normalise), on synthetic 256×256 slices, recorded as JSON with the machine and git revision.

    medir bench speed --threads 2 --batch 32 --out results/embedder_speed.json

Each model is loaded, warmed up on one batch, then timed ``--repeats`` times over ``--slices``
slices; the best and median rates are reported (the best is the least disturbed by other load
on the machine, whose 1-minute load average is recorded before each model).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_MODELS = (
    "mobilenetv2-imagenet",
    "efficientnet-lite0-imagenet",
    "dinov2-s-onnx",
    "litemedsam-encoder",
)
# Models of about a slice per second on a CPU: fewer slices, so a run stays in minutes.
SLOW = {"litemedsam-encoder": 8}


def git_revision() -> dict[str, Any]:
    """The commit this run measured and whether the working tree differed from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def machine(device: str) -> dict[str, Any]:
    """What the figures depend on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def synthetic_slices(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1] (a blurred noise field plus a disk), float32."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 1, size // 16, size // 16), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    disk = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16).astype(np.float32)
    return np.clip(0.5 * smooth[:, 0].numpy() + 0.5 * disk, 0.0, 1.0).astype(np.float32)


def _sync(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_model(name: str, *, device: str, batch: int, slices: int, repeats: int) -> dict[str, Any]:
    """Load time and slices/s of one model (best and median of ``repeats`` timed passes)."""
    from ingest.embedders import get_embedder

    n = min(slices, SLOW.get(name, slices)) if device == "cpu" else slices
    x = synthetic_slices(n)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    emb = get_embedder(name, device=device, batch_size=batch)
    t0 = time.perf_counter()
    emb.load()
    load_s = time.perf_counter() - t0
    emb.embed(x[: min(n, batch)])  # warm-up: allocator, oneDNN / onnxruntime kernels
    _sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        emb.embed(x)
        _sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return {
        "model": name,
        "embedder_id": emb.embedder_id,
        "dim": emb.dim,
        "slices": n,
        "batch": batch,
        "half": emb.half,
        "load_s": round(load_s, 3),
        "slices_per_s_best": round(max(rates), 2),
        "slices_per_s_median": round(statistics.median(rates), 2),
        "load_average_1min_before": load_avg,
    }


def run_speed(models: Iterable[str], *, device: str, batch: int, slices: int, repeats: int,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every model through :func:`bench_model`, as one document with the machine and git
    revision; ``on_row`` sees each model's row as it is measured."""
    results = []
    for name in models:
        row = bench_model(name, device=device, batch=batch, slices=slices, repeats=repeats)
        if on_row is not None:
            on_row(row)
        results.append(row)
    return {
        "benchmark": "embedder_speed",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(device),
        "git": git_revision(),
        "results": results,
    }
