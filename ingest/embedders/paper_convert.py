"""Upstream checkpoint formats turned into what the paper's embedders load.

Kept apart from the models (:mod:`ingest.embedders.paper`) because these functions read
foreign layouts (Hugging Face folders and Hub caches, Microsoft/timm Swin checkpoints,
RadImageNet's PyTorch and Keras releases) and change with those releases, not with the
models. The models call them at load (``resnet50_from_file``) and in their
``prepare_weights`` hooks; nothing here writes outside the ``dest`` it is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ingest.embedders.paper_arch import (
    ResNet50,
    StateDict,
    keras_resnet50_to_state_dict,
    load_checked,
    normalize_resnet_keys,
)
from ingest.embedders.weights import HF_CONFIG, HF_WEIGHT_FILES, is_hf_folder, load_tensor_file
from medir.errors import MedirError


def find_hf_folder(src: Path) -> Path:
    """A save_pretrained folder, or a Hub cache repo folder (``models--org--name``)."""
    if is_hf_folder(src):
        return src
    snaps = sorted((src / "snapshots").glob("*")) if (src / "snapshots").is_dir() else []
    for snap in snaps:
        if is_hf_folder(snap):
            return snap
    raise MedirError(
        f"{src}: not a Hugging Face model folder (expected {HF_CONFIG} and one of "
        f"{', '.join(HF_WEIGHT_FILES)}, or a models--org--name cache folder)"
    )


def copy_hf_folder(src: Path, dest: Path) -> list[Path]:
    """Copy the config and weight files of the HF folder found at ``src`` into ``dest``.

    Copies (not links) so ``dest`` outlives the Hub cache the files may come from.
    """
    folder = find_hf_folder(src)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(folder.iterdir()):
        if f.name in (HF_CONFIG, "preprocessor_config.json", *HF_WEIGHT_FILES) or (
            f.suffix in {".safetensors", ".bin"} and "-of-" in f.name
        ):
            shutil.copyfile(f, dest / f.name)  # follows the HF cache's symlinks
            written.append(dest / f.name)
    return written


def swin_state_dict_to_hf(sd: dict[str, torch.Tensor]) -> tuple[Any, StateDict]:
    """Convert a Microsoft Swin-Transformer (or timm) state dict to transformers' Swin files.

    The keys produced are those of the Hub's Swin checkpoints (``attention.self.query`` …,
    what ``save_pretrained`` writes); ``relative_position_index`` buffers are recomputed.

    The architecture (embed dim, depths, heads, window, patch size) is read from the tensors.
    Microsoft's layout puts ``layers.i.downsample`` at the end of stage i; timm ≥ 0.9 at the
    start of stage i + 1 (recognised by ``layers.0`` having no downsample but ``layers.1``
    having one), which is moved back. qkv is split into query/key/value.
    """
    import re

    from transformers import SwinConfig

    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
    if "patch_embed.proj.weight" not in sd:
        raise MedirError("not a Swin checkpoint: no patch_embed.proj.weight")
    timm_new = not any(k.startswith("layers.0.downsample") for k in sd) and any(
        k.startswith("layers.1.downsample") for k in sd
    )
    depths: dict[int, int] = {}
    heads: dict[int, int] = {}
    window = 7
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depths[i] = max(depths.get(i, 0), j + 1)
            heads[i] = int(v.shape[1])
            window = (int(round(v.shape[0] ** 0.5)) + 1) // 2
    pw = sd["patch_embed.proj.weight"]
    n = len(depths)
    config = SwinConfig(
        image_size=224,
        patch_size=int(pw.shape[-1]),
        embed_dim=int(pw.shape[0]),
        depths=[depths[i] for i in range(n)],
        num_heads=[heads[i] for i in range(n)],
        window_size=window,
    )
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("head") or "attn_mask" in k or "relative_position_index" in k:
            continue
        if timm_new:
            k = re.sub(
                r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k
            )
        k = k.replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
        k = k.replace("patch_embed.norm", "embeddings.norm")
        if k.startswith("norm."):
            k = "layernorm." + k.removeprefix("norm.")
        k = re.sub(r"^layers\.", "encoder.layers.", k)
        k = k.replace(".norm1.", ".layernorm_before.").replace(".norm2.", ".layernorm_after.")
        k = k.replace(".mlp.fc1.", ".intermediate.dense.").replace(".mlp.fc2.", ".output.dense.")
        k = k.replace(".attn.proj.", ".attention.output.dense.")
        k = k.replace(
            ".attn.relative_position_bias_table", ".attention.self.relative_position_bias_table"
        )
        if ".attn.qkv." in k:
            q, kk, vv = v.chunk(3, dim=0)
            for part, t in zip(("query", "key", "value"), (q, kk, vv), strict=True):
                out[k.replace(".attn.qkv.", f".attention.self.{part}.")] = t.clone()
            continue
        out[k] = v
    return config, out


def resnet50_from_file(path: Path) -> ResNet50:
    """A :class:`ResNet50` with the weights of a RadImageNet file (.pt/.pth/.safetensors/.h5)."""
    if not path.is_file():
        raise MedirError(f"{path}: no such file")
    if path.suffix.lower() in {".h5", ".hdf5"}:
        sd = keras_resnet50_to_state_dict(path)
    else:
        obj = load_tensor_file(path)
        inner = obj.get("state_dict", obj.get("model", obj))
        sd = normalize_resnet_keys(inner)
    keras = "conv1.bias" in sd
    model = ResNet50(keras=keras)
    load_checked(model, sd, str(path))
    return model


__all__ = [
    "copy_hf_folder",
    "find_hf_folder",
    "resnet50_from_file",
    "swin_state_dict_to_hf",
]
