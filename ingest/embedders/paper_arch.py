"""Plain-torch architectures of the paper's models that transformers does not provide.

Nothing here imports torchvision or timm (torchvision from PyPI does not import beside the CPU
torch build medir uses), so every network is written out with the parameter names of its
upstream release, which is what lets the upstream checkpoints load without renaming:

- :class:`DinoViT`: the DINO ``vision_transformer.py`` ViT (facebookresearch/dino, copied into
  DreamSim as ``dreamsim/feature_extraction/vision_transformer.py``). DreamSim also uses it for
  its CLIP and OpenCLIP branches, with ``pos_drop`` replaced by a LayerNorm (CLIP's ``ln_pre``),
  QuickGELU for OpenAI CLIP and LayerNorm eps 1e-5.
- :class:`DreamSimModel`: DreamSim's ``PerceptualModel.embed`` (dreamsim 0.2.1), LoRA merged.
- :class:`ResNet50`: torchvision's ResNet-50 parameter names; ``keras=True`` gives the Keras
  ``applications.ResNet50`` variant (RadImageNet's Keras release): biases on every convolution,
  the stride-2 on the first 1×1 convolution of a stage instead of the 3×3, BatchNorm eps 1.001e-5.

Converters from the upstream file formats (Keras HDF5, PEFT LoRA adapters, RadImageNet's
PyTorch ``Backbone`` state dict, the DINO full training checkpoint) live here too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medir.errors import MedirError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DreamSim's constants.py: OpenAI CLIP normalisation, used by both CLIP branches.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# DINO-style ViT (used by DreamSim for all three branches)
# ---------------------------------------------------------------------------------------------
class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: Literal["gelu", "quick_gelu"]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act: nn.Module = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # softmax(q kᵀ / √d) v, as upstream; SDPA picks the fused kernel on GPU.
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, eps: float, act: Literal["gelu", "quick_gelu"]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, dim * 4, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """DINO's ViT (``vit_base``: 768-d, 12 blocks, 12 heads, MLP ×4, qkv bias).

    ``pre_norm=True`` turns ``pos_drop`` into a LayerNorm, which is how DreamSim loads CLIP
    (``ln_pre``); ``act="quick_gelu"`` and ``eps=1e-5`` complete the OpenAI CLIP variant.
    """

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        img_size: int = 224,
        eps: float = 1e-6,
        act: Literal["gelu", "quick_gelu"] = "gelu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
        self.pos_drop: nn.Module = nn.LayerNorm(embed_dim, eps=eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, eps, act) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def _pos_embed(self, npatch: int, h: int, w: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        if npatch == n and h == w:
            return self.pos_embed
        # DINO's bicubic interpolation of the patch position embeddings (other input sizes).
        p = self.patch_embed.patch_size
        side = int(math.sqrt(n))
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h // p, w // p), mode="bicubic")
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, self.embed_dim)
        return torch.cat((self.pos_embed[:, :1], grid), dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block (before the final norm): (B, 1 + patches, D)."""
        b, _, h, w = x.shape
        t = self.patch_embed(x)
        t = torch.cat((self.cls_token.expand(b, -1, -1), t), dim=1)
        t = self.pos_drop(t + self._pos_embed(t.shape[1] - 1, h, w))
        for blk in self.blocks:
            t = blk(t)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """DINO's ``forward``: the CLS token after the final norm, (B, D)."""
        return self.norm(self.tokens(x))[:, 0]


# ---------------------------------------------------------------------------------------------
# DreamSim
# ---------------------------------------------------------------------------------------------
DreamSimBranchKind = Literal["dino_vitb16", "clip_vitb16", "open_clip_vitb16"]


