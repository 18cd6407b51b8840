"""``medir models prepare``: put upstream weights in place and prove they load.

The installer is separate from the models (:mod:`ingest.embedders.paper`) because it is the
one step that writes into ``MEDIR_WEIGHTS_DIR`` and runs a check forward; the models only
read. Each model's ``prepare_weights`` hook does the copy or conversion of its own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.embedders.paper import PaperEmbedder
from ingest.embedders.registry import model_class
from ingest.embedders.weights import model_dir
from medir.errors import MedirError


@dataclass(frozen=True)
class PrepareReport:
    """What ``prepare`` did: the files written and the check's output shape."""

    name: str
    directory: Path
    files: list[Path]
    dim: int
    device: str


def prepare_model(
    name: str, src: Path, weights_dir: Path | None = None, device: str = "auto"
) -> PrepareReport:
    """Copy/convert ``src`` into ``weights_dir/<name>/``, then load it and embed one slice.

    A wrong file raises :class:`~medir.errors.MedirError` before anything is written where
    possible; a check failure after writing removes nothing (the files may be inspected).
    """
    cls = model_class(name)
    if not issubclass(cls, PaperEmbedder):
        raise MedirError(f"model {name!r} ships its weights in a package; nothing to prepare")
    src = Path(src).expanduser()
    if not src.exists():
        raise MedirError(f"{src}: no such file or directory")
    dest = model_dir(name, weights_dir)
    files = cls.prepare_weights(src, dest)
    emb = cls(device=device, batch_size=1, weights_dir=weights_dir)
    if emb.locate(download=False) != dest:
        raise MedirError(f"{dest}: prepared files are incomplete for {name}")
    slice_ = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    vec = emb.embed(slice_)
    if vec.shape != (1, emb.dim) or not np.isfinite(vec).all():
        raise MedirError(f"{name}: check failed, output {vec.shape} (expected (1, {emb.dim}))")
    return PrepareReport(
        name=name, directory=dest, files=files, dim=emb.dim, device=str(emb.device)
    )


__all__ = ["PrepareReport", "prepare_model"]
