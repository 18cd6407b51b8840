"""The paper's Table III grid: sampling × aggregation × index × model, scored per label level.

For one (model, index) pair every query slice is searched once (k nearest database slices);
each grid column then only chooses which of those slices vote and with what weight, so the
whole row of the table costs one search. The vote is medir's own (:func:`search.vote.vote`):
each chosen query slice casts one vote per neighbour for the database *case* the neighbour
belongs to (a 4D case's protocols vote together); the case with most votes wins and its labels
are the prediction. ``SW`` (slice-wise) scores every query slice's own nearest neighbour, one
prediction per slice, as the paper's no-aggregation baseline.

Leave-one-out (no train/test split): each query case searches the index of all cases and its
own slices are removed from its neighbour lists (it asks for k + its own slice count, so exact
search stays exact).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from benchmarks.cache import CacheEntry, EmbeddingCache, SliceEmbedder, build_cache, cache_summary
from benchmarks.datasets import LABEL_ORDERS, LEAVE_ONE_OUT, Case, Dataset
from benchmarks.indexes import make_index
from benchmarks.methods import parse_method
from benchmarks.metrics import LevelMetrics, evaluate_levels
from medir.errors import ConfigError
from search.sampling import DEFAULT_SEED, Sampling, Weighting
from search.steps import choose_slices
from search.store import Hit
from search.vote import vote

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PAPER_CONFIG = CONFIG_DIR / "paper.json"
LEVELS = ("modality", "region", "organ")


# ---- grid columns ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One column of Table III: a method of the benchmarks' grammar (:mod:`benchmarks.methods`:
    which slices of a query vote, with what weight, or each on its own) and where the report
    puts it."""

    name: str  # the method, as reports show it: random:5, every-mm:7, all, W, SW
    group: str  # random | every-mm | every-n | all | W | SW
    column: str  # the column heading under its group (5, 7, all, W, SW)
    sampling: Sampling
    weighting: Weighting
    slice_wise: bool = False


GROUP_TITLES = {"random": "# Random Samples", "every-mm": "# Sampled every x mm",
                "every-n": "# every n slices", "all": "all", "W": "W", "SW": "SW"}


def parse_variant(spec: str) -> Variant:
    """A grid column: a method (:data:`benchmarks.methods.GRAMMAR`) without a re-ranker or
    ``+domain`` (the columns share one search per model and index), e.g. ``random:5``,
    ``every-mm:7``, ``every-n:3``, ``all``, ``W`` (all slices, Gaussian weights),
    ``W:every-mm:7``, ``SW`` (slice-wise)."""
    m = parse_method(spec)
    if m.rerank != "none" or m.domain:
        raise ConfigError(f"bad grid column {spec!r}: +maxsim, +zorder and +domain are methods "
                          "of medir bench quality; the grid's columns are votes over one "
                          "shared search")
    s = m.sampling
    if m.slice_wise or m.weighting.kind != "none":
        group = "SW" if m.slice_wise else "W"
        return Variant(m.name, group, m.name, s, m.weighting, m.slice_wise)
    column = "all" if s.kind == "all" else f"{s.value:g}"
    if s.kind == "random" and s.seed != DEFAULT_SEED:
        column += f":{s.seed}"
    if s.max_slices:
        column += f",max={s.max_slices}"
    return Variant(m.name, s.kind, column, s, m.weighting)


@dataclass
class GridConfig:
    """The declarative part of a run (from ``configs/paper.json`` and CLI overrides)."""

    k: int = 1
    indexes: list[str] = field(default_factory=lambda: ["hnsw", "lsh"])
    variants: list[str] = field(default_factory=lambda: ["all", "W", "SW"])
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    intensity: str = "auto"

    @classmethod
    def load(cls, path: Path | None = None) -> GridConfig:
        p = Path(path) if path is not None else PAPER_CONFIG
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{p}: cannot read the grid config ({exc})") from None
        known = {"k", "indexes", "variants", "levels", "intensity"}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError("k must be at least 1")
        for v in self.variants:
            parse_variant(v)
        for spec in self.indexes:
            make_index(spec, 8)
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ConfigError(f"unknown level(s) {', '.join(bad)}; use {', '.join(LEVELS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "indexes": list(self.indexes), "variants": list(self.variants),
                "levels": list(self.levels), "intensity": self.intensity}


# ---- embedded sets --------------------------------------------------------------------------
@dataclass
class Part:
    """One 3D volume of a case inside a stacked set: rows ``start:start+n``."""

    case: int
    volume_id: str
    start: int
    n: int
    z_spacing: float


