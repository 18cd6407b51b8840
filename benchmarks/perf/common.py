"""Shared helpers: JSON output with the machine stamp, progress lines, synthetic volumes."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from benchmarks.machine import BenchGuard, stamp
from ingest.embedders import Embedder, get_embedder

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def log(msg: str) -> None:
    """One progress line on stderr, with the 1-minute load average (other jobs share the CPUs)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[perf {time.strftime('%H:%M:%S')} load {load:.1f}] {msg}", file=sys.stderr,
          flush=True)


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def write_result(out: Path, bench: str, params: dict[str, Any],
                 results: dict[str, Any], guard: BenchGuard | None = None) -> Path:
    """Write ``{bench, params, results, time, machine, git, load_average_end}`` and, with the
    run's ``guard``, ``busy`` and ``load`` (start and end); ``out`` is a ``.json`` file or a
    folder (then ``<folder>/<bench>.json``)."""
    path = out if out.suffix == ".json" else out / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"bench": bench, **stamp(guard), "load_average_end": load_average(),
           "params": params, "results": results}
    path.write_text(json.dumps(doc, indent=2, default=_jsonable))
    log(f"wrote {path}")
    return path


def _jsonable(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def make_embedder(model: str, device: str, batch_size: int) -> Embedder:
    """A loaded embedder (``test-tiny`` is registered from the tests' plugin when asked for)."""
    if model == "test-tiny":
        import tests.plugin_embedder  # noqa: F401
    return get_embedder(model, device=device, batch_size=batch_size).load()


def sample_files(root: Path = SAMPLES) -> list[Path]:
    """The sample collection's volume files, sorted."""
    return sorted(p for p in root.glob("*.nii*") if p.is_file())


def synthetic_volume(shape: tuple[int, int, int], seed: int, ct: bool) -> NDArray[np.int16]:
    """An (X, Y, Z) int16 volume with body-like structure: an ellipse of soft tissue with
    brighter blobs, varying smoothly along z, in HU-like (``ct``) or MR-like values."""
    rng = np.random.default_rng(seed)
    x, y, z = shape
    yy, xx = np.mgrid[0:y, 0:x] / np.array([max(y - 1, 1), max(x - 1, 1)])[:, None, None]
    body = ((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1.0
    out = np.empty((x, y, z), np.int16)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    for k in range(z):
        t = k / max(z - 1, 1)
        blob = ((xx - cx - 0.1 * t) ** 2 + (yy - cy) ** 2) < (0.02 + 0.03 * np.sin(np.pi * t))
        img = np.where(body, 40.0, -1000.0 if ct else 0.0) + np.where(blob, 300.0, 0.0)
        img += rng.normal(0, 10, img.shape)
        if not ct:
            img = np.clip(img * 2 + 100, 0, None)
        out[:, :, k] = img.T.astype(np.int16)
    return out


def write_synthetic_set(root: Path, specs: Iterable[tuple[int, tuple[int, int, int]]],
                        seed: int = 0) -> list[Path]:
    """Write ``count`` volumes of each ``shape`` as ``.nii.gz`` (1×1×2.5 mm) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    i = 0
    for count, shape in specs:
        for _ in range(count):
            path = root / f"syn_{i:04d}_{shape[0]}x{shape[1]}x{shape[2]}.nii.gz"
            if not path.exists():
                data = synthetic_volume(shape, seed + i, ct=i % 2 == 0)
                nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.5, 1.0])), str(path))
            paths.append(path)
            i += 1
    return paths


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")
