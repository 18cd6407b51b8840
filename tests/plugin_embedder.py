"""A small, real, deterministic embedder for tests that need many fast embeddings.

It is not a stub: it embeds the slice's downsampled image plus its intensity histogram, so
similar slices get similar vectors. Workers load it with ``MEDIR_PLUGINS=tests.plugin_embedder``.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from ingest.embedders.base import Embedder, ModelInfo
from ingest.embedders.registry import register


@register
class TinyEmbedder(Embedder):
    info = ModelInfo(name="test-tiny", dim=80, input_size=32, mean=(0.0, 0.0, 0.0),
                     std=(1.0, 1.0, 1.0), version="1", license="MIT", source="tests")

    def _load(self) -> None:
        self.delay = float(os.environ.get("MEDIR_TEST_EMBED_DELAY", "0"))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay * batch.shape[0])
        x = batch[:, 0]
        small = F.adaptive_avg_pool2d(x.unsqueeze(1), 8).flatten(1)  # 64
        hist = torch.stack([torch.histc(s, bins=16, min=0.0, max=1.0) for s in x]) / x[0].numel()
        return torch.cat([small, hist], dim=1) + 1e-3
