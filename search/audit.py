"""Near-duplicate and leakage audit: which indexed volumes are the same scan, or overlap.

The same patient re-scanned, a z-crop, an in-plane crop, a re-sampled or re-saved copy of a
training volume sitting in the test split inflates every figure measured on that split. The
audit finds such pairs with the k-NN index medir already has, never by comparing every pair of
volumes: each volume's stored slice vectors are one batched k-NN request (its own points
excluded), and a slice of volume A whose nearest slice in volume B is at least ``slice_min``
similar is *matched* in B.

For a pair (A, B):

- ``coverage_a``: the share of A's slices matched in B (1.0 when A is a z-crop of B, or a copy);
- ``coverage_b``: the same from B's side (the crop's share of the longer volume);
- ``similarity``: the median similarity of the matched slices;
- ``score = max(coverage_a, coverage_b) * similarity``, in [0, 1].

A pair is reported when ``score >= pair_min``. The evidence is the matched slice range along z
in each volume (``a_range`` / ``b_range``, in mm where the payload has ``z_mm``). Both
thresholds are chosen by measurement (``medir bench audit``: the perturbation suite gives
known duplicates, the evaluation collection's distinct cases known non-duplicates; see
``docs/audit.md``). Labels never decide a match: ``across`` only restricts *which* pairs are
reported (e.g. ``split``: only pairs whose ``split`` labels differ).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medir.errors import ConfigError, MedirError
from search.live import live_vectors
from search.store import COMPLETE, LABEL_KEYS, Filter, Hit, SliceStore
from search.volumes import VolumeInfo, list_volumes

DEFAULT_SLICE_MIN = 0.95
DEFAULT_PAIR_MIN = 0.5
DEFAULT_AUDIT_K = 8
AUDIT_PAYLOAD_KEYS = ["volume_id", "slice", "z_mm", "gen"]


@dataclass(frozen=True)
class SliceRange:
    """The first and last matched slice of one volume, with their z positions (mm)."""

    first: int
    last: int
    z_first_mm: float
    z_last_mm: float


@dataclass
class DuplicatePair:
    """Two volumes that are the same scan or overlap, with the evidence."""

    a: str
    b: str
    score: float
    coverage_a: float
    coverage_b: float
    similarity: float
    matched_a: int
    matched_b: int
    a_range: SliceRange | None
    b_range: SliceRange | None
    labels_a: dict[str, str] = field(default_factory=dict)
    labels_b: dict[str, str] = field(default_factory=dict)
    source_a: str = ""
    source_b: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DuplicatePair:
        """The inverse of :meth:`to_dict` (a pair that came through the queue as JSON)."""
        ranges = {k: SliceRange(**d[k]) if d.get(k) else None for k in ("a_range", "b_range")}
        return cls(**{**d, **ranges})

    def row(self) -> dict[str, Any]:
        """One flat row (CSV, pandas)."""
        flat: dict[str, Any] = {k: v for k, v in self.to_dict().items()
                                if k not in ("a_range", "b_range", "labels_a", "labels_b")}
        for side, rng in (("a", self.a_range), ("b", self.b_range)):
            flat[f"{side}_slices"] = f"{rng.first}-{rng.last}" if rng else ""
            flat[f"{side}_z_mm"] = (f"{rng.z_first_mm:.1f}-{rng.z_last_mm:.1f}" if rng else "")
        for key in LABEL_KEYS:
            flat[f"{key}_a"] = self.labels_a.get(key, "")
            flat[f"{key}_b"] = self.labels_b.get(key, "")
        return flat


@dataclass(frozen=True)
class _Directed:
    """What querying volume A's slices found in volume B."""

    matched: int  # A's slices matched in B
    sims: tuple[float, ...]
    a_slices: tuple[tuple[int, float], ...]  # (slice, z) of A's matched slices
    b_slices: tuple[tuple[int, float], ...]  # (slice, z) of B's slices they matched


def directed_matches(query_slices: Sequence[tuple[int, float]], hits: Sequence[Sequence[Hit]],
                     slice_min: float) -> dict[str, _Directed]:
    """For each other volume, the query slices whose best hit in it is >= ``slice_min``.

    ``query_slices[i]`` is (slice index, z mm) of the query volume's row i; ``hits[i]`` its
    neighbours (own points already excluded).
    """
    per: dict[str, dict[int, tuple[float, int, float]]] = {}
    for (qs, _qz), row in zip(query_slices, hits, strict=True):
        best: dict[str, Hit] = {}
        for h in row:
            vid = str(h.payload.get("volume_id", ""))
            if vid and (vid not in best or h.score > best[vid].score):
                best[vid] = h
        for vid, h in best.items():
            if h.score >= slice_min:
                z = h.payload.get("z_mm")
                db_slice = int(h.payload.get("slice", -1))
                per.setdefault(vid, {})[int(qs)] = (
                    float(h.score), db_slice, float(z) if z is not None else float(db_slice))
    zq = {int(s): float(z) for s, z in query_slices}
    out: dict[str, _Directed] = {}
    for vid, rows in per.items():
        keys = sorted(rows)
        out[vid] = _Directed(
            len(keys), tuple(rows[s][0] for s in keys),
            tuple((s, zq[s]) for s in keys),
            tuple(sorted((rows[s][1], rows[s][2]) for s in keys)))
    return out


def _range(slices: Sequence[tuple[int, float]]) -> SliceRange | None:
    if not slices:
        return None
    first, last = min(slices), max(slices)
    return SliceRange(first[0], last[0], first[1], last[1])


