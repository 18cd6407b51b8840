"""The model registry: names → embedder classes. Unknown names suggest the closest one."""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ingest.embedders.base import Embedder, ModelInfo
from medir.errors import UnknownModel

_REGISTRY: dict[str, type[Embedder]] = {}
# Modules whose import registers models. Importing them must not load weights.
_MODULES = ("ingest.embedders.packaged", "ingest.embedders.paper")
_imported = False

E = TypeVar("E", bound=type[Embedder])


def register(cls: E) -> E:
    """Class decorator: ``@register`` on an :class:`Embedder` subclass with ``info`` set."""
    name = cls.info.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def _plugin_modules() -> tuple[str, ...]:
    """Extra modules that register a team's own embedders: ``MEDIR_PLUGINS=pkg.mod,other``."""
    raw = os.environ.get("MEDIR_PLUGINS", "")
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def _ensure_imported() -> None:
    global _imported
    if _imported:
        return
    for mod in _plugin_modules():
        importlib.import_module(mod)
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module not written yet, never a missing dep
            if exc.name != mod:
                raise
    _imported = True


def model_names() -> list[str]:
    _ensure_imported()
    return sorted(_REGISTRY)


def model_class(name: str) -> type[Embedder]:
    _ensure_imported()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModel(
            f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})"
        ) from None


def model_info(name: str) -> ModelInfo:
    return model_class(name).info


def all_models() -> list[ModelInfo]:
    return [model_class(n).info for n in model_names()]


def get_embedder(
    name: str,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    half: bool | None = None,
    weights_dir: Path | None = None,
) -> Embedder:
    """An (unloaded) embedder instance. Weights load on first use."""
    cls = model_class(name)
    return cls(device=device, batch_size=batch_size, half=half, weights_dir=weights_dir)


Factory = Callable[..., Embedder]