@dataclass
class SliceSet:
    """The slice vectors of a list of cases, stacked, with where every row came from."""

    cases: list[Case]
    parts: list[Part]
    vectors: NDArray[np.float32]
    row_case: NDArray[np.int64]
    row_slice: NDArray[np.int64]

    def case_rows(self, c: int) -> NDArray[np.int64]:
        return np.flatnonzero(self.row_case == c).astype(np.int64)


def stack(cases: Sequence[Case], entries: dict[str, list[CacheEntry]],
          cache: EmbeddingCache) -> SliceSet:
    """Load every case's cached volumes into one :class:`SliceSet`."""
    parts: list[Part] = []
    blocks: list[np.ndarray] = []
    row_case: list[np.ndarray] = []
    row_slice: list[np.ndarray] = []
    start = 0
    for ci, case in enumerate(cases):
        for e in entries[str(case.path)]:
            cv = cache.load(e)
            parts.append(Part(ci, e.volume_id, start, e.n_slices, e.z_spacing))
            blocks.append(cv.vectors)
            row_case.append(np.full(e.n_slices, ci, np.int64))
            row_slice.append(np.arange(e.n_slices, dtype=np.int64))
            start += e.n_slices
    dim = blocks[0].shape[1] if blocks else 0
    return SliceSet(
        list(cases), parts,
        np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32),
        np.concatenate(row_case) if row_case else np.zeros(0, np.int64),
        np.concatenate(row_slice) if row_slice else np.zeros(0, np.int64),
    )


# ---- neighbours -----------------------------------------------------------------------------
@dataclass
class Neighbours:
    """Each query row's k nearest database rows (−1 = none), own case removed in LOO."""

    ids: NDArray[np.int64]
    scores: NDArray[np.float32]
    build_seconds: float
    search_seconds: float


def neighbours(index_spec: str, db: SliceSet, queries: SliceSet, k: int,
               leave_one_out: bool) -> tuple[Neighbours, str]:
    """Build the index on ``db`` and search every query row (its spec string is returned)."""
    index = make_index(index_spec, int(db.vectors.shape[1]))
    try:
        index.build(db.vectors)
        nq = queries.vectors.shape[0]
        ids = np.full((nq, k), -1, np.int64)
        scores = np.full((nq, k), -np.inf, np.float32)
        t0 = time.perf_counter()
        if not leave_one_out:
            res = index.search(queries.vectors, k)
            ids[:, :], scores[:, :] = res.ids, res.scores
        else:
            for c in range(len(queries.cases)):
                rows = queries.case_rows(c)
                if rows.size == 0:
                    continue
                own = int(np.count_nonzero(db.row_case == c))
                res = index.search(queries.vectors[rows], min(k + own, db.vectors.shape[0]))
                for r, hid, hsc in zip(rows, res.ids, res.scores, strict=True):
                    keep = (hid >= 0) & (db.row_case[np.where(hid >= 0, hid, 0)] != c)
                    kid, ksc = hid[keep][:k], hsc[keep][:k]
                    ids[r, : kid.size], scores[r, : ksc.size] = kid, ksc
        search_s = time.perf_counter() - t0
        return Neighbours(ids, scores, index.build_seconds, search_s), index.spec
    finally:
        index.close()


# ---- predictions ----------------------------------------------------------------------------
@dataclass
class CellResult:
    """One cell row of the grid: a (model, index, variant) with its metrics."""

    model: str
    index: str
    variant: Variant
    n_queries: int
    metrics: dict[str, LevelMetrics]
    predictions: list[tuple[str, str]]  # (query case, predicted database case), votes only
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "index": self.index, "variant": self.variant.name,
                "group": self.variant.group, "column": self.variant.column,
                "n_queries": self.n_queries, "seconds": round(self.seconds, 4),
                "metrics": {k: m.to_dict() for k, m in self.metrics.items()}}


def _row_hits(nb: Neighbours, db: SliceSet) -> list[list[Hit]]:
    out: list[list[Hit]] = []
    for ids, scores in zip(nb.ids, nb.scores, strict=True):
        out.append([
            Hit(str(i), float(s), {"volume_id": db.cases[db.row_case[i]].case_id,
                                   "slice": int(db.row_slice[i])})
            for i, s in zip(ids, scores, strict=True) if i >= 0
        ])
    return out