def combine(a: VolumeInfo, b: VolumeInfo, ab: _Directed | None, ba: _Directed | None
            ) -> DuplicatePair:
    """One pair's score and evidence from both directions (either may be missing)."""
    cov_a = (ab.matched / a.n_slices) if ab and a.n_slices else 0.0
    cov_b = (ba.matched / b.n_slices) if ba and b.n_slices else 0.0
    sims = [*(ab.sims if ab else ()), *(ba.sims if ba else ())]
    sim = float(np.median(sims)) if sims else 0.0
    a_sl = [*(ab.a_slices if ab else ()), *(ba.b_slices if ba else ())]
    b_sl = [*(ab.b_slices if ab else ()), *(ba.a_slices if ba else ())]
    return DuplicatePair(
        a.volume_id, b.volume_id, min(1.0, max(cov_a, cov_b) * sim), min(cov_a, 1.0),
        min(cov_b, 1.0), sim, ab.matched if ab else 0, ba.matched if ba else 0,
        _range(a_sl), _range(b_sl), dict(a.labels), dict(b.labels), a.source, b.source)


def audit_duplicates(
    store: SliceStore,
    coll: str,
    *,
    across: str | None = None,
    k: int = DEFAULT_AUDIT_K,
    slice_min: float = DEFAULT_SLICE_MIN,
    pair_min: float = DEFAULT_PAIR_MIN,
    embedder_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[DuplicatePair]:
    """Every pair of ready volumes of ``coll`` with ``score >= pair_min``, best first.

    One batched k-NN request per volume (its own points excluded), so the cost grows with the
    number of slices, not with the number of pairs. ``across`` (a label key) keeps only pairs
    whose values of that label differ, both present (a leakage audit between splits).
    """
    if across is not None and across not in LABEL_KEYS:
        raise ValueError(f"cannot audit across {across!r}; label keys: {', '.join(LABEL_KEYS)}")
    volumes = {v.volume_id: v for v in list_volumes(store, [coll]) if v.state == COMPLETE}
    directed: dict[tuple[str, str], _Directed] = {}
    must: dict[str, Any] = {"state": COMPLETE}
    if embedder_id:
        must["embedder"] = embedder_id
    for i, vol in enumerate(volumes.values()):
        stored = live_vectors(store, coll, vol.volume_id, embedder_id)
        if stored is not None:
            slices = list(zip(stored.slices.tolist(), stored.z_mm.tolist(), strict=True))
            flt = Filter(must, {"volume_id": vol.volume_id})
            hits = store.search_batch(coll, stored.vectors, k, flt,
                                      payload_keys=AUDIT_PAYLOAD_KEYS)
            hits = [[h for h in row if str(h.payload.get("volume_id")) in volumes
                     and str(h.payload.get("gen", "")) == volumes[
                         str(h.payload.get("volume_id"))].gen] for row in hits]
            for other, d in directed_matches(slices, hits, slice_min).items():
                directed[(vol.volume_id, other)] = d
        if progress is not None:
            progress(i + 1, len(volumes))
    pairs: list[DuplicatePair] = []
    for a, b in sorted({tuple(sorted(key)) for key in directed}):
        va, vb = volumes[a], volumes[b]
        if across is not None:
            la, lb = va.labels.get(across), vb.labels.get(across)
            if not la or not lb or la == lb:
                continue
        pair = combine(va, vb, directed.get((a, b)), directed.get((b, a)))
        if pair.score >= pair_min:
            pairs.append(pair)
    pairs.sort(key=lambda p: (-p.score, p.a, p.b))
    return pairs


@dataclass(frozen=True)
class AuditOptions:
    """What the audit reports, validated on construction (they travel through the queue)."""

    across: str | None = None
    k: int = DEFAULT_AUDIT_K
    slice_min: float = DEFAULT_SLICE_MIN
    pair_min: float = DEFAULT_PAIR_MIN

    def __post_init__(self) -> None:
        if self.across is not None and self.across not in LABEL_KEYS:
            raise ConfigError(f"cannot audit across {self.across!r}; label keys: "
                              f"{', '.join(LABEL_KEYS)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 100:
            raise ConfigError(f"audit k must be between 1 and 100, got {self.k!r}")
        for name in ("slice_min", "pair_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit_collection(store: SliceStore, coll: str, options: AuditOptions,
                     progress: Callable[[int, int], None] | None = None
                     ) -> list[DuplicatePair]:
    """:func:`audit_duplicates` over one model's collection, its vectors of one model version
    only (a collection in the middle of a re-ingest with another version says so)."""
    versions = [str(v) for v in store.facet(coll, "embedder", Filter({"state": COMPLETE}))]
    if len(versions) > 1:
        raise MedirError(f"collection {coll} holds vectors of {len(versions)} model versions "
                         f"({', '.join(sorted(versions))}); finish the re-ingest first")
    return audit_duplicates(store, coll, across=options.across, k=options.k,
                            slice_min=options.slice_min, pair_min=options.pair_min,
                            embedder_id=versions[0] if versions else None, progress=progress)


def similarity_matrix(pairs: Sequence[DuplicatePair]) -> tuple[list[str], NDArray[np.float64]]:
    """The volumes named in ``pairs`` and their symmetric pair-score matrix (for a picture)."""
    ids = sorted({p.a for p in pairs} | {p.b for p in pairs})
    pos = {v: i for i, v in enumerate(ids)}
    m = np.eye(len(ids), dtype=np.float64)
    for p in pairs:
        m[pos[p.a], pos[p.b]] = m[pos[p.b], pos[p.a]] = p.score
    return ids, m
