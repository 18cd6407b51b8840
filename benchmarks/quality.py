"""``medir bench quality``: leave-one-case-out and the perturbation suite, per model × method.

Protocol
--------
- **Database**: every 3D volume of the collection (a 4D file gives one per protocol), its
  slices taken every ``db_stride_mm`` (at most ``db_max_slices``), embedded under a named
  preprocessing (:class:`benchmarks.quality_embed.Prep`) and cached by content.
- **Leave-one-case-out (LOCO)**: each stored volume queries with its own stored vectors; every
  volume of its case (the manifest's ``case`` column: a 4D file, a crop or a second series of
  one scan) is removed from the database first. The top volume's labels are the prediction,
  scored per level (modality, region, organ, and ``class`` = modality/region).
- **Perturbations** (:mod:`benchmarks.perturb`): each volume is changed, then queries the whole
  database with ``query_max_slices`` evenly spaced slices. ``self@1``: the top volume belongs
  to the query's own case; ``class@1``: with its own case removed, the top volume has the
  query's modality and region.

Methods are strings of the benchmarks' one grammar (:mod:`benchmarks.methods`): the paper's
vote columns ``all``, ``every-mm:X``, ``W`` (all slices, Gaussian weights), ``SW``
(slice-wise: each slice's nearest volume scored on its own), Gaussian weights over a sampling
(``W:every-mm:7``, medir's query), any vote followed by a re-ranker (``W+maxsim``,
``W+zorder``, ``all+zorder``) and ``+domain``. A query runs the product's own query steps
(:mod:`search.steps`: the chosen slices and their weights, the vote, the re-ranking; the
answer's evidence of :func:`search.calibration.vote_evidence`) over an exact in-memory cosine
index of the database (:class:`Database`, k neighbours per slice, the re-rankers over the
vote's top ``rerank_top`` volumes), so a change to medir's query changes this benchmark.
Ranking never reads labels or file names: the hits carry them only for the answer's evidence
and the scoring, after ranking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from benchmarks.cache import ArrayCache, SliceEmbedder
from benchmarks.datasets import Dataset
from benchmarks.methods import Method, parse_method
from benchmarks.perturb import NamedPerturbation
from benchmarks.quality_embed import Prep, embed_slices, stride_slices
from benchmarks.quality_trust import leave_one_class_out, self_similarity
from ingest.intensity_domain import intensity_domain
from ingest.reader import open_volume
from ingest.volume import Volume
from medir.errors import ConfigError
from search.calibration import vote_evidence
from search.confidence import Evidence
from search.domain import opposite
from search.steps import choose_slices, knn_vote, rerank_ranking
from search.store import Hit

LEVELS = ("modality", "region", "organ", "class")

DEFAULT_METHODS = ("all", "every-mm:7", "W", "SW", "W+maxsim", "W+zorder")


# ---- the stored side ------------------------------------------------------------------------
@dataclass
class StoredVolume:
    volume_id: str
    study: str
    labels: dict[str, str]
    slices: NDArray[np.int64]
    z_mm: NDArray[np.float64]
    z_spacing: float
    vectors: NDArray[np.float32]
    domain: str = ""  # intensity domain from the voxels (never from labels)


@dataclass
class Database:
    """The stored side in memory: every volume's slice vectors stacked in one matrix, searched
    exactly (cosine on unit vectors) with rows left out by a mask, the benchmark's stand-in
    for the store's filtered k-NN request."""

    volumes: list[StoredVolume]
    matrix: NDArray[np.float32] = field(init=False)
    row_volume: NDArray[np.int64] = field(init=False)
    row_slice: NDArray[np.int64] = field(init=False)
    _payloads: list[dict[str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        blocks = [v.vectors for v in self.volumes]
        self.matrix = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
        self.row_volume = np.concatenate([np.full(v.vectors.shape[0], i, np.int64)
                                          for i, v in enumerate(self.volumes)])
        self.row_slice = np.concatenate([np.asarray(v.slices, np.int64) for v in self.volumes])
        # what a hit carries, as the store's payload would: the volume (its position here)
        # and, for the answer's evidence after ranking, its labels
        self._payloads = [{**v.labels, "volume_id": str(i)} for i, v in enumerate(self.volumes)]

    def study_mask(self, study: str) -> NDArray[np.bool_]:
        """Rows of the volumes of ``study``."""
        studies = np.array([v.study for v in self.volumes])
        return np.asarray(studies[self.row_volume] == study)

    def domain_mask(self, domain: str) -> NDArray[np.bool_]:
        """Rows of the volumes of the other intensity domain than ``domain`` (what a query of
        that domain leaves out, search.domain)."""
        other = opposite(domain)
        return np.array([v.domain == other for v in self.volumes])[self.row_volume]

    def exact_hits(self, queries: NDArray[np.float32], k: int,
                   exclude: NDArray[np.bool_] | None) -> list[list[Hit]]:
        """Each query row's ``k`` nearest rows (exact, ties in row order), ``exclude``d rows
        left out."""
        sims = queries @ self.matrix.T
        if exclude is not None:
            sims[:, exclude] = -np.inf
        kk = min(k, int(np.count_nonzero(np.isfinite(sims[0])))) if sims.size else 0
        top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        return [[Hit(str(j), float(sims[i, j]), {**self._payloads[int(self.row_volume[j])],
                                                   "slice": int(self.row_slice[j])})
                 for j in row] for i, row in enumerate(top)]

    def candidates(self, ids: list[str]) -> list[tuple[NDArray[np.float32],
                                                         NDArray[np.float64]]]:
        """The re-rankers' candidates: the stored vectors and z of volumes ``ids``."""
        return [(self.volumes[int(i)].vectors, self.volumes[int(i)].z_mm) for i in ids]


def _label_class(labels: dict[str, str]) -> str:
    return f"{labels.get('modality', '')}/{labels.get('region', '')}"


def read_volumes(dataset: Dataset) -> list[tuple[Volume, str, dict[str, str]]]:
    """Every 3D volume of the collection with its study and labels (labels kept apart)."""
    out = []
    for case in dataset.cases:
        vf = open_volume(case.path)
        for k in range(vf.n_volumes):
            out.append((vf.read(k if vf.is_4d else None), case.study_id, dict(case.labels)))
    return out


def build_database(volumes: Sequence[tuple[Volume, str, dict[str, str]]],
                   embedder: SliceEmbedder, prep: Prep, cache: ArrayCache,
                   stride_mm: float, max_slices: int | None, progress: bool = True) -> Database:
    stored = []
    for vol, study, labels in tqdm(volumes, desc=f"db {prep}", disable=not progress,
                                   leave=False):
        sl = stride_slices(vol.n_slices, vol.spacing[2], stride_mm, max_slices)
        vec = embed_slices(vol, sl, embedder, prep, cache)
        stored.append(StoredVolume(vol.volume_id, study, labels, sl,
                                   sl.astype(np.float64) * vol.spacing[2], vol.spacing[2], vec,
                                   intensity_domain(vol.data).domain))
    return Database(stored)


# ---- one query ------------------------------------------------------------------------------
@dataclass
class QueryOutcome:
    ranking: list[int]  # database volume positions, best first
    slice_top: list[int]  # SW: each query slice's nearest volume
    seconds: float
    #: the answer's evidence (search.confidence), for vote methods
    evidence: Evidence | None = None


def run_query(db: Database, q_vectors: NDArray[np.float32], q_slices: NDArray[np.int64],
              n_slices: int, z_spacing: float, method: Method,
              exclude: NDArray[np.bool_] | None, k: int, rerank_top: int,
              q_domain: str = "") -> QueryOutcome:
    """The ranking of database volumes for one query by medir's query steps
    (:mod:`search.steps`) over the exact in-memory index: the method's slices of the query
    (``q_vectors[i]`` is slice ``q_slices[i]`` of ``n_slices``) and their weights, the vote,
    the re-ranking; a ``+domain`` method leaves out the volumes of the other domain than
    ``q_domain``."""
    t0 = time.perf_counter()
    if method.domain and q_domain:
        other = db.domain_mask(q_domain)
        exclude = other if exclude is None else (exclude | other)
    chosen = choose_slices(method.sampling, method.weighting, n_slices, z_spacing, q_slices)
    result, _ = knn_vote(q_vectors, chosen, lambda rows: db.exact_hits(rows, k, exclude),
                         top=None)
    slice_top = [int(m.volume_id) for m in result.slice_predictions]
    if method.slice_wise:
        return QueryOutcome([], slice_top, time.perf_counter() - t0)
    if method.rerank != "none" and result.ranking:
        result.ranking = rerank_ranking(method.rerank, q_vectors[chosen.rows],
                                        chosen.z_mm(z_spacing), chosen.weights,
                                        result.ranking, rerank_top, db.candidates)
    seconds = time.perf_counter() - t0
    return QueryOutcome([int(r.volume_id) for r in result.ranking], slice_top, seconds,
                        vote_evidence(result))


# ---- scoring --------------------------------------------------------------------------------
def _level_value(labels: dict[str, str], level: str) -> str:
    return _label_class(labels) if level == "class" else labels.get(level, "")


@dataclass
class Tally:
    """Correct / total per level and per class of the truth."""

    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    confusion: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def add(self, truth: dict[str, str], pred: dict[str, str]) -> None:
        for level in LEVELS:
            t = _level_value(truth, level)
            if not t or t == "/":
                continue
            p = _level_value(pred, level)
            ok = int(t == p)
            self.correct[level] = self.correct.get(level, 0) + ok
            self.total[level] = self.total.get(level, 0) + 1
            cls = self.per_class.setdefault(level, {}).setdefault(t, [0, 0])
            cls[0] += ok
            cls[1] += 1
            row = self.confusion.setdefault(level, {}).setdefault(t, {})
            row[p or "-"] = row.get(p or "-", 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": {lv: self.correct[lv] / self.total[lv] for lv in self.total},
                "correct": dict(self.correct), "n": dict(self.total),
                "per_class": {lv: {c: {"correct": v[0], "n": v[1]} for c, v in d.items()}
                              for lv, d in self.per_class.items()},
                "confusion": self.confusion}


@dataclass
class MethodResult:
    prep: str
    method: str
    loco: Tally = field(default_factory=Tally)
    loco_seconds: list[float] = field(default_factory=list)
    #: query volume id → the top volume's id (vote methods), to compare methods query by query
    loco_top: dict[str, str] = field(default_factory=dict)
    perturb: dict[str, dict[str, int]] = field(default_factory=dict)
    #: each answer's confidence and whether it was right (LOCO and leave-one-class-out)
    trust: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from benchmarks.quality_trust import summary

        secs = np.asarray(self.loco_seconds) if self.loco_seconds else np.zeros(1)
        return {"prep": self.prep, "method": self.method, "loco": self.loco.to_dict(),
                "loco_top": dict(self.loco_top),
                "trust": summary(self.trust), "answers": list(self.trust),
                "query_ms": {"mean": round(float(secs.mean()) * 1e3, 3),
                             "p95": round(float(np.percentile(secs, 95)) * 1e3, 3)},
                "perturb": {p: {**v, "self_at_1": v["self"] / v["n"] if v["n"] else None,
                                "class_at_1": v["class"] / v["n"] if v["n"] else None}
                            for p, v in self.perturb.items()}}


def _prediction(db: Database, out: QueryOutcome, method: Method) -> list[dict[str, str]]:
    """Predicted labels: the top volume's, or (SW) each slice's nearest volume's."""
    if method.slice_wise:
        return [db.volumes[i].labels for i in out.slice_top]
    return [db.volumes[out.ranking[0]].labels] if out.ranking else [{}]


def loco(db: Database, methods: Sequence[Method], results: dict[str, MethodResult], k: int,
         rerank_top: int, self_sims: Sequence[float] | None = None) -> None:
    """Leave-one-case-out with the stored vectors of each volume as the query; each answer's
    confidence is recorded against the calibration of the database less the query's case
    (``self_sims``: :func:`benchmarks.quality_trust.self_similarity`)."""
    from benchmarks.quality_trust import calibration_without, record

    for v in db.volumes:
        exclude = db.study_mask(v.study)
        if bool(exclude.all()):
            continue
        gone = np.array([u.study == v.study for u in db.volumes])
        cal = calibration_without(db, self_sims, gone) if self_sims is not None else None
        for m in methods:
            out = run_query(db, v.vectors, v.slices, int(v.slices[-1]) + 1, v.z_spacing, m,
                            exclude, k, rerank_top, v.domain)
            if out.evidence is not None and out.ranking and not m.slice_wise:
                right = _label_class(db.volumes[out.ranking[0]].labels) == _label_class(v.labels)
                record(results[m.name], "loco", v.volume_id, right, out.evidence, cal)
            for pred in _prediction(db, out, m):
                results[m.name].loco.add(v.labels, pred)
            results[m.name].loco_seconds.append(out.seconds)
            if not m.slice_wise and out.ranking:
                results[m.name].loco_top[v.volume_id] = db.volumes[out.ranking[0]].volume_id


def perturbations(db: Database, volumes: Sequence[tuple[Volume, str, dict[str, str]]],
                  suite: Sequence[NamedPerturbation], methods: Sequence[Method],
                  results: dict[str, MethodResult], embedder: SliceEmbedder, prep: Prep,
                  cache: ArrayCache, *, stride_mm: float, max_slices: int, k: int,
                  rerank_top: int, with_original: bool = True, progress: bool = True) -> None:
    """Each volume, changed by each perturbation, queries the whole database."""
    named: list[tuple[str, Callable[[Volume], Volume | None]]] = []
    if with_original:
        named.append(("none", lambda v: v))
    named += [(p.name, p.apply) for p in suite]
    for vol, study, labels in tqdm(volumes, desc=f"perturb {prep}", disable=not progress,
                                   leave=False):
        own = db.study_mask(study)
        for pname, fn in named:
            pv = fn(vol)
            if pv is None:
                continue
            sl = stride_slices(pv.n_slices, pv.spacing[2], stride_mm, max_slices)
            qv = embed_slices(pv, sl, embedder, prep, cache)
            qd = intensity_domain(pv.data).domain
            for m in methods:
                tally = results[m.name].perturb.setdefault(pname, {"self": 0, "class": 0,
                                                                   "n": 0})
                full = run_query(db, qv, sl, pv.n_slices, pv.spacing[2], m, None, k,
                                 rerank_top, qd)
                loo = run_query(db, qv, sl, pv.n_slices, pv.spacing[2], m, own, k,
                                rerank_top, qd) if not bool(own.all()) else None
                if m.slice_wise:
                    selfs = [db.volumes[i].study == study for i in full.slice_top]
                    classes = [_label_class(db.volumes[i].labels) == _label_class(labels)
                               for i in (loo.slice_top if loo else [])]
                    tally["self"] += int(np.mean(selfs) >= 0.5) if selfs else 0
                    tally["class"] += int(np.mean(classes) >= 0.5) if classes else 0
                else:
                    tally["self"] += int(bool(full.ranking)
                                         and db.volumes[full.ranking[0]].study == study)
                    tally["class"] += int(loo is not None and bool(loo.ranking) and _label_class(
                        db.volumes[loo.ranking[0]].labels) == _label_class(labels))
                tally["n"] += 1


# ---- the whole run --------------------------------------------------------------------------
@dataclass
class QualityConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    preps: list[str] = field(default_factory=lambda: ["auto"])
    perturbations: list[str] = field(default_factory=list)  # names; empty = the whole suite
    k: int = 1
    rerank_top: int = 5
    db_stride_mm: float = 5.0
    db_max_slices: int = 40
    query_stride_mm: float = 5.0
    query_max_slices: int = 4
    run_perturbations: bool = True
    store_timing: bool = False  # also time queries through an embedded store (quality_store)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class QualityRun:
    dataset: dict[str, Any]
    config: dict[str, Any]
    models: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def run_quality(dataset: Dataset, models: Sequence[str], config: QualityConfig,
                cache_root: Path, embedder_factory: Callable[[str], SliceEmbedder],
                suite: Sequence[NamedPerturbation], *, progress: bool = True) -> QualityRun:
    """LOCO and the perturbation suite for every model × preprocessing × method."""
    methods = [parse_method(m) for m in config.methods]
    preps = [Prep.parse(p) for p in config.preps]
    if config.k < 1 or config.rerank_top < 1:
        raise ConfigError("k and rerank_top must be at least 1")
    t0 = time.perf_counter()
    run = QualityRun({"name": dataset.name, "root": str(dataset.root),
                      "n_files": len(dataset.cases),
                      "n_cases": len({c.study_id for c in dataset.cases})}, config.to_dict())
    volumes = read_volumes(dataset)
    run.dataset["n_volumes"] = len(volumes)
    for model in models:
        embedder = embedder_factory(model)
        cache = ArrayCache(cache_root, model)
        for prep in preps:
            t1 = time.perf_counter()
            db = build_database(volumes, embedder, prep, cache, config.db_stride_mm,
                                config.db_max_slices, progress)
            results = {m.name: MethodResult(str(prep), m.name) for m in methods}
            sims = self_similarity(db)
            loco(db, methods, results, config.k, config.rerank_top, sims)
            leave_one_class_out(db, methods, results, config.k, config.rerank_top, sims)
            if config.run_perturbations:
                perturbations(db, volumes, suite, methods, results, embedder, prep, cache,
                              stride_mm=config.query_stride_mm,
                              max_slices=config.query_max_slices, k=config.k,
                              rerank_top=config.rerank_top, progress=progress)
            entry: dict[str, Any] = {
                "model": model, "embedder_id": embedder.embedder_id, "prep": str(prep),
                "db_slices": int(db.matrix.shape[0]),
                "seconds": round(time.perf_counter() - t1, 2),
                "cache_hits": cache.hits, "cache_misses": cache.misses}
            if config.store_timing:
                from benchmarks.quality_store import store_query_times

                entry["store_query_ms"] = store_query_times(
                    db, embedder, rerank_top=config.rerank_top)  # type: ignore[arg-type]
            run.models.append(entry)
            for r in results.values():
                run.results.append({"model": model, **r.to_dict()})
    run.seconds = round(time.perf_counter() - t0, 2)
    return run
