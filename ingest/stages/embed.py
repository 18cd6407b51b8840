"""The embed stage (calling thread): one batch of chunks → (rows, dim) unit vectors.

Chunks that the prepare stage handed over unprepared (pinned host memory on CUDA) are resized
and normalised on the device here; the batch is then one forward pass. Timed as ``embed_s``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ingest.embedders.base import Embedder
from ingest.stages.handover import Chunk
from ingest.stages.stats import PipelineStats


def embed_batch(embedder: Embedder, batch: list[Chunk], stats: PipelineStats) -> np.ndarray:
    """The vectors of ``batch``'s rows, in order; raises :class:`MedirError` when the model
    cannot run (the caller fails the batch's volumes)."""
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            parts = [c.x if c.prepared else embedder.prepare(c.x) for c in batch]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            y = embedder.forward(x)
    finally:
        stats.embed_s += time.perf_counter() - t0
    stats.batches += 1
    stats.slices += int(y.shape[0])
    if len({c.seq for c in batch}) > 1:
        stats.mixed_batches += 1
    return y
