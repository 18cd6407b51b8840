"""Query-side slice selection and vote weights (the paper's Sec. III-B and Table III).

Pure numpy, no I/O. A :class:`Sampling` chooses slice indices; a :class:`Weighting` gives each
chosen slice a weight. Specs are strings so they travel through the CLI, the queue and JSON:

- sampling: ``all`` | ``every-n:N`` | ``every-mm:X`` | ``random:K[:SEED]``, each optionally
  capped with ``,max=N``: at most N of the chosen slices, evenly spaced among them (the
  query's ``max_slices`` option, ``MEDIR_SEARCH__MAX_SLICES``, sets the same cap)
- weighting: ``none`` | ``gaussian[:SIGMA]`` (σ as a fraction of the volume's depth)

Slice-wise (SW) prediction is an aggregation mode of the vote, see :mod:`search.vote`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from medir.config import DEFAULT_SIGMA
from medir.errors import ConfigError

DEFAULT_SEED = 0
# every-mm below this step would ask for more target positions than any volume has slices
# (CT/MR slices are >= 0.1 mm apart); it is a typo, not a sampling.
MIN_STEP_MM = 0.01
MAX_SIGMA = 100.0


@dataclass(frozen=True)
class Sampling:
    kind: str  # all | every-n | every-mm | random
    value: float = 0.0
    seed: int = DEFAULT_SEED
    max_slices: int = 0  # at most this many of the chosen slices (0: no cap), see capped()

    @classmethod
    def parse(cls, spec: str) -> Sampling:
        base, comma, cap = spec.strip().lower().partition(",")
        sampling = cls._parse_base(spec, base)
        if not comma:
            return sampling
        key, eq, n = cap.strip().partition("=")
        try:
            if key.strip() == "max" and eq and int(n) >= 1:
                return sampling.capped(int(n))
        except ValueError:
            pass
        raise ConfigError(f"bad sampling {spec!r}: the cap after ',' is max=N (N >= 1), e.g. "
                          "every-mm:7,max=20")

    @classmethod
    def _parse_base(cls, spec: str, base: str) -> Sampling:
        parts = base.strip().split(":")
        kind = parts[0]
        try:
            if kind == "all" and len(parts) == 1:
                return cls("all")
            if kind in ("every-n", "every_n", "n") and len(parts) == 2:
                n = int(parts[1])
                if n < 1:
                    raise ValueError
                return cls("every-n", n)
            if kind in ("every-mm", "every_mm", "mm") and len(parts) == 2:
                x = float(parts[1])
                if not (math.isfinite(x) and x >= MIN_STEP_MM):
                    raise ValueError
                return cls("every-mm", x)
            if kind in ("random", "k") and len(parts) in (2, 3):
                k = int(parts[1])
                seed = int(parts[2]) if len(parts) == 3 else DEFAULT_SEED
                if k < 1 or seed < 0:
                    raise ValueError
                return cls("random", k, seed)
        except ValueError:
            pass
        raise ConfigError(
            f"bad sampling {spec!r}; use all, every-n:N (N >= 1), every-mm:X (finite X >= "
            f"{MIN_STEP_MM:g} mm) or random:K[:SEED] (K >= 1, SEED >= 0), optionally ,max=N"
        )

    def __str__(self) -> str:
        cap = f",max={self.max_slices}" if self.max_slices else ""
        if self.kind == "all":
            return "all" + cap
        if self.kind == "random":
            return f"random:{int(self.value)}:{self.seed}" + cap
        if self.kind == "every-n":
            return f"every-n:{int(self.value)}" + cap
        return f"every-mm:{self.value:g}" + cap

    def capped(self, max_slices: int) -> Sampling:
        """This sampling with at most ``max_slices`` slices (0: unchanged; the smaller cap
        wins when it already has one)."""
        if max_slices <= 0 or 0 < self.max_slices <= max_slices:
            return self
        return replace(self, max_slices=int(max_slices))

    def select(self, n_slices: int, z_spacing_mm: float = 1.0) -> np.ndarray:
        """Sorted indices of the chosen slices of a volume with ``n_slices`` slices (at most
        ``max_slices`` of them when capped)."""
        return evenly_among(self._select(n_slices, z_spacing_mm), self.max_slices)

    def _select(self, n_slices: int, z_spacing_mm: float) -> np.ndarray:
        if n_slices <= 0:
            return np.zeros(0, dtype=np.int64)
        if self.kind == "all":
            return np.arange(n_slices, dtype=np.int64)
        if self.kind == "every-n":
            return np.arange(0, n_slices, int(self.value), dtype=np.int64)
        if self.kind == "every-mm":
            if z_spacing_mm <= 0:
                raise ConfigError(f"every-mm sampling needs a positive z spacing, got "
                                  f"{z_spacing_mm}")
            # Positions 0, x, 2x, ... mm; each maps to the nearest slice (no repeats).
            z = np.arange(n_slices) * z_spacing_mm
            targets = np.arange(0.0, z[-1] + 1e-9, self.value)
            idx = np.rint(targets / z_spacing_mm).astype(np.int64)
            return np.unique(np.clip(idx, 0, n_slices - 1))
        # random: k distinct slices (all if the volume has fewer), seeded
        k = min(int(self.value), n_slices)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(n_slices, size=k, replace=False).astype(np.int64))


def evenly_among(chosen: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` of the sorted ``chosen`` indices, evenly spaced among them: the centres
    of ``cap`` equal runs (index ⌊(i + ½)·m / cap⌋ of the m chosen), so one slice is the
    middle one and the two ends are left alike. ``cap`` ≤ 0 or ≥ m: all of them."""
    m = len(chosen)
    if cap <= 0 or cap >= m:
        return chosen
    pos = ((np.arange(cap) + 0.5) * m / cap).astype(np.int64)  # distinct: steps of m/cap > 1
    return chosen[pos]


@dataclass(frozen=True)
class Weighting:
    kind: str  # none | gaussian
    sigma: float = DEFAULT_SIGMA

    @classmethod
    def parse(cls, spec: str, default_sigma: float = DEFAULT_SIGMA) -> Weighting:
        """``none`` or ``gaussian[:SIGMA]`` (``default_sigma`` where the spec gives none)."""
        parts = spec.strip().lower().split(":")
        try:
            if parts[0] in ("none", "count", "uniform") and len(parts) == 1:
                return cls("none")
            if parts[0] in ("gaussian", "w") and len(parts) in (1, 2):
                sigma = float(parts[1]) if len(parts) == 2 else default_sigma
                if not (math.isfinite(sigma) and 0 < sigma <= MAX_SIGMA):
                    raise ValueError
                return cls("gaussian", sigma)
        except ValueError:
            pass
        raise ConfigError(f"bad weighting {spec!r}; use none or gaussian[:SIGMA] (0 < SIGMA <= "
                          f"{MAX_SIGMA:g}, a fraction of the volume's depth)")

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"gaussian:{self.sigma:g}"

    def weights(self, indices: np.ndarray, n_slices: int) -> np.ndarray:
        """Weight of each chosen slice. Gaussian: centred on the middle slice of the volume,
        σ = ``sigma`` × (n_slices − 1), peak 1."""
        idx = np.asarray(indices, dtype=np.float64)
        if self.kind == "none":
            return np.ones_like(idx)
        centre = (n_slices - 1) / 2.0
        sd = self.sigma * max(n_slices - 1, 1)
        return np.exp(-0.5 * ((idx - centre) / sd) ** 2)