class DreamSimBranch(nn.Module):
    """One of DreamSim's ``ViTExtractor`` s with its feature rule and input normalisation.

    - ``dino_vitb16``, feature ``cls``: DreamSim's ``_extract_cls`` hooks block 11 (the last)
      and takes its CLS token **before** the final LayerNorm; 768-d.
    - ``clip_vitb16`` / ``open_clip_vitb16``, feature ``embedding``: ``model(x) @ proj``: the
      CLS token after ``ln_post`` projected to CLIP's 512-d space.

    The input arrives normalised with the ImageNet mean/std (medir's preprocessing for every
    ViT); each branch re-normalises to its own statistics, as DreamSim's ``_preprocess`` does
    from [0, 1] images.
    """

    model: DinoViT
    proj: torch.Tensor
    in_mean: torch.Tensor
    in_std: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, kind: DreamSimBranchKind) -> None:
        super().__init__()
        self.kind = kind
        if kind == "dino_vitb16":
            self.model = DinoViT(patch_size=16)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            act: Literal["gelu", "quick_gelu"] = "quick_gelu" if kind == "clip_vitb16" else "gelu"
            self.model = DinoViT(patch_size=16, eps=1e-5, act=act, pre_norm=True)
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
            self.register_buffer("proj", torch.zeros(768, 512))
        self.renorm = (mean, std) != (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("in_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("in_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @property
    def dim(self) -> int:
        return 768 if self.kind == "dino_vitb16" else 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm:
            x = (x * self.in_std + self.in_mean - self.mean) / self.std
        if self.kind == "dino_vitb16":
            return self.model.tokens(x)[:, 0]
        return self.model(x) @ self.proj


class DreamSimModel(nn.Module):
    """DreamSim's ``PerceptualModel`` (LoRA variants, so ``mlp`` is the identity).

    The embedding is DreamSim's ``embed``: the branches' features concatenated, then
    ``normalize_embedding``: each vector minus its own mean, divided by its norm. The
    ensemble is DINO ViT-B/16 (cls) + OpenAI CLIP ViT-B/16 + OpenCLIP ViT-B/16 (embedding)
    = 768 + 512 + 512 = 1792-d. Parameter names follow upstream (``extractor_list.{i}.model``)
    so PEFT adapter keys map one to one.
    """

    def __init__(self, kinds: tuple[DreamSimBranchKind, ...]) -> None:
        super().__init__()
        self.extractor_list = nn.ModuleList(DreamSimBranch(k) for k in kinds)

    @property
    def branches(self) -> list[DreamSimBranch]:
        """The branches, typed (``extractor_list`` as a list)."""
        return [b for b in self.extractor_list if isinstance(b, DreamSimBranch)]

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([branch(x) for branch in self.extractor_list], dim=-1)
        feats = feats - feats.mean(dim=1, keepdim=True)
        return feats / feats.norm(dim=1, keepdim=True)


def dino_backbone_from_full_checkpoint(ckpt: Mapping[str, Any]) -> StateDict:
    """The teacher backbone of a DINO full training checkpoint (``{'teacher': ...}``).

    DINO's released backbone-only weights (``dino_vitbase16_pretrain.pth``, what
    ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')`` loads) are the teacher's;
    DreamSim's zip ships the full checkpoint as ``dino_vitb16_pretrain.pth``.
    """
    if "teacher" not in ckpt:
        raise MedirError("not a DINO full checkpoint: no 'teacher' entry")
    out: StateDict = {}
    for key, value in ckpt["teacher"].items():
        k = key.removeprefix("module.")
        if k.startswith("backbone."):
            out[k.removeprefix("backbone.")] = value
    if not out:
        raise MedirError("DINO full checkpoint has no 'backbone.*' weights in 'teacher'")
    return out


def merge_lora(
    model: nn.Module, adapter: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> int:
    """Merge a PEFT LoRA adapter into ``model`` in place: ``W ← W + (alpha / r) · B A``.

    ``adapter`` is PEFT's saved state dict (keys ``base_model.model.<module>.lora_A.weight``,
    optionally with an adapter name before ``.weight``); ``config`` is ``adapter_config.json``
    (DreamSim reads ``r``, ``lora_alpha``, ``lora_dropout``, ``bias``, ``target_modules``;
    dropout is inactive at inference). Bias entries (``bias != "none"``) overwrite the module's
    bias. Returns the number of merged modules. Keys for DreamSim's unused DINO projection head
    (``extractor_list.N.proj.*``) are ignored; any other unknown key is an error.
    """
    r = int(config["r"])
    scaling = float(config["lora_alpha"]) / r
    modules = dict(model.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    biases: dict[str, torch.Tensor] = {}
    for key, value in adapter.items():
        k = key.removeprefix("base_model.model.")
        m = re.match(r"^(.*)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", k)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
        elif k.endswith(".bias"):
            biases[k.removesuffix(".bias")] = value
        else:
            raise MedirError(f"unexpected key in LoRA adapter: {key!r}")
    merged = 0
    with torch.no_grad():
        for name, ab in pairs.items():
            mod = modules.get(name)
            if mod is None and re.match(r"^extractor_list\.\d+\.proj\.", name):
                continue
            if not isinstance(mod, nn.Linear) or set(ab) != {"lora_A", "lora_B"}:
                raise MedirError(f"LoRA adapter entry {name!r} does not match the model")
            delta = (ab["lora_B"].float() @ ab["lora_A"].float()) * scaling
            if delta.shape != mod.weight.shape:
                raise MedirError(f"LoRA shape {tuple(delta.shape)} ≠ {name} weight shape")
            mod.weight += delta.to(mod.weight.dtype)
            merged += 1
        for name, b in biases.items():
            mod = modules.get(name)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.copy_(b)
    return merged


# ---------------------------------------------------------------------------------------------
# ResNet-50 (torchvision names; Keras variant for RadImageNet's Keras release)
# ---------------------------------------------------------------------------------------------
class _Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, keras: bool) -> None:
        super().__init__()
        eps = 1.001e-5 if keras else 1e-5
        out = planes * 4
        s1, s2 = (stride, 1) if keras else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=keras)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s2, padding=1, bias=keras)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=keras)
        self.bn3 = nn.BatchNorm2d(out, eps=eps)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=keras),
                nn.BatchNorm2d(out, eps=eps),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(y + idt)


