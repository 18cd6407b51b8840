"""Embedders: pretrained 2D models turning axial slices into unit vectors."""

from ingest.embedders.base import Embedder, ModelInfo, choose_device
from ingest.embedders.registry import (
    all_models,
    configured_embedder,
    get_embedder,
    model_class,
    model_info,
    model_names,
    register,
    use_plugins,
)

__all__ = [
    "Embedder",
    "ModelInfo",
    "all_models",
    "choose_device",
    "configured_embedder",
    "get_embedder",
    "model_class",
    "model_info",
    "model_names",
    "register",
    "use_plugins",
]
