"""The model registry: names → embedder classes. Unknown names suggest the closest one."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ingest.embedders.base import Embedder, ModelInfo
from medir.errors import UnknownModel

if TYPE_CHECKING:
    from medir.config import Settings

_REGISTRY: dict[str, type[Embedder]] = {}
# Modules whose import registers models. Importing them must not load weights.
_MODULES = ("ingest.embedders.packaged", "ingest.embedders.paper")
_imported = False
_plugins: tuple[str, ...] = ()

E = TypeVar("E", bound=type[Embedder])


def register(cls: E) -> E:
    """Class decorator: ``@register`` on an :class:`Embedder` subclass with ``info`` set."""
    name = cls.info.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def use_plugins(modules: Iterable[str]) -> None:
    """Extra modules that register a team's own embedders (the settings' ``plugins``,
    ``MEDIR_PLUGINS=pkg.mod,other``), imported at the next lookup of a model. The edge that
    read the settings (the runner, the CLI, the UI) passes them; they add up, never drop."""
    global _plugins, _imported
    new = tuple(m for m in modules if m and m not in _plugins)
    if new:
        _plugins += new
        _imported = False


def _ensure_imported() -> None:
    global _imported
    if _imported:
        return
    for mod in _plugins:
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


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything an embedder is built from, frozen: the constructor's arguments and, as one
    value, the key of a process's embedder cache, so two call sites can never disagree about
    what "the same model" means (``half`` included)."""

    name: str
    device: str = "auto"
    batch_size: int | None = None
    half: bool | None = None
    weights_dir: Path | None = None
    cache_dir: Path | None = None
    allow_downloads: bool = False

    @classmethod
    def of(cls, name: str, settings: Settings, *, device: str | None = None,
           batch_size: int | None = None) -> EmbedderConfig:
        """The settings' configuration of ``name`` (``device``/``batch_size`` override them);
        the settings' plugins are registered first, so ``name`` may be a plugin's model."""
        use_plugins(settings.plugin_modules)
        return cls(name, device or settings.device, batch_size or settings.batch_size, None,
                   settings.weights_dir, settings.cache_dir, settings.allow_downloads)

    def build(self) -> Embedder:
        """An (unloaded) embedder of this configuration. Weights load on first use."""
        cls = model_class(self.name)
        return cls(device=self.device, batch_size=self.batch_size, half=self.half,
                   weights_dir=self.weights_dir, cache_dir=self.cache_dir,
                   allow_downloads=self.allow_downloads)


def get_embedder(
    name: str,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    half: bool | None = None,
    weights_dir: Path | None = None,
    cache_dir: Path | None = None,
    allow_downloads: bool = False,
) -> Embedder:
    """An (unloaded) embedder instance. Weights load on first use.

    ``weights_dir``, ``cache_dir`` and ``allow_downloads`` are the settings' (the runner passes
    them); left out, the defaults of :mod:`medir.config` apply."""
    return EmbedderConfig(name, device, batch_size, half, weights_dir, cache_dir,
                          allow_downloads).build()


def configured_embedder(name: str, settings: Settings, *, device: str | None = None,
                        batch_size: int | None = None) -> Embedder:
    """An (unloaded) embedder with the settings' device, batch size, weights and cache folders
    and download opt-in (``device`` and ``batch_size`` override them)."""
    return EmbedderConfig.of(name, settings, device=device, batch_size=batch_size).build()


Factory = Callable[..., Embedder]