def predict(variant: Variant, nb: Neighbours, hits: list[list[Hit]], db: SliceSet,
            queries: SliceSet) -> tuple[list[dict[str, str]], list[dict[str, str]],
                                        list[tuple[str, str]]]:
    """Truth and predicted labels per evaluated item (a case, or a slice for SW).

    Every slice of every query volume was searched once; the variant chooses which of them
    take part and their weights by medir's own query step (:func:`search.steps.choose_slices`),
    and a case's chosen slices of all its volumes vote together (:func:`search.vote.vote`)."""
    db_index = {c.case_id: i for i, c in enumerate(db.cases)}
    truth: list[dict[str, str]] = []
    pred: list[dict[str, str]] = []
    pairs: list[tuple[str, str]] = []
    by_case: dict[int, list[Part]] = {}
    for p in queries.parts:
        by_case.setdefault(p.case, []).append(p)
    for ci, case in enumerate(queries.cases):
        q_slices: list[int] = []
        weights: list[float] = []
        rows: list[int] = []
        for p in by_case.get(ci, []):
            chosen = choose_slices(variant.sampling, variant.weighting, p.n, p.z_spacing)
            q_slices += chosen.slices
            weights += chosen.weights.tolist()
            rows += [p.start + r for r in chosen.rows]
        if variant.slice_wise:  # each chosen slice's own nearest case, one prediction each
            for r in rows:
                top = int(nb.ids[r, 0])
                truth.append(case.labels)
                pred.append(db.cases[db.row_case[top]].labels if top >= 0 else {})
            continue
        result = vote(q_slices, weights, [hits[r] for r in rows], top=1)
        winner = result.ranking[0].volume_id if result.ranking else ""
        truth.append(case.labels)
        pred.append(db.cases[db_index[winner]].labels if winner else {})
        pairs.append((case.case_id, winner))
    return truth, pred, pairs


# ---- the whole grid -------------------------------------------------------------------------
EmbedderFactory = Callable[[str], SliceEmbedder]


@dataclass
class PaperRun:
    """Everything a report needs."""

    dataset: dict[str, Any]
    config: dict[str, Any]
    models: list[dict[str, Any]] = field(default_factory=list)
    searches: list[dict[str, Any]] = field(default_factory=list)
    cells: list[CellResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_grid(
    dataset: Dataset,
    models: Sequence[str],
    config: GridConfig,
    cache_root: Path,
    embedder_factory: EmbedderFactory,
    *,
    progress: bool = True,
) -> PaperRun:
    """Embed (or reuse) every case per model, then score every (index, variant) cell."""
    config.validate()
    variants = [parse_variant(v) for v in config.variants]
    loo = dataset.protocol == LEAVE_ONE_OUT
    run = PaperRun(dataset.summary(), config.to_dict())
    t_all = time.perf_counter()
    files = sorted({str(c.path) for c in dataset.cases})
    for model in models:
        embedder = embedder_factory(model)
        cache = EmbeddingCache(cache_root, model, config.intensity)
        t0 = time.perf_counter()
        entries = build_cache(cache, [Path(f) for f in files], embedder, progress=progress)
        embed_wall = time.perf_counter() - t0
        db = stack(dataset.database, entries, cache)
        queries = db if loo else stack(dataset.queries, entries, cache)
        used = [e for f in files for e in entries[f]]
        run.models.append({"model": model, "embedder_id": embedder.embedder_id,
                           "dim": embedder.dim, "cache": str(cache.dir),
                           "wall_seconds": round(embed_wall, 3), **cache_summary(used),
                           "db_slices": int(db.vectors.shape[0]),
                           "query_slices": int(queries.vectors.shape[0])})
        for spec in config.indexes:
            nb, index_name = neighbours(spec, db, queries, config.k, loo)
            hits = _row_hits(nb, db)
            run.searches.append({"model": model, "index": index_name,
                                 "build_seconds": round(nb.build_seconds, 4),
                                 "search_seconds": round(nb.search_seconds, 4),
                                 "query_slices": int(queries.vectors.shape[0]),
                                 "db_slices": int(db.vectors.shape[0])})
            bar = tqdm(variants, desc=f"{model} {index_name}", unit="cell",
                       disable=not progress, dynamic_ncols=True, leave=False)
            for variant in bar:
                t1 = time.perf_counter()
                truth, pred, pairs = predict(variant, nb, hits, db, queries)
                metrics = evaluate_levels(truth, pred, config.levels,
                                          {k: v for k, v in LABEL_ORDERS.items()})
                run.cells.append(CellResult(model, index_name, variant, len(truth), metrics,
                                            pairs, time.perf_counter() - t1))
    run.timings["total_seconds"] = round(time.perf_counter() - t_all, 3)
    return run
