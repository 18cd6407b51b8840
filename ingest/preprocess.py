"""Intensity normalisation (per volume) and model input preparation (per batch of slices).

Volume level, numpy, on the CPU (:func:`normalize_intensity`): voxel values → [0, 1].

- ``percentile``: the 0.5–99.5 percentile window of the volume (metadata free, the paper's).
- ``ct``: a fixed Hounsfield window (default −1000…1000 HU), so CT keeps its absolute scale.
- ``auto``: ``ct`` when the voxel values look like calibrated Hounsfield units (see
  :func:`looks_like_hu`), else ``percentile``. Decided from voxel values only, never from
  labels or file names.
- ``ct-windows``: three HU windows (lung, soft tissue, bone: :data:`CT_WINDOWS_HU`) as the three
  input channels, shape (Z, 3, Y, X) instead of one window replicated; ``auto-windows`` is
  ``ct-windows`` for volumes that look like HU and ``percentile`` otherwise.

Geometry (:func:`physical_scale`, optional): every slice resampled in-plane to a fixed field of
view in mm (centred, zero padded or cropped), so a 20 cm crop and a 50 cm scan show anatomy at
the same size; without it each slice is stretched to the model input whatever its extent.

A **preprocessing spec** (:class:`Preprocessing`) names both: ``<intensity>[+fov:<mm>]``, e.g.
``auto`` (the default) or ``auto+fov:400`` (physical scale, a 400 mm field of view). It travels
as the ``intensity`` option of every ingest and query path (CLI ``--intensity``, the
``MEDIR_INTENSITY`` setting used by the UI, the queue and PACS ingest), checked by
:func:`medir.config.check_intensity`. A geometry changes every vector, so it is part of the
vector space's id (:func:`medir.config.vector_space_id`): points stored under
``dinov2-s-onnx@1+fov:400`` are never compared with points of ``dinov2-s-onnx@1``.

Batch level, torch, on the model's device (:func:`to_model_input`): resize to the model's input
size, replicate to 3 channels, normalise with the model's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medir.config import INTENSITY_MODES, check_intensity

IntensityMode = Literal["auto", "percentile", "ct", "ct-windows", "auto-windows"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

CT_WINDOW_HU = (-1000.0, 1000.0)
#: ``ct-windows`` channels: lung (W 1500, L −600), soft tissue (W 400, L 40), bone (W 1800, L 400).
CT_WINDOWS_HU: tuple[tuple[float, float], ...] = ((-1350.0, 150.0), (-160.0, 240.0),
                                                   (-500.0, 1300.0))
_SAMPLE = 1_000_000


def _subsample(data: np.ndarray, size: int = _SAMPLE) -> np.ndarray:
    flat = data.reshape(-1)
    if flat.size <= size:
        return flat
    step = flat.size // size
    return flat[::step]


def looks_like_hu(data: np.ndarray) -> bool:
    """True when a volume's voxel values look like calibrated CT Hounsfield units.

    CT in HU has air at about −1000 (outside the body, lungs, or the padding value −1024 /
    −2048 / −3024), soft tissue near 0…100 and bone above. MR and already-windowed images are
    non-negative or arbitrarily scaled. The rule: the 1st percentile lies in [−3100, −600] and a
    noticeable part of the voxels (≥ 2 %) is below −500, while the median stays within a
    physical HU range.
    """
    sample = _subsample(data).astype(np.float32, copy=False)
    p1, p50 = np.percentile(sample, [1.0, 50.0])
    if not (-3100.0 <= p1 <= -600.0):
        return False
    if not (-1100.0 <= p50 <= 3000.0):
        return False
    return float(np.mean(sample < -500.0)) >= 0.02


@dataclass(frozen=True)
class Preprocessing:
    """How a volume's slices become model input: an intensity mode (:data:`INTENSITY_MODES`)
    and, optionally, a physical field of view in mm (:func:`physical_scale`).

    Written ``<intensity>[+fov:<mm>]`` (``auto``, ``auto+fov:400``); :meth:`parse` and ``str``
    are inverse. The bench's preprocessing (``medir bench quality --preps``) is this class.
    """

    intensity: str = "auto"
    fov_mm: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Preprocessing:
        """The spec's parts, or one :class:`~medir.errors.ConfigError` line saying what is
        wrong (:func:`medir.config.check_intensity`)."""
        intensity, _, geo = check_intensity(spec).partition("+")
        return cls(intensity, float(geo.partition(":")[2]) if geo else None)

    def __str__(self) -> str:
        return self.intensity + (f"+fov:{self.fov_mm:g}" if self.fov_mm else "")

    @property
    def geometry(self) -> str:
        """The geometry part of the spec (``+fov:400``), empty without one."""
        return f"+fov:{self.fov_mm:g}" if self.fov_mm else ""


def input_size_of(embedder: object, default: int = 224) -> int:
    """The model's square input size (``embedder.info.input_size``; ``default`` for an
    embedder that does not say, as a benchmark's stand-in may not)."""
    return int(getattr(getattr(embedder, "info", None), "input_size", default))


def preprocess_slices(data: np.ndarray, spacing: tuple[float, float, float], spec: str,
                      size: int, slices: np.ndarray | list[int] | None = None) -> np.ndarray:
    """The model-ready [0, 1] slices of a volume under a concrete spec (see
    :func:`resolve_intensity`): the intensity window, then the physical field of view when the
    spec has one (``size``: the model's input size). Without a geometry this is
    :func:`normalize_intensity` exactly."""
    prep = Preprocessing.parse(spec)
    norm = normalize_intensity(data, prep.intensity, slices=slices)
    if prep.fov_mm:
        norm = physical_scale(norm, (float(spacing[0]), float(spacing[1])), prep.fov_mm, size)
    return norm


