"""Perturbations: each changes a volume the way real queries differ from the stored scan.

Pure functions on :class:`ingest.volume.Volume` (the reader's canonical (Z, Y, X) axial
slices, inferior → superior, spacing (x, y, z) in mm). Each returns a new volume, or ``None``
when it does not apply (a CT-only change on MR, 5 mm slices from slices already ≥ 5 mm). The
two orientation perturbations return the volume re-read from a NIfTI written in another
orientation (:func:`nifti_in_orientation`), so the reader must reorient it.

Which change applies is decided from voxel values (:func:`ingest.preprocess.looks_like_hu`),
never from labels or names. Random changes are seeded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from ingest.preprocess import looks_like_hu
from ingest.reader import open_volume
from ingest.volume import Volume

Perturbation = Callable[[Volume], Volume | None]


def _derived(v: Volume, name: str, data: np.ndarray,
             spacing: tuple[float, float, float] | None = None) -> Volume:
    """A copy of ``v`` with new voxels (and spacing); the id says what was done."""
    return replace(v, volume_id=f"{v.volume_id}~{name}",
                   data=np.ascontiguousarray(data, dtype=np.float32),
                   spacing=spacing if spacing is not None else v.spacing)


# ---- field of view --------------------------------------------------------------------------
def z_crop(v: Volume, fraction: float, where: str = "centre") -> Volume | None:
    """Keep ``fraction`` of the slices (at least one): centred, or the ``lower``/``upper`` part.

    The slice count is ``round(fraction × Z)``: a 25 % crop of 200 slices keeps 50.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"z crop fraction must be in (0, 1], got {fraction}")
    if where not in ("centre", "lower", "upper"):
        raise ValueError(f"z crop position must be centre, lower or upper, got {where!r}")
    n = v.n_slices
    keep = max(1, int(round(fraction * n)))
    start = {"lower": 0, "upper": n - keep, "centre": (n - keep) // 2}[where]
    name = f"z{fraction:.0%}" if where == "centre" else f"{where}{fraction:.0%}"
    return _derived(v, name, v.data[start:start + keep])


def _foreground_centre(data: np.ndarray) -> tuple[int, int]:
    """(row, col) of the centre of mass of voxels above the volume's mean (the body)."""
    mip = (data > float(np.mean(data))).mean(axis=0)
    total = float(mip.sum())
    if total <= 0:
        return data.shape[1] // 2, data.shape[2] // 2
    rows, cols = np.indices(mip.shape)
    return int(round(float((rows * mip).sum()) / total)), int(round(float((cols * mip).sum())
                                                                       / total))


def inplane_crop(v: Volume, size_mm: float = 180.0) -> Volume | None:
    """A ``size_mm`` × ``size_mm`` in-plane region around the body's centre (a radiomics or
    tumour crop); ``None`` when the field of view is already no larger."""
    sx, sy = v.spacing[0], v.spacing[1]
    h, w = v.data.shape[1:]
    ch = min(h, max(1, int(round(size_mm / sy))))
    cw = min(w, max(1, int(round(size_mm / sx))))
    if ch >= h and cw >= w:
        return None
    r, c = _foreground_centre(v.data)
    r0 = int(np.clip(r - ch // 2, 0, h - ch))
    c0 = int(np.clip(c - cw // 2, 0, w - cw))
    return _derived(v, f"crop{size_mm:g}mm", v.data[:, r0:r0 + ch, c0:c0 + cw])


# ---- resolution -----------------------------------------------------------------------------
def thick_slices(v: Volume, thickness_mm: float = 5.0) -> Volume | None:
    """Slices ``thickness_mm`` thick and apart: new slice k averages the source slices whose
    centre lies within ±thickness/2 of k × thickness (a thick reconstruction). ``None`` when
    the slices are already at least 90 % that thick."""
    dz = v.spacing[2]
    if dz >= 0.9 * thickness_mm or v.n_slices < 2:
        return None
    z = np.arange(v.n_slices) * dz
    centres = np.arange(0.0, z[-1] + 1e-9, thickness_mm)
    out = np.empty((centres.size, *v.data.shape[1:]), np.float32)
    for k, c in enumerate(centres):
        sel = np.flatnonzero(np.abs(z - c) <= thickness_mm / 2 + 1e-9)
        out[k] = v.data[sel].mean(axis=0)
    return _derived(v, f"thick{thickness_mm:g}mm", out,
                    (v.spacing[0], v.spacing[1], float(thickness_mm)))


def half_inplane(v: Volume) -> Volume | None:
    """In-plane resolution halved: 2 × 2 pixel averages, spacing doubled."""
    h, w = v.data.shape[1:]
    if h < 4 or w < 4:
        return None
    d = v.data[:, : h // 2 * 2, : w // 2 * 2]
    d = d.reshape(d.shape[0], h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return _derived(v, "half-res", d, (v.spacing[0] * 2, v.spacing[1] * 2, v.spacing[2]))


# ---- orientation on disk --------------------------------------------------------------------
def nifti_in_orientation(v: Volume, orientation: str) -> nib.Nifti1Image:
    """``v`` as a NIfTI image stored in another voxel order: ``LPS`` (x and y reversed, the
    DICOM order) or ``sagittal`` (slices along x: voxel axes P, I, R). The affine says so, and
    a reader that honours it recovers ``v``'s canonical array exactly."""
    sx, sy, sz = v.spacing
    # the reader's canonical (Z, Y, X) → RAS voxel array (X, Y, Z)
    ras = np.ascontiguousarray(v.data[:, ::-1, ::-1].transpose(2, 1, 0))
    nx, ny, nz = ras.shape
    if orientation == "LPS":
        arr = ras[::-1, ::-1, :]
        affine = np.array([[-sx, 0, 0, sx * (nx - 1)], [0, -sy, 0, sy * (ny - 1)],
                           [0, 0, sz, 0], [0, 0, 0, 1]], float)
    elif orientation == "sagittal":
        arr = ras.transpose(1, 2, 0)[::-1, ::-1, :]  # (Y reversed, Z reversed, X)
        affine = np.array([[0, 0, sx, 0], [-sy, 0, 0, sy * (ny - 1)],
                           [0, -sz, 0, sz * (nz - 1)], [0, 0, 0, 1]], float)
    else:
        raise ValueError(f"orientation must be LPS or sagittal, got {orientation!r}")
    img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def reoriented(v: Volume, orientation: str) -> Volume:
    """``v`` written as a NIfTI in ``orientation`` and read back through medir's reader."""
    with tempfile.TemporaryDirectory(prefix="medir-perturb-") as tmp:
        path = Path(tmp) / f"{orientation}.nii.gz"
        nib.save(nifti_in_orientation(v, orientation), str(path))
        back = open_volume(path).read(None)
    return _derived(v, orientation, back.data, back.spacing)


# ---- intensity ------------------------------------------------------------------------------
def _robust_range(data: np.ndarray) -> float:
    lo, hi = np.percentile(data[:: max(1, data.shape[0] // 16)], [0.5, 99.5])
    return float(hi - lo) or 1.0


def noise(v: Volume, level: float = 0.05, seed: int = 0) -> Volume:
    """Noise of σ = ``level`` × the volume's 0.5–99.5 % range: Gaussian for CT in HU, Rician
    (magnitude of a complex Gaussian) otherwise, as MR magnitude images have."""
    rng = np.random.default_rng(seed)
    sigma = level * _robust_range(v.data)
    d = v.data.astype(np.float32)
    if looks_like_hu(d):
        out = d + rng.normal(0.0, sigma, d.shape).astype(np.float32)
        return _derived(v, f"gauss{level:g}", out)
    re = d + rng.normal(0.0, sigma, d.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, d.shape).astype(np.float32)
    return _derived(v, f"rician{level:g}", np.sqrt(re * re + im * im))


def intensity_rescale(v: Volume, scale: float = 3.0, offset: float = 200.0) -> Volume | None:
    """MR-like intensities multiplied and shifted (another scanner's scale); ``None`` for CT in
    HU, whose scale is physical."""
    if looks_like_hu(v.data):
        return None
    return _derived(v, "rescaled", v.data * scale + offset)


def ct_uncalibrated(v: Volume, offset: float = 1024.0) -> Volume | None:
    """CT stored without the HU rescale: raw values HU + 1024, clipped at 0 (as unsigned
    storage does); ``None`` when the volume is not CT in HU."""
    if not looks_like_hu(v.data):
        return None
    return _derived(v, "no-hu", np.maximum(v.data + offset, 0.0))


# ---- the suite ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NamedPerturbation:
    name: str
    description: str
    apply: Perturbation


SUITE: tuple[NamedPerturbation, ...] = (
    NamedPerturbation("z50", "z field of view cropped to the central 50 %",
                      lambda v: z_crop(v, 0.5)),
    NamedPerturbation("z25", "z field of view cropped to the central 25 %",
                      lambda v: z_crop(v, 0.25)),
    NamedPerturbation("upper", "upper (superior) half only", lambda v: z_crop(v, 0.5, "upper")),
    NamedPerturbation("lower", "lower (inferior) half only", lambda v: z_crop(v, 0.5, "lower")),
    NamedPerturbation("crop180", "in-plane crop to 18 × 18 cm around the body",
                      lambda v: inplane_crop(v, 180.0)),
    NamedPerturbation("thick5", "5 mm thick slices (slab averages)",
                      lambda v: thick_slices(v, 5.0)),
    NamedPerturbation("half-res", "in-plane resolution halved", half_inplane),
    NamedPerturbation("lps", "stored in LPS voxel order", lambda v: reoriented(v, "LPS")),
    NamedPerturbation("sagittal", "stored as sagittal slices",
                      lambda v: reoriented(v, "sagittal")),
    NamedPerturbation("noise", "Gaussian (CT) / Rician (MR) noise, σ = 5 % of the range",
                      noise),
    NamedPerturbation("rescaled", "MR intensities × 3 + 200", intensity_rescale),
    NamedPerturbation("no-hu", "CT stored as HU + 1024 without rescale", ct_uncalibrated),
)
SUITE_NAMES: tuple[str, ...] = tuple(p.name for p in SUITE)


def get_perturbations(names: list[str] | None = None) -> list[NamedPerturbation]:
    """The suite, or the named part of it (in the suite's order)."""
    if not names:
        return list(SUITE)
    unknown = [n for n in names if n not in SUITE_NAMES]
    if unknown:
        from medir.errors import ConfigError

        raise ConfigError(f"unknown perturbation(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(SUITE_NAMES)}")
    return [p for p in SUITE if p.name in names]
