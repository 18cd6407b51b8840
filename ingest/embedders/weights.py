"""Where model weights live, and the error that says where to put them.

Lookup order for a model ``NAME`` (never a download at import, never a silent download):

1. ``MEDIR_WEIGHTS_DIR/NAME/`` (settings ``weights_dir``; default ``./models``), in the format of
   the upstream release (see each model's ``expected_files``);
2. the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), for models published on the Hub,
   read with ``local_files_only=True``;
3. a Hub download, only when the user opts in with ``MEDIR_ALLOW_DOWNLOADS=1`` (settings
   ``allow_downloads``, passed to the embedder) and ``HF_HUB_OFFLINE`` is not set.

Otherwise :func:`unavailable` builds the :class:`~medir.errors.ModelUnavailable` naming the files,
the directory and the ``medir models prepare`` command.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from medir.config import DEFAULT_WEIGHTS_DIR
from medir.errors import MedirError, ModelUnavailable

_TRUE = {"1", "true", "yes", "on"}

HF_CONFIG = "config.json"
HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def weights_root(weights_dir: Path | None = None) -> Path:
    """The directory holding one sub-directory per model (the settings' ``weights_dir``,
    ``MEDIR_WEIGHTS_DIR``, given by the caller; None: the default ``./models``)."""
    return Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR


def model_dir(name: str, weights_dir: Path | None = None) -> Path:
    """``MEDIR_WEIGHTS_DIR/<name>/``: where ``medir models prepare`` puts a model's files."""
    return weights_root(weights_dir) / name


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (read at call time, not only at huggingface_hub import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def downloads_allowed(opted_in: bool) -> bool:
    """The user opted in to Hub downloads (the settings' ``allow_downloads``,
    ``MEDIR_ALLOW_DOWNLOADS=1``) and is not offline."""
    return opted_in and not hf_offline()


def is_hf_folder(path: Path) -> bool:
    """A ``save_pretrained`` folder: ``config.json`` plus weights (single file or sharded)."""
    return (path / HF_CONFIG).is_file() and any((path / f).is_file() for f in HF_WEIGHT_FILES)


def hf_cache_dir() -> str | None:
    """The Hub cache directory from the environment at call time (None: library default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hf_cached_folder(repo_id: str, *, download: bool = False) -> Path | None:
    """The snapshot folder of ``repo_id`` in the Hugging Face cache, or None.

    With ``download=False`` (the default) this only reads the cache (``local_files_only``).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # transformers (and huggingface_hub) not installed
        return None
    try:
        path = snapshot_download(
            repo_id,
            cache_dir=hf_cache_dir(),
            local_files_only=not download,
            allow_patterns=["*.json", "*.safetensors", "*.bin"],
        )
    except Exception:  # noqa: BLE001 - any cache miss / offline / network error means "absent"
        return None
    folder = Path(path)
    return folder if is_hf_folder(folder) else None


def unavailable(
    name: str, directory: Path, files: Iterable[str], hint: str = ""
) -> ModelUnavailable:
    """The error for missing weights: which files, which directory, which command."""
    listed = ", ".join(files)
    msg = (
        f"weights of model {name!r} not found: put {listed} in {directory}/ "
        f"(set MEDIR_WEIGHTS_DIR to change the parent directory), or run "
        f"`medir models prepare {name} --from PATH`"
    )
    if hint:
        msg += f"; {hint}"
    return ModelUnavailable(msg)


def load_tensor_file(path: Path) -> Mapping[str, Any]:
    """Read a ``.safetensors`` file or a torch pickle (``weights_only``; argparse allowed).

    DINO's full training checkpoints pickle an ``argparse.Namespace``; it is allow-listed,
    nothing else outside tensors and containers is.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MedirError(
            f"{path}: cannot read as torch weights ({type(exc).__name__}: {first[:200]})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise MedirError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def pick_batch_size(
    device: torch.device, bytes_per_item: int, default: int = 32, maximum: int = 512
) -> int:
    """A batch size that fits the free accelerator memory (a power of two, at most ``maximum``).

    On CUDA, half of the currently free memory is budgeted for activations of
    ``bytes_per_item`` each (a per-model estimate that includes the peak of one forward pass);
    elsewhere ``default``.
    """
    if device.type != "cuda":
        return default
    try:
        free, _total = torch.cuda.mem_get_info(device)
    except Exception:  # noqa: BLE001 - driver without mem_get_info
        return default
    n = max(1, int(free * 0.5) // max(1, bytes_per_item))
    n = min(n, maximum)
    return 1 << (n.bit_length() - 1)
