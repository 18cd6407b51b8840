"""The paper's embedders, tested without their real weights.

Each test builds the real architecture (real sizes) with random weights, saves it in the
upstream release format to a temporary ``MEDIR_WEIGHTS_DIR``, loads it through the real loader
and checks: dimension, unit norm, determinism, equality with the directly built module; plus
the missing-weights error, the preprocessing values of the paper and the conversions.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ingest.embedders.base import Embedder
from ingest.embedders.paper import PaperEmbedder, RadImageNetResNet50
from ingest.embedders.paper_arch import DreamSimModel, ResNet50, _keras_target
from ingest.embedders.paper_install import prepare_model
from ingest.embedders.registry import get_embedder, model_class
from ingest.embedders.weights import downloads_allowed, pick_batch_size
from ingest.preprocess import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD
from medir.errors import MedirError, ModelUnavailable

PAPER_MODELS = {
    "dinov1-vits16": 384,
    "dinov1-vitb16": 768,
    "dinov2-vits14": 384,
    "dinov2-vitb14": 768,
    "dreamsim": 1792,
    "dreamsim-dino-vitb16": 768,
    "radimagenet-resnet50": 2048,
    "radimagenet-swin": 768,
}

Direct = Callable[[torch.Tensor], torch.Tensor]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real Hub cache, no downloads: every test sees only what it writes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("MEDIR_ALLOW_DOWNLOADS", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def slices() -> np.ndarray:
    """Two non-square slices in [0, 1] (the base resizes them to 224²)."""
    return np.random.default_rng(0).random((2, 96, 80), dtype=np.float32)


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Make every parameter and BatchNorm statistic matter (no zeros, no identities)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim <= 1 or "cls_token" in name or "pos_embed" in name:
                base = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
                p.copy_(base + 0.02 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.1 * torch.rand(b.shape, generator=g))
    return module.eval()


def _module(emb: Embedder) -> Any:
    """The loaded network of a paper embedder."""
    return cast(PaperEmbedder, emb).module


def check_roundtrip(
    emb: Embedder, slices: np.ndarray, direct: Direct, exact: bool = True
) -> np.ndarray:
    """Dimension, dtype, unit norm, determinism and agreement with the direct module."""
    assert emb.weights_present()
    v = emb.embed(slices)
    assert v.shape == (len(slices), emb.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v, emb.embed(slices))
    with torch.inference_mode():
        ref = F.normalize(direct(emb.prepare(slices)).float(), dim=1).numpy()
    if exact:
        np.testing.assert_array_equal(v, ref)
    else:
        np.testing.assert_allclose(v, ref, atol=2e-5)
    return v


# ---- registry and preprocessing (the paper's values, §II-C) -------------------------------
@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_registry_and_preprocessing(name: str) -> None:
    info = model_class(name).info
    assert info.dim == PAPER_MODELS[name]
    assert info.input_size == 224
    assert info.license and info.source
    if name == "radimagenet-resnet50":
        assert (info.mean, info.std) == (HALF_MEAN, HALF_STD) == ((0.5,) * 3, (0.5,) * 3)
    else:
        assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert info.paper == (name != "dreamsim-dino-vitb16")
    emb = get_embedder(name, device="cpu")
    x = emb.prepare(np.full((1, 50, 70), 0.25, dtype=np.float32))
    assert tuple(x.shape) == (1, 3, 224, 224)  # resized, replicated to RGB
    for c in range(3):
        expected = (0.25 - info.mean[c]) / info.std[c]
        torch.testing.assert_close(x[0, c], torch.full((224, 224), expected), atol=1e-5, rtol=0)


# ---- missing weights -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_missing_weights_name_files_and_directory(name: str, tmp_path: Path) -> None:
    emb = get_embedder(name, device="cpu", weights_dir=tmp_path / "w")
    assert not emb.weights_present()
    with pytest.raises(ModelUnavailable) as err:
        emb.embed(np.zeros((1, 8, 8), dtype=np.float32))
    msg = str(err.value)
    assert str(tmp_path / "w" / name) in msg
    assert f"medir models prepare {name} --from PATH" in msg
    cls = model_class(name)
    assert issubclass(cls, PaperEmbedder)
    for f in cls.expected_files:
        assert f.split(" ")[0] in msg or f.split(" ")[1] in msg


def test_weights_dir_defaults_to_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ingest.embedders import configured_embedder
    from medir.config import get_settings

    monkeypatch.setenv("MEDIR_WEIGHTS_DIR", str(tmp_path / "from-env"))
    get_settings.cache_clear()
    emb = configured_embedder("dinov1-vits16", get_settings(), device="cpu")
    with pytest.raises(ModelUnavailable, match=re.escape(str(tmp_path / "from-env"))):
        emb.load()


def test_downloads_are_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from medir.config import Settings

    assert not downloads_allowed(Settings().allow_downloads)
    monkeypatch.setenv("MEDIR_ALLOW_DOWNLOADS", "1")
    assert not downloads_allowed(Settings().allow_downloads)  # HF_HUB_OFFLINE=1 wins
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert downloads_allowed(Settings().allow_downloads)
    # the same through a .env file (the settings read it; the environment wins over it)
    monkeypatch.delenv("MEDIR_ALLOW_DOWNLOADS")
    env = tmp_path / ".env"
    env.write_text("MEDIR_ALLOW_DOWNLOADS=yes\n")
    assert Settings(_env_file=env).allow_downloads  # type: ignore[call-arg]
    env.write_text("MEDIR_ALLOW_DOWNLOADS=0\n")
    assert not Settings(_env_file=env).allow_downloads  # type: ignore[call-arg]
    monkeypatch.setenv("MEDIR_ALLOW_DOWNLOADS", "")
    assert not Settings().allow_downloads  # empty means no, as before


# ---- DINOv1 / DINOv2 (transformers from_pretrained folders) ---------------------------------
@cache
def _vit(dim: int, heads: int) -> Any:
    from transformers import ViTConfig, ViTModel

    # facebook/dino-vit{s,b}16 config.json values
    cfg = ViTConfig(
        hidden_size=dim,
        num_hidden_layers=12,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        patch_size=16,
        image_size=224,
        qkv_bias=True,
        layer_norm_eps=1e-12,
    )
    return _randomize(ViTModel(cfg, add_pooling_layer=False))


@cache
def _dinov2(dim: int, heads: int) -> Any:
    from transformers import Dinov2Config, Dinov2Model

    # facebook/dinov2-{small,base} config.json values
    cfg = Dinov2Config(
        hidden_size=dim,
        num_hidden_layers=12,
        num_attention_heads=heads,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )
    return _randomize(Dinov2Model(cfg))


@pytest.mark.parametrize(
    ("name", "build", "dim", "heads"),
    [
        ("dinov1-vits16", _vit, 384, 6),
        ("dinov1-vitb16", _vit, 768, 12),
        ("dinov2-vits14", _dinov2, 384, 6),
        ("dinov2-vitb14", _dinov2, 768, 12),
    ],
)
def test_dino_roundtrip(
    name: str,
    build: Callable[[int, int], Any],
    dim: int,
    heads: int,
    tmp_path: Path,
    slices: np.ndarray,
) -> None:
    model = build(dim, heads)
    folder = tmp_path / "w" / name
    if name.endswith("s16"):  # the legacy pickle layout (pytorch_model.bin)
        model.config.save_pretrained(str(folder))
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(str(folder))
    emb = get_embedder(name, device="cpu", weights_dir=tmp_path / "w")
    tokens: list[int] = []

    def direct(x: torch.Tensor) -> torch.Tensor:
        hidden = model(pixel_values=x).last_hidden_state
        tokens.append(hidden.shape[1])
        return hidden[:, 0]

    v = check_roundtrip(emb, slices, direct)
    assert v.shape[1] == dim
    # 224² input: 14×14 grid of 16-px patches (DINO), 16×16 grid of 14-px patches (DINOv2)
    assert tokens == [1 + (16 * 16 if name.startswith("dinov2") else 14 * 14)]


def test_dino_from_hugging_face_cache(tmp_path: Path, slices: np.ndarray) -> None:
    """A Hub cache snapshot is used offline (local_files_only) when the weights dir is empty."""
    model = _vit(384, 6)
    repo = Path(tmp_path / "hf-cache" / "models--facebook--dino-vits16")
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model.save_pretrained(str(repo / "snapshots" / commit))
    emb = get_embedder("dinov1-vits16", device="cpu", weights_dir=tmp_path / "empty")
    check_roundtrip(emb, slices, lambda x: model(pixel_values=x).last_hidden_state[:, 0])
    # prepare --from the cache folder copies the snapshot into the weights dir
    report = prepare_model("dinov1-vits16", repo, weights_dir=tmp_path / "w", device="cpu")
    assert (report.directory / "config.json").is_file()


def test_wrong_hf_folder_is_a_clear_error(tmp_path: Path) -> None:
    model = _dinov2(384, 6)
    model.save_pretrained(str(tmp_path / "src"))
    with pytest.raises(MedirError, match="model_type 'dinov2', expected 'vit'"):
        prepare_model("dinov1-vits16", tmp_path / "src", weights_dir=tmp_path / "w", device="cpu")
    (tmp_path / "junk").mkdir()
    with pytest.raises(MedirError, match="not a Hugging Face model folder"):
        prepare_model("dinov2-vits14", tmp_path / "junk", weights_dir=tmp_path / "w")


def test_half_precision_path(tmp_path: Path, slices: np.ndarray) -> None:
    """The CUDA half path (module and inputs in float16), exercised on the CPU."""
    model = _vit(384, 6)
    model.save_pretrained(str(tmp_path / "w" / "dinov1-vits16"))
    full = get_embedder("dinov1-vits16", device="cpu", weights_dir=tmp_path / "w")
    half = get_embedder("dinov1-vits16", device="cpu", weights_dir=tmp_path / "w")
    type(half).half = property(lambda self: True)  # type: ignore[assignment,method-assign]
    try:
        vh = half.embed(slices)
        assert _module(half) is not None
        assert next(_module(half).parameters()).dtype == torch.float16
    finally:
        del type(half).half  # type: ignore[attr-defined]
    vf = full.embed(slices)
    assert vh.dtype == np.float32
    assert (vh * vf).sum(axis=1).min() > 0.999


def test_batch_size_from_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_batch_size(torch.device("cpu"), 10) == 32
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 << 30, 80 << 30))
    n = pick_batch_size(torch.device("cuda"), 24 << 20)
    assert n == 128 and n & (n - 1) == 0  # 5 GiB / 24 MiB = 213 → 128
    assert pick_batch_size(torch.device("cuda"), 1) == 512


# ---- DreamSim ------------------------------------------------------------------------------
def _dreamsim_files(
    root: Path, kinds: tuple[str, ...], lora_dir: str, full_dino: bool
) -> tuple[DreamSimModel, Direct, Direct]:
    """A random DreamSim in DreamSim 0.2's cache_dir layout; the direct module, LoRA unmerged."""
    model = _randomize(DreamSimModel(kinds))  # type: ignore[arg-type]
    assert isinstance(model, DreamSimModel)
    g = torch.Generator().manual_seed(2)
    for kind, branch in zip(kinds, model.branches, strict=True):
        if kind == "dino_vitb16":
            sd = branch.model.state_dict()
            if full_dino:  # DINO's full training checkpoint, as in DreamSim's zip
                head = {
                    "head.mlp.0.weight": torch.zeros(2048, 768),
                    "head.last_layer.weight_g": torch.ones(1),
                }
                ckpt = {
                    "teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head},
                    "student": {f"module.backbone.{k}": v for k, v in sd.items()},
                    "args": argparse.Namespace(arch="vit_base", patch_size=16),
                    "epoch": 400,
                }
                torch.save(ckpt, root / "dino_vitb16_pretrain.pth")
            else:  # torch.hub's backbone-only file
                (root / "checkpoints").mkdir(parents=True, exist_ok=True)
                torch.save(sd, root / "checkpoints" / "dino_vitbase16_pretrain.pth")
        else:
            with torch.no_grad():
                branch.proj.copy_(0.05 * torch.randn(768, 512, generator=g))
            sd = {**branch.model.state_dict(), "proj": branch.proj.clone()}
            torch.save({"state_dict": sd}, root / f"{kind}_pretrain.pth.tar")
    # PEFT LoRA adapter on every qkv (keys as PEFT saves them), plus an unused DINO-head entry.
    r, alpha = 16, 16.0
    adapter: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith("attn.qkv"):
            a = 0.05 * torch.randn(r, mod.in_features, generator=g)
            b = 0.05 * torch.randn(mod.out_features, r, generator=g)
            adapter[f"base_model.model.{name}.lora_A.weight"] = a
            adapter[f"base_model.model.{name}.lora_B.weight"] = b

            def hook(
                m: torch.nn.Module,
                inp: tuple[torch.Tensor],
                out: torch.Tensor,
                a: torch.Tensor = a,
                b: torch.Tensor = b,
            ) -> torch.Tensor:
                return out + (alpha / r) * F.linear(F.linear(inp[0], a), b)

            hooks.append((mod, hook))
    if kinds[0] == "dino_vitb16" and len(kinds) > 1:
        adapter["base_model.model.extractor_list.0.proj.mlp.0.lora_A.weight"] = torch.zeros(r, 768)
        adapter["base_model.model.extractor_list.0.proj.mlp.0.lora_B.weight"] = torch.zeros(2048, r)
    (root / lora_dir).mkdir(parents=True, exist_ok=True)
    torch.save(adapter, root / lora_dir / "adapter_model.bin")
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.3,
        "bias": "none",
        "target_modules": ["qkv"],
    }
    (root / lora_dir / "adapter_config.json").write_text(json.dumps(config))

    def without_lora(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(x)
        return out

    def with_lora(x: torch.Tensor) -> torch.Tensor:
        handles = [m.register_forward_hook(h) for m, h in hooks]
        try:
            out: torch.Tensor = model(x)
        finally:
            for hd in handles:
                hd.remove()
        return out

    return model, with_lora, without_lora


def test_dreamsim_ensemble_roundtrip(tmp_path: Path, slices: np.ndarray) -> None:
    root = tmp_path / "w" / "dreamsim"
    root.mkdir(parents=True)
    kinds = ("dino_vitb16", "clip_vitb16", "open_clip_vitb16")
    model, with_lora, _ = _dreamsim_files(root, kinds, "ensemble_lora", False)
    emb = get_embedder("dreamsim", device="cpu", weights_dir=tmp_path / "w")
    v = check_roundtrip(emb, slices, with_lora, exact=False)
    assert v.shape == (2, 1792) and model.dim == 1792
    # the LoRA update really was merged into every qkv (and nothing else changed)
    assert _module(emb) is not None
    loaded = _module(emb).state_dict()
    for k, w in model.state_dict().items():
        assert torch.equal(loaded[k], w) != k.endswith("attn.qkv.weight"), k
    # DreamSim's normalize_embedding centres each vector before scaling
    np.testing.assert_allclose(v.mean(axis=1), 0.0, atol=1e-6)


def test_dreamsim_single_from_full_dino_checkpoint_and_zip(
    tmp_path: Path, slices: np.ndarray
) -> None:
    src = tmp_path / "release" / "models"
    src.mkdir(parents=True)
    _, with_lora, _ = _dreamsim_files(src, ("dino_vitb16",), "dino_vitb16_single_lora", True)
    import zipfile

    zpath = tmp_path / "dreamsim_dino_vitb16_checkpoint.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(src.parent))
    report = prepare_model("dreamsim-dino-vitb16", zpath, weights_dir=tmp_path / "w", device="cpu")
    assert report.dim == 768
    emb = get_embedder("dreamsim-dino-vitb16", device="cpu", weights_dir=tmp_path / "w")
    check_roundtrip(emb, slices, with_lora, exact=False)
    with pytest.raises(MedirError, match="not a DreamSim checkpoint"):
        prepare_model("dreamsim", src, weights_dir=tmp_path / "w2", device="cpu")


# ---- RadImageNet ResNet50 --------------------------------------------------------------------
_SEQ = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def test_resnet50_pytorch_release_roundtrip(tmp_path: Path, slices: np.ndarray) -> None:
    """RadImageNet's ResNet50.pt: the state dict of their Sequential ``Backbone``."""
    model = _randomize(ResNet50())
    sd = {}
    for k, v in model.state_dict().items():
        head, _, rest = k.partition(".")
        sd[f"backbone.{_SEQ[head]}.{rest}"] = v
    (tmp_path / "w" / "radimagenet-resnet50").mkdir(parents=True)
    torch.save(sd, tmp_path / "w" / "radimagenet-resnet50" / "ResNet50.pt")
    emb = get_embedder("radimagenet-resnet50", device="cpu", weights_dir=tmp_path / "w")
    check_roundtrip(emb, slices, model)
    assert isinstance(emb, RadImageNetResNet50)
    assert _module(emb) is not None and not _module(emb).keras


def _keras_layers() -> list[str]:
    names = ["conv1_conv", "conv1_bn"]
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True):
        for b in range(1, blocks + 1):
            for i in (0, 1, 2, 3) if b == 1 else (1, 2, 3):
                names += [f"conv{stage}_block{b}_{i}_conv", f"conv{stage}_block{b}_{i}_bn"]
    return names


