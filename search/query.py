"""The query steps over the store: options, collection checks, stored-vector reuse, then
chosen slices → one batch k-NN request → vote → optional re-rank.

:func:`search_vectors` runs the steps on vectors already computed (the benchmarks call it);
:func:`search_indexed` queries with an indexed volume, reusing its stored slice vectors;
:func:`stored_vectors` finds the stored vectors of a volume whose content is indexed. Opening
a file, a DICOM folder or a PACS series and embedding it is the application's work
(:mod:`runner.query_service`). The query volume itself is excluded from the results: by its
volume id when querying by id, by content when querying with a file (a file whose content
equals an indexed volume is that volume, under every id it is indexed as).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from medir.config import (
    DEFAULT_K,
    DEFAULT_SIGMA,
    DEFAULT_TOP,
    DEFAULT_WEIGHTING,
    SearchSettings,
    check_intensity,
    vector_space_id,
)
from medir.errors import ConfigError, EmptyStore, MedirError, ModelMismatch
from search.calibration import answer_dict, collection_calibration, judge_vote
from search.domain import opposite
from search.feedback import FEEDBACK_DEPTH, check_marks, feedback_ranking
from search.live import check_layout, live_records, live_vectors
from search.rerank import check_rerank, rerank_order, rerank_scores
from search.sampling import Sampling, Weighting
from search.store import (
    HIT_PAYLOAD_KEYS,
    LABEL_KEYS,
    READY,
    Filter,
    Record,
    SliceStore,
    collection_name,
)
from search.vote import SliceMatch, VolumeResult, VoteResult, vote

MAX_K = 1000  # neighbours per slice; the vote needs few, a large k only dilutes it
MAX_TOP = 10_000  # volumes in the ranking


class ModelId(Protocol):
    """What a query needs to know of the model that made the vectors (an
    :class:`ingest.embedders.base.Embedder` is one): its name, its version id, its dimension."""

    @property
    def name(self) -> str: ...

    @property
    def embedder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...


@dataclass
class QueryOptions:
    """A query's options, validated on construction (before any file is read or embedded).

    The sampling and weighting specs are strings (they travel through the CLI, the queue and
    JSON), parsed once here: :meth:`parsed` hands the parsed objects to every step of the query.
    The defaults are the library's (all slices); the configured ones (``MEDIR_SEARCH__*``) are
    applied by :func:`configured_options`.
    """

    sampling: str = "all"
    weighting: str = DEFAULT_WEIGHTING
    k: int = DEFAULT_K
    top: int = DEFAULT_TOP
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exact: bool = False
    #: The preprocessing spec ``<intensity>[+fov:<mm>]`` (ingest.preprocess.Preprocessing).
    intensity: str = "auto"
    # Case ids whose volumes are left out of the results (leave-one-case-out evaluation).
    exclude_cases: Sequence[str] = ()

    #: Stage 2 over the vote's top ``rerank_top`` volumes: none | maxsim | zorder (search.rerank).
    rerank: str = "none"
    rerank_top: int = 10
    #: At most this many query slices, evenly spaced among the sampling's (0: no cap): the
    #: model's cost of a query is one forward pass per slice.
    max_slices: int = 0
    #: Relevance feedback (search.feedback): indexed volume ids marked "more like these" and
    #: "not like those"; their own votes re-rank the query's, and they are left out.
    like: Sequence[str] = ()
    unlike: Sequence[str] = ()
    #: Search volumes of every intensity domain; by default a query whose voxels are CT in HU
    #: (ingest.intensity_domain) only meets stored volumes that are not non-HU, and vice versa.
    cross_modality: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One :class:`ConfigError` line for the first bad option."""
        for name, value, hi in (("k", self.k, MAX_K), ("top", self.top, MAX_TOP)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if not 1 <= int(value) <= hi:
                raise ConfigError(f"{name} must be between 1 and {hi}, got {value}")
        if not isinstance(self.sampling, str) or not isinstance(self.weighting, str):
            raise ConfigError("sampling and weighting must be strings")
        self.parsed()
        check_rerank(self.rerank)
        for name, marks in (("like", self.like), ("unlike", self.unlike)):
            if isinstance(marks, str) or not all(isinstance(v, str) and v for v in marks):
                raise ConfigError(f"{name} takes a list of volume ids, got {marks!r}")
        check_marks(self.like, self.unlike)
        if not isinstance(self.cross_modality, bool):
            raise ConfigError(f"cross_modality must be true or false, got {self.cross_modality!r}")
        if isinstance(self.rerank_top, bool) or not isinstance(self.rerank_top, int) \
                or not 1 <= self.rerank_top <= MAX_TOP:
            raise ConfigError(f"rerank_top must be between 1 and {MAX_TOP}, got {self.rerank_top}")
        if isinstance(self.max_slices, bool) or not isinstance(self.max_slices, int | np.integer) \
                or self.max_slices < 0:
            raise ConfigError(f"max_slices must be an integer >= 0 (0: no cap), got "
                              f"{self.max_slices!r}")
        check_intensity(self.intensity)  # <intensity>[+fov:<mm>]
        if not isinstance(self.filters, Mapping):
            raise ConfigError("filters must map a label to its values")
        for key, values in self.filters.items():
            if key not in LABEL_KEYS:
                raise ConfigError(f"cannot filter on {key!r}; label filters: "
                                  f"{', '.join(LABEL_KEYS)}")
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"filter {key!r} takes a list of strings, got {values!r}")

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON values (the queue's message, a saved query); the inverse
        of :meth:`from_dict`."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["filters"] = {k: list(v) for k, v in dict(self.filters).items()}
        for name in ("exclude_cases", "like", "unlike"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueryOptions:
        """Options from :meth:`to_dict`'s form, validated (a :class:`ConfigError` line)."""
        filters = data.get("filters") or {}
        if not isinstance(filters, Mapping):
            raise ConfigError("filters must map a label to its values")
        return cls(**{**data, "filters": {k: list(v) for k, v in filters.items()}})

    def parsed(self) -> tuple[Sampling, Weighting]:
        """The parsed sampling (capped at ``max_slices``) and weighting (parsed on
        construction; again only if a spec was changed since)."""
        specs = (self.sampling, self.weighting, self.max_slices)
        cached = self.__dict__.get("_parsed")
        if cached is None or cached[0] != specs:
            cached = (specs, (Sampling.parse(self.sampling).capped(int(self.max_slices)),
                              Weighting.parse(self.weighting)))
            self.__dict__["_parsed"] = cached
        return cached[1]


def configured_options(search: SearchSettings, *, intensity: str, sampling: str | None = None,
                       weighting: str | None = None, k: int | None = None,
                       top: int | None = None, max_slices: int | None = None,
                       **rest: Any) -> QueryOptions:
    """Query options from the settings' query defaults (``search``, ``MEDIR_SEARCH__*``) with
    what the user gave (None: the setting). A ``gaussian`` weighting without ``:SIGMA`` takes
    the settings' ``sigma``."""
    return QueryOptions(sampling=sampling or search.sampling,
                        weighting=weighting or default_weighting(search),
                        k=search.k if k is None else k, top=search.top if top is None else top,
                        max_slices=search.max_slices if max_slices is None else max_slices,
                        intensity=intensity, **rest)


def default_weighting(search: SearchSettings) -> str:
    """The configured weighting spec, its σ from ``search.sigma`` when the spec has none."""
    w = Weighting.parse(search.weighting, default_sigma=search.sigma)
    return search.weighting if w.kind == "none" or w.sigma == DEFAULT_SIGMA else str(w)


@dataclass
class SearchResult:
    query_id: str
    query_source: str
    model: str
    n_slices: int
    chosen_slices: list[int]
    weights: list[float]
    options: dict[str, Any]
    ranking: list[VolumeResult]
    slice_predictions: list[SliceMatch]
    timings: dict[str, float]
    #: "embedded" (the model ran on the query) or "stored" (the query's content is indexed and
    #: its stored slice vectors were used).
    vectors: str = "embedded"
    #: The query's intensity domain ("hu", "non-hu"; "" unknown) and why (from its voxels).
    domain: str = ""
    domain_reason: str = ""
    #: the answer's volume, labels, ``confidence`` in [0, 1], ``uncertain`` and ``reason``
    answer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_matches: bool = True) -> dict[str, Any]:
        ranking = [r.to_dict(with_matches) for r in self.ranking]
        if ranking and self.answer:  # the answer is the first volume: its verdict on it too
            ranking[0].update({k: self.answer[k] for k in ("confidence", "uncertain", "reason")})
        return {
            "query": {"volume_id": self.query_id, "source": self.query_source,
                      "n_slices": self.n_slices, "chosen_slices": self.chosen_slices,
                      "weights": self.weights, "vectors": self.vectors,
                      "domain": self.domain, "domain_reason": self.domain_reason},
            "model": self.model,
            "options": self.options,
            "answer": self.answer,
            "ranking": ranking,
            "slice_predictions": [m.__dict__ for m in self.slice_predictions],
            "timings": self.timings,
        }


@dataclass(frozen=True)
class VectorSearch:
    """What :func:`search_vectors` found: the query slices it chose, their weights, the vote
    (its ranking cut to the options' ``top``) and the seconds of the k-NN request, the vote
    and any re-ranking (``knn_s``, ``vote_s``, ``rerank_s``)."""

    chosen_slices: list[int]
    weights: list[float]
    vote: VoteResult
    timings: dict[str, float]
    #: the answer (the ranking's first volume) with its confidence (search.calibration)
    answer: dict[str, Any] = field(default_factory=dict)


def check_collection(store: SliceStore, embedder: ModelId, space: str | None = None) -> str:
    """The collection to query, or a clear error (empty store, other model, other version).

    ``space``: the vector space queried (:func:`medir.config.vector_space_id`; default the
    model version alone)."""
    space = space or embedder.embedder_id
    coll = collection_name(embedder.name)
    existing = store.collections()
    if coll not in existing:
        if existing:
            models = ", ".join(c.removeprefix("medir_") for c in existing)
            raise ModelMismatch(
                f"the store at {store.location} has no volumes embedded with {embedder.name!r}; "
                f"it holds collections for: {models}. Query with --model set to one of those, "
                f"or ingest with --model {embedder.name}"
            )
        raise EmptyStore(f"the store at {store.location} is empty: ingest volumes first "
                         "(medir ingest PATH...)")
    check_layout(store, coll)
    if store.count(coll, READY) == 0:
        raise EmptyStore(f"collection {coll} at {store.location} holds no complete volume")
    # A collection may hold points of several versions of one model (a re-ingest under way):
    # the query is allowed when its own version is there, and search_vectors filters on it, so
    # vectors of two versions are never compared.
    versions = store.facet(coll, "embedder", READY)
    if versions and space not in versions:
        raise ModelMismatch(
            f"collection {coll} was built with {', '.join(map(str, versions))} but this query "
            f"uses {space}; query with the collection's preprocessing (--intensity, "
            "MEDIR_INTENSITY: a '+fov:<mm>' in the id is part of it) or re-ingest the "
            "collection with this model version and preprocessing"
        )
    if store.collection_dim(coll) != embedder.dim:
        raise ModelMismatch(f"collection {coll} holds {store.collection_dim(coll)}-d vectors, "
                            f"{embedder.name} makes {embedder.dim}-d ones")
    return coll


def _filter(options: QueryOptions, exclude_content: str | None,
            exclude_volume: str | None = None, embedder_id: str | None = None,
            domain: str = "") -> Filter:
    must: dict[str, Any] = dict(READY.must)
    if embedder_id:
        must["embedder"] = embedder_id
    for key, values in options.filters.items():
        if key not in LABEL_KEYS:
            raise MedirError(f"cannot filter on {key!r}; label filters: {', '.join(LABEL_KEYS)}")
        vals = [v for v in values if v]
        if vals:
            must[key] = vals if len(vals) > 1 else vals[0]
    must_not: dict[str, Any] = {"content_id": exclude_content} if exclude_content else {}
    if options.exclude_cases:
        must_not["case_id"] = list(options.exclude_cases)
    if exclude_volume:
        must_not["volume_id"] = exclude_volume
    if domain and not options.cross_modality:  # stored volumes of the other domain stay out;
        must_not["domain"] = opposite(domain)  # those stored before domains (none) stay in
    return Filter(must, must_not)


def search_vectors(
    store: SliceStore,
    coll: str,
    slice_vectors: np.ndarray,
    n_slices: int,
    z_spacing: float,
    options: QueryOptions,
    *,
    exclude_content: str | None = None,
    exclude_volume: str | None = None,
    slice_indices: np.ndarray | None = None,
    embedder_id: str | None = None,
    domain: str = "",
) -> VectorSearch:
    """Sampling, weights, the batch k-NN request and the vote over precomputed vectors.

    ``slice_vectors[i]`` is the embedding of slice ``slice_indices[i]`` (default: slice i).
    ``embedder_id`` restricts the hits to points of that embedder version; ``domain`` (the
    query's intensity domain) keeps out stored volumes of the other domain unless the options
    ask for ``cross_modality``.
    """
    method = check_rerank(options.rerank)
    n_vote = max(options.top, options.rerank_top) if method != "none" else options.top
    marked = [*options.like, *options.unlike]
    rows, chosen_list, weights, result, timings = _knn_vote(
        store, coll, slice_vectors, n_slices, z_spacing, options,
        _filter(options, exclude_content, exclude_volume, embedder_id, domain),
        slice_indices, max(n_vote, FEEDBACK_DEPTH) if marked else n_vote)
    t2 = time.perf_counter()
    if marked:
        liked = [_marked_vote(store, coll, v, options, embedder_id, domain)
                 for v in options.like]
        unliked = [_marked_vote(store, coll, v, options, embedder_id, domain)
                   for v in options.unlike]
        result.ranking = feedback_ranking(result, liked, unliked, marked, top=n_vote)
        timings["feedback_s"] = time.perf_counter() - t2
        t2 = time.perf_counter()
    if method != "none" and result.ranking:
        query_z = np.asarray(chosen_list, dtype=np.float64) * float(z_spacing)
        result.ranking = _rerank(store, coll, method, slice_vectors[rows], query_z, weights,
                                 result.ranking, options, embedder_id)
        timings["rerank_s"] = time.perf_counter() - t2
    result.ranking = result.ranking[: options.top]
    t3 = time.perf_counter()  # how sure the answer is (integration point: search.calibration)
    verdict = judge_vote(result, weights.tolist(),
                         collection_calibration(store, coll, embedder_id or ""))
    timings["confidence_s"] = time.perf_counter() - t3
    return VectorSearch(chosen_list, weights.tolist(), result, timings,
                        answer_dict(result, verdict))


def _knn_vote(store: SliceStore, coll: str, slice_vectors: np.ndarray, n_slices: int,
              z_spacing: float, options: QueryOptions, flt: Filter,
              slice_indices: np.ndarray | None, top: int
              ) -> tuple[list[int], list[int], np.ndarray, VoteResult, dict[str, float]]:
    """The query's core: the chosen slices (their rows in ``slice_vectors`` and their slice
    indices), their weights, one batched k-NN request and the vote over its hits, ranked
    ``top`` deep, with the seconds of the k-NN and the vote."""
    sampling, weighting = options.parsed()
    idx_all = np.arange(n_slices) if slice_indices is None else np.asarray(slice_indices)
    chosen = sampling.select(n_slices, z_spacing)
    pos = {int(s): i for i, s in enumerate(idx_all)}
    rows = [pos[int(c)] for c in chosen if int(c) in pos]
    chosen_list = [int(idx_all[r]) for r in rows]
    weights = weighting.weights(np.asarray(chosen_list), n_slices)
    t0 = time.perf_counter()
    hits = store.search_batch(coll, slice_vectors[rows], options.k, flt, exact=options.exact,
                              payload_keys=HIT_PAYLOAD_KEYS)
    t1 = time.perf_counter()
    result = vote(chosen_list, weights.tolist(), hits, top=top)
    return rows, chosen_list, weights, result, {"knn_s": t1 - t0,
                                                "vote_s": time.perf_counter() - t1}


def _marked_vote(store: SliceStore, coll: str, volume_id: str, options: QueryOptions,
                 embedder_id: str | None, domain: str = "") -> VoteResult:
    """A marked volume's own vote: its stored slice vectors as a query (no model pass),
    itself left out, in the query's intensity domain (``domain``, unless the options ask for
    cross-modality search), ranked deep enough to be combined (:func:`feedback_ranking`);
    no re-ranking, no confidence (only its shares are used)."""
    found = live_vectors(store, coll, volume_id, embedder_id)
    if found is None:
        raise MedirError(f"no indexed volume {volume_id!r} in collection {coll} to mark")
    return _knn_vote(store, coll, found.vectors, found.n_slices, found.z_spacing, options,
                     _filter(options, None, volume_id, embedder_id, domain), found.slices,
                     FEEDBACK_DEPTH)[3]


def _rerank(store: SliceStore, coll: str, method: str, query: np.ndarray, query_z: np.ndarray,
            weights: np.ndarray, ranking: list[VolumeResult], options: QueryOptions,
            embedder_id: str | None = None) -> list[VolumeResult]:
    """Re-rank the first ``rerank_top`` volumes by ``method`` from their stored slice vectors,
    fetched in ONE filtered scroll for all candidates (computed in medir: each point is one
    slice, so a native multivector would need a second copy of every vector)."""
    head, tail = ranking[: max(options.rerank_top, 1)], ranking[max(options.rerank_top, 1):]
    ids = [r.volume_id for r in head]
    slices: dict[str, list[tuple[float, np.ndarray]]] = {v: [] for v in ids}
    must: dict[str, Any] = {"volume_id": ids if len(ids) > 1 else ids[0], **READY.must}
    if embedder_id:
        must["embedder"] = embedder_id
    by_volume: dict[str, list[Record]] = {v: [] for v in ids}
    for rec in store.scroll(coll, Filter(must), with_vectors=True):
        by_volume.setdefault(str(rec.payload.get("volume_id")), []).append(rec)
    # the live version of each candidate only (a re-ingest may briefly leave two ready)
    for rec in (r for recs in by_volume.values() for r in live_records(recs)):
        vid = str(rec.payload.get("volume_id"))
        if rec.vector is not None and vid in slices:
            z = rec.payload.get("z_mm")
            slices[vid].append((float(z) if z is not None else float(rec.payload.get(
                "slice", 0)), np.asarray(rec.vector, np.float32)))
    candidates = []
    for vid in ids:
        rows = sorted(slices[vid], key=lambda t: t[0])
        vecs = np.stack([v for _, v in rows]) if rows else np.zeros((0, query.shape[1]),
                                                                    np.float32)
        candidates.append((vecs, np.asarray([z for z, _ in rows], np.float64)))
    scores = rerank_scores(method, query.astype(np.float32), query_z, candidates, weights)
    order = rerank_order(scores)
    out = []
    for rank, i in enumerate(order, start=1):
        head[i].rank, head[i].rerank_score = rank, scores[i]
        out.append(head[i])
    for rank, r in enumerate(tail, start=len(out) + 1):
        r.rank = rank
        out.append(r)
    return out


def stored_vectors(store: SliceStore, coll: str, content: str, embedder_id: str,
                   intensity: str, slices: np.ndarray) -> np.ndarray | None:
    """The stored embeddings of ``slices`` of an indexed volume with this exact content
    (file sha256 and 4D index), embedder version and concrete intensity mode, or None.

    A query with a file that is already indexed then costs a k-NN and a vote, not a model
    pass: the vectors are the ones ingest computed from the same voxels with the same model
    and window. Any mismatch (another model version, another window, a slice missing) means
    None, and the caller embeds as for a new volume.
    """
    flt = Filter({"content_id": content, "embedder": embedder_id, "intensity": intensity,
                  **READY.must})
    by_volume: dict[str, list[Record]] = {}
    for r in store.scroll(coll, flt, with_vectors=True):
        by_volume.setdefault(str(r.payload.get("volume_id", "")), []).append(r)
    for vid in sorted(by_volume):
        vec_of = {int(r.payload["slice"]): r.vector for r in live_records(by_volume[vid])}
        rows = [vec_of.get(int(i)) for i in slices]
        if rows and all(v is not None for v in rows):
            return np.stack([np.asarray(v, dtype=np.float32) for v in rows])
    return None


def search_indexed(
    volume_id: str, store: SliceStore, embedder: ModelId, options: QueryOptions
) -> SearchResult:
    """Query with an indexed volume, reusing its stored slice vectors (no re-embedding)."""
    space = vector_space_id(embedder.embedder_id, options.intensity)
    coll = check_collection(store, embedder, space)
    # the live version only: during a re-ingest the old and new ones are briefly both ready
    stored = live_vectors(store, coll, volume_id, space)
    if stored is None:
        raise MedirError(f"no indexed volume {volume_id!r} in collection {coll}")
    first, n = stored.payload, stored.n_slices
    found = search_vectors(
        store, coll, stored.vectors, n, stored.z_spacing, options,
        exclude_volume=volume_id, slice_indices=stored.slices,
        embedder_id=space, domain=str(first.get("domain", "")),
    )
    return SearchResult(volume_id, str(first.get("source", "")), embedder.name, n,
                        found.chosen_slices, found.weights, result_options(options),
                        found.vote.ranking, found.vote.slice_predictions,
                        {"embed_s": 0.0, **found.timings},
                        "stored", str(first.get("domain", "")),
                        "stored at ingest" if first.get("domain") else
                        "not stored (indexed before domains; re-ingest with --force)",
                        found.answer)


def result_options(options: QueryOptions) -> dict[str, Any]:
    """The options as a query result reports them (``SearchResult.options``)."""
    return {"sampling": options.sampling, "weighting": options.weighting, "k": options.k,
            "top": options.top, "filters": {k: list(v) for k, v in options.filters.items()},
            "exact": options.exact, "rerank": options.rerank, "rerank_top": options.rerank_top,
            "cross_modality": options.cross_modality,
            **({"max_slices": options.max_slices} if options.max_slices else {}),
            **({"like": list(options.like)} if options.like else {}),
            **({"unlike": list(options.unlike)} if options.unlike else {}),
            **({"exclude_cases": list(options.exclude_cases)} if options.exclude_cases else {})}
