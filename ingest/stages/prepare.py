"""The prepare stage (reader thread): a read volume → model-ready chunks of slices.

First the whole volume: its concrete intensity mode (``auto`` decided from the voxels), its
intensity domain (HU or not, stored), the windowed slices (:func:`ingest.preprocess.
preprocess_slices`). Then, chunk by chunk of ``batch_size`` slices: on a CPU device the resize
and normalisation (``Embedder.prepare``) run here, so that this work overlaps the forward pass;
on CUDA the chunk is handed over in pinned host memory and resized on the device by the embed
stage. Timed as ``intensity_resize_s``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from ingest.embedders.base import Embedder
from ingest.intensity_domain import intensity_domain
from ingest.preprocess import input_size_of, preprocess_slices, resolve_intensity
from ingest.stages.handover import Chunk
from ingest.stages.stats import PipelineStats
from ingest.volume import Volume


@dataclass
class Windowed:
    """A volume windowed: ``meta`` carries everything but the pixels (its ``data`` is a
    (Z, 0, 0) placeholder), ``slices`` the windowed (Z, H, W) pixels, ``mode`` the concrete
    intensity spec."""

    meta: Volume
    mode: str
    slices: np.ndarray


class Preparer:
    """Windows volumes and cuts them into chunks for ``embedder``."""

    def __init__(self, embedder: Embedder, intensity: str, stats: PipelineStats) -> None:
        self.embedder = embedder
        self.intensity = intensity
        self.stats = stats
        self.step = max(embedder.batch_size, 1)
        self.on_cpu = embedder.device.type == "cpu"
        self.pin = embedder.device.type == "cuda"

    def window(self, vol: Volume) -> Windowed:
        """Mode, domain and windowed slices of ``vol`` (the caller then drops ``vol``: only
        the windowed copy is kept while chunking); raises :class:`MedirError`."""
        t0 = time.perf_counter()
        try:
            mode = resolve_intensity(vol.data, self.intensity)
            vol.domain = intensity_domain(vol.data).domain  # HU or not, stored
            slices = preprocess_slices(vol.data, vol.spacing, mode, input_size_of(self.embedder))
            meta = dataclasses.replace(vol, data=np.empty((vol.n_slices, 0, 0), np.float32))
            return Windowed(meta, mode, slices)
        finally:
            self.stats.intensity_resize_s += time.perf_counter() - t0

    def chunk(self, seq: int, slices: np.ndarray, start: int) -> Chunk:
        """Slices ``start:start + step`` of volume ``seq``, ready for the embed stage."""
        t0 = time.perf_counter()
        block = torch.from_numpy(slices[start:start + self.step])
        if self.on_cpu:
            with torch.inference_mode():
                x = self.embedder.prepare(block)
        else:
            x = block.pin_memory() if self.pin else block.clone()
        self.stats.intensity_resize_s += time.perf_counter() - t0
        chunk = Chunk(seq, start, x, self.on_cpu)
        self.stats.add_buffered(chunk.nbytes)
        return chunk