def test_resnet50_keras_release_conversion(tmp_path: Path, slices: np.ndarray) -> None:
    """RadImageNet-ResNet50_notop.h5 (Keras layout) → prepare converts → loads identically."""
    h5py = pytest.importorskip("h5py")
    model = _randomize(ResNet50(keras=True))
    sd = model.state_dict()
    src = tmp_path / "RadImageNet-ResNet50_notop.h5"
    written = 0
    with h5py.File(src, "w") as f:
        f.create_group("model_weights/input_1")
        f.create_group("model_weights/conv1_pad")
        for layer in _keras_layers():
            for var in ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"):
                target = _keras_target(layer, var)
                if target in sd:
                    arr = sd[target].numpy()
                    if var == "kernel":
                        arr = arr.transpose(2, 3, 1, 0)  # OIHW → Keras HWIO
                    f[f"model_weights/{layer}/{layer}/{var}:0"] = arr
                    written += 1
    assert written == sum(1 for k in sd if not k.endswith("num_batches_tracked"))
    report = prepare_model("radimagenet-resnet50", src, weights_dir=tmp_path / "w", device="cpu")
    assert [p.name for p in report.files] == ["RadImageNet-ResNet50_notop.safetensors"]
    emb = get_embedder("radimagenet-resnet50", device="cpu", weights_dir=tmp_path / "w")
    check_roundtrip(emb, slices, model)
    assert _module(emb).keras