def resolve_intensity(data: np.ndarray, mode: str) -> str:
    """The concrete mode (``percentile`` or ``ct``) for ``mode`` on this volume; a spec with a
    geometry keeps it (``auto+fov:400`` → ``ct+fov:400`` for CT in HU)."""
    if "+" in mode:
        prep = Preprocessing.parse(mode)
        return resolve_intensity(data, prep.intensity) + prep.geometry
    if mode not in INTENSITY_MODES:
        raise ValueError(f"unknown intensity mode {mode!r}; choose one of {INTENSITY_MODES}")
    if mode == "auto":
        return "ct" if looks_like_hu(data) else "percentile"
    if mode == "auto-windows":
        return "ct-windows" if looks_like_hu(data) else "percentile"
    return mode


def normalize_intensity(
    data: np.ndarray,
    mode: str = "auto",
    *,
    percentiles: tuple[float, float] = (0.5, 99.5),
    hu_window: tuple[float, float] = CT_WINDOW_HU,
    slices: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Map a volume's voxel values to float32 in [0, 1].

    (Z, Y, X) in, (Z, Y, X) out; ``ct-windows`` gives (Z, 3, Y, X), one HU window per channel.
    ``slices`` (indices along Z) returns only those slices, equal to
    ``normalize_intensity(data, ...)[slices]``: the window still comes from the whole volume,
    only the per-voxel mapping is restricted (a query embeds 43 of a 300-slice CT's slices).
    """
    concrete = resolve_intensity(data, mode)
    if concrete == "ct":
        lo, hi = hu_window
    elif concrete == "percentile":
        lo, hi = (float(v) for v in np.percentile(_subsample(data), percentiles))
    if slices is not None:
        data = data[np.asarray(slices, dtype=np.int64)]
    if concrete == "ct-windows":
        src = data.astype(np.float32, copy=False)
        chans = np.empty((src.shape[0], len(CT_WINDOWS_HU), *src.shape[1:]), np.float32)
        for c, (lo, hi) in enumerate(CT_WINDOWS_HU):
            np.subtract(src, lo, out=chans[:, c])
            chans[:, c] /= hi - lo
        np.clip(chans, 0.0, 1.0, out=chans)
        return chans
    out = data.astype(np.float32, copy=True)
    if hi <= lo:  # a constant volume
        out[:] = 0.0
        return out
    out -= lo
    out /= hi - lo
    np.clip(out, 0.0, 1.0, out=out)
    return out


def to_model_input(
    slices: torch.Tensor,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """(N, H, W) slices in [0, 1] → (N, 3, size, size), normalised, on ``slices.device``.

    Bilinear resize with antialiasing of the whole slice (the aspect ratio is not kept, as in
    the paper's 224×224 inputs), channel replication, then ``(x - mean) / std``. (N, 3, H, W)
    slices (``ct-windows``) keep their own three channels.
    """
    if slices.ndim == 4 and slices.shape[1] == 3:
        x = slices.float()
    elif slices.ndim == 3:
        x = slices.unsqueeze(1).float()
    else:
        raise ValueError(f"expected (N, H, W) or (N, 3, H, W) slices, got shape "
                         f"{tuple(slices.shape)}")
    if x.shape[-2:] != (size, size):
        antialias = x.device.type == "cpu" or x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=antialias)
    x = x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def physical_scale(slices: np.ndarray, spacing_xy: tuple[float, float], fov_mm: float,
                   size: int) -> np.ndarray:
    """Resample slices in-plane to a fixed field of view: ``fov_mm`` × ``fov_mm`` on
    ``size`` × ``size`` pixels (``fov_mm / size`` mm per pixel), centred, zero padded.

    ``slices`` is (N, Y, X) or (N, C, Y, X) in [0, 1]; ``spacing_xy`` is (x, y) in mm. Anatomy
    larger than the field of view is cropped at the centre. Bilinear with antialiasing when
    shrinking. Returns float32 (N, [C,] size, size).
    """
    if not fov_mm > 0 or size < 1:
        raise ValueError(f"physical scale needs fov_mm > 0 and size ≥ 1, got {fov_mm}, {size}")
    sx, sy = (float(s) for s in spacing_xy)
    if not (sx > 0 and sy > 0):
        raise ValueError(f"physical scale needs positive in-plane spacing, got {spacing_xy}")
    x = torch.as_tensor(np.ascontiguousarray(slices), dtype=torch.float32)
    four = x.ndim == 4
    if not four:
        x = x.unsqueeze(1)
    mm_px = fov_mm / size
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * sy / mm_px)), max(1, round(w * sx / mm_px))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=nh < h or nw < w)
    out = torch.zeros((*x.shape[:2], size, size), dtype=torch.float32)
    # centre: source window [s0, s0 + n) lands at [d0, d0 + n)
    def _span(n_src: int) -> tuple[int, int, int]:
        if n_src >= size:
            return (n_src - size) // 2, 0, size
        return 0, (size - n_src) // 2, n_src

    ys, yd, yn = _span(nh)
    xs, xd, xn = _span(nw)
    out[..., yd:yd + yn, xd:xd + xn] = x[..., ys:ys + yn, xs:xs + xn]
    res = out.clamp_(0.0, 1.0).numpy()
    return res if four else res[:, 0]