class ResNet50(nn.Module):
    """ResNet-50 trunk; ``forward`` returns the global-average-pooled 2048-d features.

    With ``keras=False`` this is torchvision's ``resnet50`` (v1.5) without ``fc``, the network
    of RadImageNet's PyTorch example (``nn.Sequential(*list(resnet50().children())[:9])``).
    With ``keras=True`` it is ``keras.applications.ResNet50`` (v1): the padding of the stem
    (ZeroPadding 3 + valid 7×7/2; ZeroPadding 1 + valid 3×3/2 max-pool after a ReLU) equals
    torchvision's, so only biases, stride placement and BatchNorm eps differ.
    """

    def __init__(self, keras: bool = False) -> None:
        super().__init__()
        self.keras = keras
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=keras)
        self.bn1 = nn.BatchNorm2d(64, eps=1.001e-5 if keras else 1e-5)
        inplanes = 64
        stages = []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [_Bottleneck(inplanes, planes, stride, keras)]
            inplanes = planes * 4
            layers += [_Bottleneck(inplanes, planes, 1, keras) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


# RadImageNet's PyTorch ``Backbone``: Sequential over resnet50.children()[:9].
_SEQ_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def normalize_resnet_keys(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Map RadImageNet/torchvision ResNet-50 state dicts to :class:`ResNet50` names.

    Accepts torchvision names (``conv1.weight``, ``layer1.0.conv1.weight``), RadImageNet's
    ``Backbone`` names (``backbone.0.weight``, ``backbone.4.0.conv1.weight``), ``module.``
    (DataParallel) prefixes; drops classifier heads (``fc.*``, ``classifier.*``, ``linear.*``)
    and ``num_batches_tracked``.
    """
    out: StateDict = {}
    for key, value in sd.items():
        k = key.removeprefix("module.")
        k = k.removeprefix("backbone.")
        head, _, rest = k.partition(".")
        if head in _SEQ_INDEX:
            k = f"{_SEQ_INDEX[head]}.{rest}"
        if k.split(".")[0] in {"fc", "classifier", "linear", "drop_out"}:
            continue
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = value
    return out


_KERAS_LAYER = re.compile(r"^conv(\d)_(?:block(\d+)_(\d)_)?(conv|bn)$")
_KERAS_VARS = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def _keras_target(layer: str, var: str) -> str | None:
    m = _KERAS_LAYER.match(layer)
    if not m or var not in _KERAS_VARS:
        return None
    stage, block, idx, kind = m.groups()
    if (kind == "conv") != (var in ("kernel", "bias")):
        return None
    suffix = _KERAS_VARS[var]
    if block is None:  # conv1_conv / conv1_bn: the stem
        return f"{'conv1' if kind == 'conv' else 'bn1'}.{suffix}"
    prefix = f"layer{int(stage) - 1}.{int(block) - 1}"
    if idx == "0":  # the projection shortcut
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}.{suffix}"
    return f"{prefix}.{kind}{idx}.{suffix}"


def keras_resnet50_to_state_dict(path: Path) -> StateDict:
    """Read a Keras ``ResNet50`` HDF5 file (e.g. ``RadImageNet-ResNet50_notop.h5``).

    Works for ``save_weights`` files and full ``model.save`` files (weights under
    ``model_weights/``). Layer names are keras.applications' (``conv1_conv``,
    ``conv2_block1_0_conv`` …, ``conv5_block3_3_bn``); kernels are HWIO and become OIHW.
    Needs ``h5py``.
    """
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MedirError("converting Keras .h5 weights needs h5py: pip install h5py") from exc
    import numpy as np

    out: StateDict = {}

    def visit(name: str, obj: object) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        parts = name.split("/")
        var = parts[-1].split(":")[0]
        for layer in reversed(parts[:-1]):
            target = _keras_target(layer, var)
            if target is not None:
                arr = np.asarray(obj[()], dtype=np.float32)
                if var == "kernel":
                    arr = arr.transpose(3, 2, 0, 1)
                out[target] = torch.from_numpy(np.ascontiguousarray(arr))
                return

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as exc:
        raise MedirError(f"{path}: not an HDF5 (Keras) file: {exc}") from exc
    if not out:
        raise MedirError(f"{path}: no Keras ResNet50 layers (conv1_conv, conv2_block1_1_conv …)")
    return out


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """A strict ``load_state_dict`` (BatchNorm counters aside) whose error names the file."""
    skip = "num_batches_tracked"  # a BatchNorm counter, absent from Keras ports and some dumps
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(skip)}
    sd = {k: v for k, v in sd.items() if not k.endswith(skip)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise MedirError(
            f"{what}: does not match the architecture "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, "
            f"unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise MedirError(
            f"{what}: shape mismatch for {k}: file {tuple(sd[k].shape)}, "
            f"model {tuple(own[k].shape)}"
        )
    model.load_state_dict(sd, strict=False)