def test_resnet50_wrong_file(tmp_path: Path) -> None:
    bad = tmp_path / "ResNet50.pt"
    bad.write_text("not weights")
    with pytest.raises(MedirError, match="cannot read as torch weights"):
        prepare_model("radimagenet-resnet50", bad, weights_dir=tmp_path / "w")
    torch.save({"backbone.0.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(MedirError, match="does not match the architecture"):
        prepare_model("radimagenet-resnet50", bad, weights_dir=tmp_path / "w")
    assert not (tmp_path / "w" / "radimagenet-resnet50").exists()


# ---- RadImageNet Swin ------------------------------------------------------------------------
@cache
def _swin() -> Any:
    from transformers import SwinConfig, SwinModel

    return _randomize(SwinModel(SwinConfig()))  # Swin-T: 96, (2, 2, 6, 2), (3, 6, 12, 24), w7


def _to_microsoft(hf: dict[str, torch.Tensor], timm_new: bool) -> dict[str, torch.Tensor]:
    """transformers SwinModel keys → Microsoft Swin-Transformer (or timm ≥ 0.9) keys."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in hf.items():
        k = k.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        k = k.replace("embeddings.norm", "patch_embed.norm")
        k = re.sub(r"^layernorm\.", "norm.", k).replace("encoder.layers.", "layers.")
        k = k.replace(".layernorm_before.", ".norm1.").replace(".layernorm_after.", ".norm2.")
        k = k.replace(".attention.output.dense.", ".attn.proj.")
        k = k.replace(".intermediate.dense.", ".mlp.fc1.").replace(".output.dense.", ".mlp.fc2.")
        k = k.replace(".attention.self.relative_position", ".attn.relative_position")
        k = k.replace(".attn.relative_position_bias_table", ".attn.relative_position_bias_table")
        m = re.match(r"(.*)\.attention\.self\.(query|key|value)\.(weight|bias)$", k)
        if m:
            qkv.setdefault(f"{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = v
            continue
        if timm_new:
            k = re.sub(
                r"^layers\.(\d+)\.downsample", lambda x: f"layers.{int(x[1]) + 1}.downsample", k
            )
        out[k] = v
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    out["head.weight"] = torch.zeros(1000, 768)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    return out


def test_swin_hf_folder_roundtrip(tmp_path: Path, slices: np.ndarray) -> None:
    model = _swin()
    model.save_pretrained(str(tmp_path / "w" / "radimagenet-swin"))
    emb = get_embedder("radimagenet-swin", device="cpu", weights_dir=tmp_path / "w")
    check_roundtrip(emb, slices, lambda x: model(pixel_values=x).pooler_output)


@pytest.mark.parametrize("timm_new", [False, True])
def test_swin_microsoft_checkpoint_conversion(
    timm_new: bool, tmp_path: Path, slices: np.ndarray
) -> None:
    from safetensors.torch import load_file

    model = _swin()
    model.save_pretrained(str(tmp_path / "hf"))  # the Hub's (legacy) key names
    hub_sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    src = tmp_path / "swin_tiny_radimagenet.pth"
    torch.save({"model": _to_microsoft(hub_sd, timm_new)}, src)
    prepare_model("radimagenet-swin", src, weights_dir=tmp_path / "w", device="cpu")
    emb = get_embedder("radimagenet-swin", device="cpu", weights_dir=tmp_path / "w")
    check_roundtrip(emb, slices, lambda x: model(pixel_values=x).pooler_output)


def test_prepare_refuses_packaged_and_unknown_models(tmp_path: Path) -> None:
    with pytest.raises(MedirError, match="unknown model"):
        prepare_model("dino-vits", tmp_path, weights_dir=tmp_path / "w")
    with pytest.raises(MedirError, match="no such file"):
        prepare_model("dinov1-vits16", tmp_path / "nope", weights_dir=tmp_path / "w")
