"""Embedding for ``medir bench quality``: a collection's volumes (or changed copies of them)
→ slice vectors at a chosen z stride, under a named preprocessing, cached by content.

A preprocessing spec is ``<intensity>[+fov:<mm>]``: an intensity mode of
:mod:`ingest.preprocess` (``auto``, ``auto-windows`` ...) and, optionally, the physical-scale
geometry (every slice resampled to a ``mm`` × ``mm`` field of view before the model input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from benchmarks.cache import ArrayCache, SliceEmbedder
from ingest.preprocess import (
    normalize_intensity,
    physical_scale,
    resolve_intensity,
)
from ingest.volume import Volume
from medir.config import check_intensity
from medir.errors import ConfigError


@dataclass(frozen=True)
class Prep:
    """How slices become model input: an intensity mode and an optional field of view."""

    intensity: str = "auto"
    fov_mm: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Prep:
        text = spec.strip().lower()
        intensity, _, geo = text.partition("+")
        try:
            check_intensity(intensity)
        except ConfigError as exc:
            raise ConfigError(f"bad preprocessing {spec!r}: {exc}") from None
        if not geo:
            return cls(intensity)
        kind, _, value = geo.partition(":")
        try:
            fov = float(value)
        except ValueError:
            fov = -1.0
        if kind != "fov" or not fov > 0:
            raise ConfigError(f"bad preprocessing {spec!r}: geometry is fov:<mm>, e.g. "
                              "auto+fov:400")
        return cls(intensity, fov)

    def __str__(self) -> str:
        return self.intensity + (f"+fov:{self.fov_mm:g}" if self.fov_mm else "")


def stride_slices(n_slices: int, z_spacing: float, stride_mm: float,
                  max_slices: int | None = None) -> NDArray[np.int64]:
    """Every n-th slice, n = ⌊stride_mm / z⌋ (at least 1), thinned to ``max_slices`` at most;
    always the same rule, so a query and its stored copy are sampled alike."""
    if n_slices <= 0:
        return np.zeros(0, np.int64)
    n = max(1, int(math.floor(stride_mm / z_spacing + 1e-9))) if stride_mm > 0 else 1
    if max_slices:
        n = max(n, int(math.ceil(n_slices / max_slices)))
    idx = np.arange(0, n_slices, n, dtype=np.int64)
    # centre the grid: the unused remainder is split between both ends
    shift = (n_slices - 1 - int(idx[-1])) // 2
    return idx + shift


def embed_slices(volume: Volume, slices: NDArray[np.int64], embedder: SliceEmbedder,
                 prep: Prep, cache: ArrayCache) -> NDArray[np.float32]:
    """Vectors (len(slices), dim) of the chosen slices of ``volume``, cached by content.

    The cache key holds the concrete intensity mode (what ``auto`` became for this volume), so
    ``auto`` and ``auto-windows`` share the vectors of every volume that is not CT in HU.
    """
    mode = resolve_intensity(volume.data, prep.intensity)
    concrete = Prep(mode, prep.fov_mm)
    key = ArrayCache.key_of(volume.data, volume.spacing, slices, str(concrete),
                            embedder.embedder_id)

    def compute() -> NDArray[np.float32]:
        norm = normalize_intensity(volume.data, mode, slices=slices)
        if prep.fov_mm:
            size = int(getattr(getattr(embedder, "info", None), "input_size", 224))
            norm = physical_scale(norm, (volume.spacing[0], volume.spacing[1]), prep.fov_mm,
                                  size)
        out = np.empty((norm.shape[0], embedder.dim), np.float32)
        step = max(embedder.batch_size, 1)
        for s in range(0, norm.shape[0], step):
            out[s:s + step] = embedder.embed(norm[s:s + step])
        return out

    return cache.get_or_embed(key, compute)


def cache_for(root: Path, model: str) -> ArrayCache:
    return ArrayCache(root, model)
