"""The ceiling: the model's forward-only throughput on the same device and batch size.

Inputs are already resized and normalised on the device, so only the forward pass and the L2
normalisation (the same code :func:`ingest.pipeline.ingest_paths` runs per batch) are timed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.perf.common import log
from ingest.embedders import Embedder


def forward_only(embedder: Embedder, batches: int = 8, warmup: int = 1,
                 seed: int = 0) -> dict[str, Any]:
    """Slices/s of ``batches`` forward passes of ``embedder.batch_size`` prepared slices."""
    b = max(embedder.batch_size, 1)
    rng = np.random.default_rng(seed)
    raw = torch.from_numpy(rng.random((b, 256, 256), dtype=np.float32))
    with torch.inference_mode():
        x = embedder.prepare(raw)
        for _ in range(warmup):
            embedder.forward(x)
        times: list[float] = []
        for i in range(batches):
            t0 = time.perf_counter()
            embedder.forward(x)
            times.append(time.perf_counter() - t0)
            if (i + 1) % max(1, batches // 4) == 0:
                log(f"ceiling {embedder.name}: batch {i + 1}/{batches}")
    total = float(sum(times))
    return {
        "model": embedder.name,
        "device": str(embedder.device),
        "batch_size": b,
        "batches": batches,
        "slices_per_s": b * batches / total,
        "best_batch_slices_per_s": b / min(times),
        "median_batch_slices_per_s": b / float(np.median(times)),
    }
