"""The paper's embedders: DINOv1, DINOv2, DreamSim, RadImageNet ResNet50 and Swin.

Preprocessing is the paper's (§II-C): 224×224, the slice replicated to RGB, ImageNet mean/std
for every ViT-based model, 0.5/0.5 for the ResNet50 (after RadImageNet). Embeddings are what the
authors use as the image embedding:

==========================  ====  =============================================================
name                        dim   embedding
==========================  ====  =============================================================
dinov1-vits16 / -vitb16     384 / 768  CLS token after the final LayerNorm (transformers ViTModel)
dinov2-vits14 / -vitb14     384 / 768  CLS token after the final LayerNorm (Dinov2Model); at 224
                                       the 14-px patches make a 16×16 grid (position embeddings
                                       interpolated from 37×37, as upstream)
dreamsim                    1792  DreamSim ensemble ``embed`` (see :class:`DreamSimModel`)
dreamsim-dino-vitb16        768   DreamSim's single-branch DINO ViT-B/16 variant
radimagenet-resnet50        2048  global-average-pooled last stage
radimagenet-swin            768   Swin-T, average-pooled final LayerNorm tokens (SwinModel pooler)
==========================  ====  =============================================================

Weights are never downloaded implicitly: see :mod:`ingest.embedders.weights` for the lookup
order and each class's ``expected_files`` for the on-disk format in ``MEDIR_WEIGHTS_DIR/<name>/``.
Each class's ``prepare_weights`` copies or converts upstream files into place (the format
converters are in :mod:`ingest.embedders.paper_convert`);
:func:`ingest.embedders.paper_install.prepare_model` (``medir models prepare``) runs it and checks
the result with one forward pass.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ingest.embedders.base import Embedder, ModelInfo
from ingest.embedders.paper_arch import (
    DreamSimBranchKind,
    DreamSimModel,
    dino_backbone_from_full_checkpoint,
    load_checked,
    merge_lora,
)
from ingest.embedders.paper_convert import copy_hf_folder, resnet50_from_file, swin_state_dict_to_hf
from ingest.embedders.registry import register
from ingest.embedders.weights import (
    HF_CONFIG,
    downloads_allowed,
    hf_cached_folder,
    is_hf_folder,
    load_tensor_file,
    model_dir,
    pick_batch_size,
    unavailable,
)
from ingest.preprocess import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD
from medir.errors import MedirError

MiB = 1 << 20


class PaperEmbedder(Embedder):
    """Shared behaviour: weight lookup, eval mode, device, half precision, batch size.

    Subclasses give ``expected_files`` (shown in errors and ``medir models``), :meth:`locate`
    (where the weights are, without loading), :meth:`_build` (the network with weights, on
    the CPU in float32; the same hook name as the packaged torch models), :meth:`_forward`
    and :meth:`prepare_weights`.
    """

    expected_files: ClassVar[tuple[str, ...]] = ()
    hint: ClassVar[str] = ""
    # Estimated peak activation bytes per image in half precision (batch size on CUDA).
    bytes_per_item: ClassVar[int] = 32 * MiB

    def __init__(
        self,
        device: str = "auto",
        batch_size: int | None = None,
        half: bool | None = None,
        weights_dir: Path | None = None,
        cache_dir: Path | None = None,
        allow_downloads: bool = False,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, half=half, weights_dir=weights_dir,
                         cache_dir=cache_dir, allow_downloads=allow_downloads)
        self._batch_requested = batch_size is not None
        self.module: nn.Module | None = None

    @property
    def local_dir(self) -> Path:
        """``MEDIR_WEIGHTS_DIR/<name>/`` (or ``weights_dir/<name>/`` when given)."""
        return model_dir(self.name, self.weights_dir)

    def weights_present(self) -> bool:
        return self.locate(download=False) is not None

    def _load(self) -> None:
        path = self.locate(download=downloads_allowed(self.allow_downloads))
        if path is None:
            raise unavailable(self.name, self.local_dir, self.expected_files, self.missing_hint())
        self._install(self._build(path))

    def missing_hint(self) -> str:
        """Extra advice for the missing-weights error."""
        return self.hint

    def _install(self, module: nn.Module) -> None:
        module = module.float().eval().requires_grad_(False).to(self.device)
        if self.half:
            module = module.half()
        if not self._batch_requested:
            self.batch_size = pick_batch_size(self.device, self.bytes_per_item)
        self.module = module

    @abstractmethod
    def locate(self, download: bool = False) -> Path | None:
        """The directory holding usable weights, or None. ``download`` may fetch from the Hub."""

    @abstractmethod
    def _build(self, path: Path) -> nn.Module:
        """The network with the weights found in ``path`` (CPU, float32)."""

    @classmethod
    @abstractmethod
    def prepare_weights(cls, src: Path, dest: Path) -> list[Path]:
        """Copy or convert upstream files from ``src`` into ``dest``; returns files written."""


# ---------------------------------------------------------------------------------------------
# transformers backbones: DINOv1 (ViTModel), DINOv2 (Dinov2Model), Swin (SwinModel)
# ---------------------------------------------------------------------------------------------
class HFBackbone(PaperEmbedder):
    """A transformers ``from_pretrained`` folder (``config.json`` + weights)."""

    hf_repo: ClassVar[str | None] = None
    model_type: ClassVar[str] = ""
    expected_files = (HF_CONFIG, "model.safetensors (or pytorch_model.bin)")

    def locate(self, download: bool = False) -> Path | None:
        if is_hf_folder(self.local_dir):
            return self.local_dir
        if self.hf_repo is not None:
            return hf_cached_folder(self.hf_repo, download=download)
        return None

    def missing_hint(self) -> str:
        if self.hf_repo is None:
            return self.hint
        return (
            f"a transformers save_pretrained folder of {self.hf_repo} (on a connected machine: "
            f"`hf download {self.hf_repo}`, then prepare --from its cache folder); "
            f"the Hugging Face cache is also searched, and MEDIR_ALLOW_DOWNLOADS=1 lets medir "
            f"download it when online"
        )

    def _check_config(self, path: Path) -> dict[str, Any]:
        try:
            cfg: dict[str, Any] = json.loads((path / HF_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise MedirError(f"{path / HF_CONFIG}: unreadable config ({exc})") from exc
        if cfg.get("model_type") != self.model_type:
            raise MedirError(
                f"{path / HF_CONFIG}: model_type {cfg.get('model_type')!r}, "
                f"expected {self.model_type!r} for {self.name}"
            )
        width = self._width(cfg)
        if width != self.dim:
            raise MedirError(
                f"{path / HF_CONFIG}: a {width}-d model, {self.name} is {self.dim}-d "
                f"(wrong variant?)"
            )
        return cfg

    def _width(self, cfg: dict[str, Any]) -> int:
        return int(cfg.get("hidden_size", -1))

    def _build(self, path: Path) -> nn.Module:
        self._check_config(path)
        try:
            model, info = self._from_pretrained(path)
        except MedirError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
            raise MedirError(
                f"{path}: cannot load {self.name} ({type(exc).__name__}: {exc})"
            ) from exc
        # from_pretrained fills missing weights with random ones: refuse that.
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise MedirError(
                f"{path}: weights file lacks {len(missing)} tensors of {self.name} "
                f"(e.g. {missing[:3]}); wrong model?"
            )
        return model

    @abstractmethod
    def _from_pretrained(self, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        """``from_pretrained(path, output_loading_info=True)`` of the transformers class."""

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        out = self.module(pixel_values=batch)
        return out.last_hidden_state[:, 0]

    @classmethod
    def prepare_weights(cls, src: Path, dest: Path) -> list[Path]:
        return copy_hf_folder(src, dest)


class _DinoV1(HFBackbone):
    model_type = "vit"

    def _from_pretrained(self, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        from transformers import ViTModel

        # The DINO checkpoints have no pooler; the CLS token is read after the final LayerNorm.
        return cast(Any, ViTModel.from_pretrained)(  # with output_loading_info
            str(path), add_pooling_layer=False, local_files_only=True, output_loading_info=True
        )


class _DinoV2(HFBackbone):
    model_type = "dinov2"

    def _from_pretrained(self, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        from transformers import Dinov2Model

        return cast(Any, Dinov2Model.from_pretrained)(  # with output_loading_info
            str(path), local_files_only=True, output_loading_info=True
        )


@register
class DinoV1ViTS16(_DinoV1):
    """DINO ViT-S/16 (Caron et al. 2021), ImageNet-1k self-supervised."""

    hf_repo = "facebook/dino-vits16"
    bytes_per_item = 12 * MiB
    info = ModelInfo(
        name="dinov1-vits16",
        dim=384,
        license="Apache-2.0",
        source="https://huggingface.co/facebook/dino-vits16",
        description="DINO ViT-S/16, CLS token (paper: DINOv1)",
        paper=True,
    )


@register
class DinoV1ViTB16(_DinoV1):
    """DINO ViT-B/16 (Caron et al. 2021), ImageNet-1k self-supervised."""

    hf_repo = "facebook/dino-vitb16"
    bytes_per_item = 24 * MiB
    info = ModelInfo(
        name="dinov1-vitb16",
        dim=768,
        license="Apache-2.0",
        source="https://huggingface.co/facebook/dino-vitb16",
        description="DINO ViT-B/16, CLS token (paper: DINOv1)",
        paper=True,
    )


@register
class DinoV2ViTS14(_DinoV2):
    """DINOv2 ViT-S/14 (Oquab et al. 2023), LVD-142M self-supervised (distilled)."""

    hf_repo = "facebook/dinov2-small"
    bytes_per_item = 12 * MiB
    info = ModelInfo(
        name="dinov2-vits14",
        dim=384,
        license="Apache-2.0",
        source="https://huggingface.co/facebook/dinov2-small",
        description="DINOv2 ViT-S/14, CLS token (paper: DINOv2)",
        paper=True,
    )


@register
class DinoV2ViTB14(_DinoV2):
    """DINOv2 ViT-B/14 (Oquab et al. 2023), LVD-142M self-supervised (distilled)."""

    hf_repo = "facebook/dinov2-base"
    bytes_per_item = 24 * MiB
    info = ModelInfo(
        name="dinov2-vitb14",
        dim=768,
        license="Apache-2.0",
        source="https://huggingface.co/facebook/dinov2-base",
        description="DINOv2 ViT-B/14, CLS token (paper: DINOv2)",
        paper=True,
    )


@register
class RadImageNetSwin(HFBackbone):
    """RadImageNet Swin Transformer (Swin-T, patch 4, window 7, 224), supervised on RadImageNet.

    The weights were given to the paper's authors by the RadImageNet team; they are not public.
    Accepted: a transformers ``SwinModel`` folder, or (via ``prepare``) an original Microsoft
    Swin-Transformer / timm checkpoint, converted by :func:`swin_state_dict_to_hf`.
    """

    model_type = "swin"
    bytes_per_item = 40 * MiB
    expected_files = (HF_CONFIG, "model.safetensors (a transformers SwinModel folder)")
    hint = (
        "the RadImageNet Swin weights are not public (ask the RadImageNet team); "
        "`prepare` also converts a Microsoft Swin-Transformer or timm checkpoint (.pth)"
    )
    info = ModelInfo(
        name="radimagenet-swin",
        dim=768,
        license="RadImageNet terms (non-commercial research use)",
        source="RadImageNet team, on request (https://www.radimagenet.com)",
        description="Swin-T supervised on RadImageNet, pooled features (paper: Swin Transformer)",
        paper=True,
    )

    def _width(self, cfg: dict[str, Any]) -> int:
        return int(cfg.get("embed_dim", 0)) * 2 ** (len(cfg.get("depths", [])) - 1)

    def _from_pretrained(self, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        from transformers import SwinModel

        return cast(Any, SwinModel.from_pretrained)(  # with output_loading_info
            str(path), local_files_only=True, output_loading_info=True
        )

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        # SwinModel's pooler: average of the final-LayerNorm tokens (timm's forward_head).
        return self.module(pixel_values=batch).pooler_output

    @classmethod
    def prepare_weights(cls, src: Path, dest: Path) -> list[Path]:
        if src.is_dir():
            return super().prepare_weights(src, dest)
        from safetensors.torch import save_file

        obj = load_tensor_file(src)
        sd = obj.get("model", obj.get("state_dict", obj))
        config, hf_sd = swin_state_dict_to_hf(sd)
        if config.embed_dim * 2 ** (len(config.depths) - 1) != cls.info.dim:
            raise MedirError(f"{src}: not a Swin-T/S checkpoint ({cls.info.dim}-d features)")
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            save_file({k: v.contiguous() for k, v in hf_sd.items()}, f"{tmp}/model.safetensors")
            cls(device="cpu")._build(Path(tmp))  # refuses missing or misshapen tensors
            dest.mkdir(parents=True, exist_ok=True)
            for n in (HF_CONFIG, "model.safetensors"):
                shutil.copyfile(Path(tmp) / n, dest / n)
        return [dest / HF_CONFIG, dest / "model.safetensors"]


# ---------------------------------------------------------------------------------------------
# DreamSim
# ---------------------------------------------------------------------------------------------
_DREAMSIM_BACKBONE = "checkpoints/dino_vitbase16_pretrain.pth"
_DREAMSIM_FULL_DINO = "dino_vitb16_pretrain.pth"
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class _DreamSimBase(PaperEmbedder):
    """DreamSim (Fu et al. 2023) from its release checkpoint, LoRA merged into the weights.

    On disk (``MEDIR_WEIGHTS_DIR/<name>/``) the loader reads DreamSim 0.2's ``cache_dir``
    layout, i.e. what ``dreamsim(pretrained=True, cache_dir=DIR)`` leaves in ``DIR``:

    - ``<tag>lora/adapter_config.json`` and ``adapter_model.bin`` (or ``.safetensors``): the
      PEFT LoRA adapter (``ensemble_lora`` or ``dino_vitb16_single_lora``);
    - per CLIP branch ``<branch>_pretrain.pth.tar``: ``{'state_dict': DINO-style ViT keys +
      'pos_drop.*' (ln_pre) + 'proj'}`` (DreamSim's ``load_clip_as_dino`` format);
    - the DINO ViT-B/16 backbone: ``checkpoints/dino_vitbase16_pretrain.pth`` (what torch.hub
      fetched into ``DIR``) or else the teacher backbone of ``dino_vitb16_pretrain.pth`` (the
      full DINO checkpoint inside DreamSim's zip).

    Deviations from upstream: the LoRA update is merged (W + α/r·BA; equal up to float
    rounding); attention uses ``scaled_dot_product_attention``; the input is medir's
    ImageNet-normalised 224² slice, renormalised per branch to DreamSim's own statistics
    (identical to DreamSim's ``_preprocess`` of the [0, 1] image, without its bicubic PIL resize).
    """

    kinds: ClassVar[tuple[DreamSimBranchKind, ...]] = ()
    lora_dir: ClassVar[str] = ""
    bytes_per_item = 72 * MiB

    @classmethod
    def _branch_file(cls, kind: DreamSimBranchKind) -> str:
        return f"{kind}_pretrain.pth.tar"

    @classmethod
    def _required(cls, root: Path) -> list[str]:
        """Missing pieces under ``root`` (empty when complete)."""
        missing = []
        if not (root / cls.lora_dir / "adapter_config.json").is_file():
            missing.append(f"{cls.lora_dir}/adapter_config.json")
        if not any((root / cls.lora_dir / f).is_file() for f in _ADAPTER_FILES):
            missing.append(f"{cls.lora_dir}/adapter_model.bin")
        for kind in cls.kinds:
            if kind == "dino_vitb16":
                if not (
                    (root / _DREAMSIM_BACKBONE).is_file() or (root / _DREAMSIM_FULL_DINO).is_file()
                ):
                    missing.append(f"{_DREAMSIM_BACKBONE} (or {_DREAMSIM_FULL_DINO})")
            elif not (root / cls._branch_file(kind)).is_file():
                missing.append(cls._branch_file(kind))
        return missing

    def locate(self, download: bool = False) -> Path | None:
        return self.local_dir if not self._required(self.local_dir) else None

    def _build(self, path: Path) -> nn.Module:
        missing = self._required(path)
        if missing:
            raise unavailable(self.name, path, missing, self.hint)
        model = DreamSimModel(self.kinds)
        for kind, branch in zip(self.kinds, model.branches, strict=True):
            if kind == "dino_vitb16":
                if (path / _DREAMSIM_BACKBONE).is_file():
                    f = path / _DREAMSIM_BACKBONE
                    sd = {k: v for k, v in load_tensor_file(f).items() if not k.startswith("head.")}
                else:
                    f = path / _DREAMSIM_FULL_DINO
                    sd = dino_backbone_from_full_checkpoint(load_tensor_file(f))
                    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
                load_checked(branch.model, sd, str(f))
            else:
                f = path / self._branch_file(kind)
                obj = load_tensor_file(f)
                if "state_dict" not in obj or "proj" not in obj["state_dict"]:
                    raise MedirError(f"{f}: expected {{'state_dict': {{..., 'proj': ...}}}}")
                sd = dict(obj["state_dict"])
                proj = sd.pop("proj")
                load_checked(branch.model, sd, str(f))
                with torch.no_grad():
                    branch.proj.copy_(proj.float())
        adapter_dir = path / self.lora_dir
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        adapter_file = next(adapter_dir / f for f in _ADAPTER_FILES if (adapter_dir / f).is_file())
        merged = merge_lora(model, load_tensor_file(adapter_file), config)
        if merged == 0:
            raise MedirError(f"{adapter_file}: no LoRA weights matched the DreamSim model")
        return model

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        out: torch.Tensor = self.module(batch)
        return out

    @classmethod
    def prepare_weights(cls, src: Path, dest: Path) -> list[Path]:
        with tempfile.TemporaryDirectory() as tmp:
            root = src
            if src.is_file() and zipfile.is_zipfile(src):
                with zipfile.ZipFile(src) as zf:
                    zf.extractall(tmp)
                root = Path(tmp)
                # release zips may hold a top-level folder
                subs = [p for p in root.iterdir() if p.is_dir()]
                if cls._required(root) and len(subs) == 1 and not cls._required(subs[0]):
                    root = subs[0]
            missing = cls._required(root)
            if missing:
                raise MedirError(
                    f"{src}: not a DreamSim checkpoint folder/zip; missing {', '.join(missing)}"
                )
            names = [f"{cls.lora_dir}/adapter_config.json"]
            names += [
                f"{cls.lora_dir}/{f}" for f in _ADAPTER_FILES if (root / cls.lora_dir / f).is_file()
            ]
            for kind in cls.kinds:
                if kind == "dino_vitb16":
                    names += [
                        n for n in (_DREAMSIM_BACKBONE, _DREAMSIM_FULL_DINO) if (root / n).is_file()
                    ]
                else:
                    names.append(cls._branch_file(kind))
            written = []
            for n in names:
                (dest / n).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / n, dest / n)
                written.append(dest / n)
        return written


@register
class DreamSimEnsemble(_DreamSimBase):
    """DreamSim's default ensemble (DINO + CLIP + OpenCLIP ViT-B/16), 1792-d."""

    kinds = ("dino_vitb16", "clip_vitb16", "open_clip_vitb16")
    lora_dir = "ensemble_lora"
    expected_files = (
        "ensemble_lora/adapter_config.json",
        "ensemble_lora/adapter_model.bin",
        "clip_vitb16_pretrain.pth.tar",
        "open_clip_vitb16_pretrain.pth.tar",
        f"{_DREAMSIM_BACKBONE} (or {_DREAMSIM_FULL_DINO})",
    )
    hint = (
        "unzip dreamsim_ensemble_checkpoint.zip (github.com/ssundaram21/dreamsim, release "
        "v0.2.0-checkpoints) there, or run `medir models prepare dreamsim --from ZIP_OR_DIR`"
    )
    info = ModelInfo(
        name="dreamsim",
        dim=1792,
        license="MIT (DreamSim); DINO Apache-2.0, CLIP MIT, OpenCLIP MIT backbones",
        source="https://github.com/ssundaram21/dreamsim (v0.2.0-checkpoints, ensemble)",
        description="DreamSim ensemble embedding: DINO+CLIP+OpenCLIP ViT-B/16 with LoRA",
        paper=True,
    )


@register
class DreamSimDinoViTB16(_DreamSimBase):
    """DreamSim's single-branch DINO ViT-B/16 model (CLS before the final norm, LoRA), 768-d."""

    kinds = ("dino_vitb16",)
    lora_dir = "dino_vitb16_single_lora"
    bytes_per_item = 24 * MiB
    expected_files = (
        "dino_vitb16_single_lora/adapter_config.json",
        "dino_vitb16_single_lora/adapter_model.bin",
        f"{_DREAMSIM_BACKBONE} (or {_DREAMSIM_FULL_DINO})",
    )
    hint = (
        "unzip dreamsim_dino_vitb16_checkpoint.zip (github.com/ssundaram21/dreamsim, release "
        "v0.2.0-checkpoints) there"
    )
    info = ModelInfo(
        name="dreamsim-dino-vitb16",
        dim=768,
        license="MIT (DreamSim); DINO Apache-2.0",
        source="https://github.com/ssundaram21/dreamsim (v0.2.0-checkpoints, dino_vitb16)",
        description="DreamSim single-branch DINO ViT-B/16 with LoRA",
        paper=False,
    )


# ---------------------------------------------------------------------------------------------
# RadImageNet ResNet50
# ---------------------------------------------------------------------------------------------
_RIN_TORCH = "ResNet50.pt"
_RIN_KERAS_H5 = "RadImageNet-ResNet50_notop.h5"
_RIN_KERAS_ST = "RadImageNet-ResNet50_notop.safetensors"


@register
class RadImageNetResNet50(PaperEmbedder):
    """RadImageNet ResNet50 (Mei et al. 2022), supervised on 1.35 M radiology images.

    Files in ``MEDIR_WEIGHTS_DIR/radimagenet-resnet50/``, first found wins:

    - ``ResNet50.pt``: RadImageNet's PyTorch release, the state dict of their ``Backbone``
      (``nn.Sequential`` over torchvision ``resnet50`` children, keys ``backbone.0.weight`` …);
      torchvision names are accepted too; a dict with conv biases (a Keras port) is loaded into
      the Keras variant;
    - ``RadImageNet-ResNet50_notop.safetensors``: the Keras release converted by ``prepare``;
    - ``RadImageNet-ResNet50_notop.h5``: the Keras release itself (converted at load; h5py).
    """

    bytes_per_item = 48 * MiB
    expected_files = (
        f"{_RIN_TORCH} (PyTorch release)",
        f"or {_RIN_KERAS_H5} (Keras release; `prepare` converts it to {_RIN_KERAS_ST})",
    )
    hint = "RadImageNet's weights: https://github.com/BMEII-AI/RadImageNet (Google Drive links)"
    info = ModelInfo(
        name="radimagenet-resnet50",
        dim=2048,
        mean=HALF_MEAN,
        std=HALF_STD,
        license="RadImageNet terms (non-commercial research use)",
        source="https://github.com/BMEII-AI/RadImageNet",
        description="ResNet50 supervised on RadImageNet, average-pooled 2048-d (paper: ResNet50)",
        paper=True,
    )

    def _weights_file(self, root: Path) -> Path | None:
        for n in (_RIN_TORCH, _RIN_KERAS_ST, _RIN_KERAS_H5):
            if (root / n).is_file():
                return root / n
        return None

    def locate(self, download: bool = False) -> Path | None:
        return self.local_dir if self._weights_file(self.local_dir) is not None else None

    def _build(self, path: Path) -> nn.Module:
        f = self._weights_file(path)
        if f is None:
            raise unavailable(self.name, path, self.expected_files, self.hint)
        return resnet50_from_file(f)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        out: torch.Tensor = self.module(batch)
        return out

    @classmethod
    def prepare_weights(cls, src: Path, dest: Path) -> list[Path]:
        if src.is_dir():
            found = [
                src / n for n in (_RIN_TORCH, _RIN_KERAS_ST, _RIN_KERAS_H5) if (src / n).is_file()
            ]
            if not found:
                raise MedirError(f"{src}: no {_RIN_TORCH} or {_RIN_KERAS_H5} in this folder")
            src = found[0]
        model = resnet50_from_file(src)  # validates before anything is written
        dest.mkdir(parents=True, exist_ok=True)
        if model.keras:
            from safetensors.torch import save_file

            out = dest / _RIN_KERAS_ST
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
        else:
            out = dest / _RIN_TORCH
            torch.save(model.state_dict(), out)
        return [out]


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DinoV1ViTB16",
    "DinoV1ViTS16",
    "DinoV2ViTB14",
    "DinoV2ViTS14",
    "DreamSimDinoViTB16",
    "DreamSimEnsemble",
    "PaperEmbedder",
    "RadImageNetResNet50",
    "RadImageNetSwin",
]
