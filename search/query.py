"""The query over the store: collection checks, stored-vector reuse, then the query steps of
:mod:`search.steps` (chosen slices → one batch k-NN request → vote → optional feedback and
re-rank) and the answer's confidence.

:func:`search_vectors` runs the steps on vectors already computed (the runner's query with a
file, the benchmarks); :func:`search_indexed` queries with an indexed volume, reusing its
stored slice vectors; :func:`stored_vectors` finds the stored vectors of a volume whose content
is indexed. Opening a file, a DICOM folder or a PACS series and embedding it is the
application's work (:mod:`runner.query_service`). The query volume itself is excluded from the
results: by its volume id when querying by id, by content when querying with a file (a file
whose content equals an indexed volume is that volume, under every id it is indexed as).

The options (:mod:`search.options`) and the result (:mod:`search.result`) live in their own
modules; they are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from medir.config import vector_space_id
from medir.errors import EmptyStore, MedirError, ModelMismatch
from search.calibration import answer_dict, collection_calibration, judge_vote
from search.domain import opposite
from search.feedback import FEEDBACK_DEPTH, feedback_ranking
from search.live import check_layout, live_records, live_vectors
from search.options import MAX_K, MAX_TOP, QueryOptions, configured_options, default_weighting
from search.rerank import check_rerank
from search.result import SearchResult, VectorSearch, result_options
from search.steps import Candidates, QuerySlices, choose_slices, knn_vote, rerank_ranking
from search.store import (
    HIT_PAYLOAD_KEYS,
    LABEL_KEYS,
    READY,
    Filter,
    Record,
    SliceStore,
    collection_name,
)
from search.vote import VoteResult

__all__ = [
    "MAX_K", "MAX_TOP", "ModelId", "QueryOptions", "SearchResult", "VectorSearch",
    "check_collection", "configured_options", "default_weighting", "result_options",
    "search_indexed", "search_vectors", "stored_vectors",
]


class ModelId(Protocol):
    """What a query needs to know of the model that made the vectors (an
    :class:`ingest.embedders.base.Embedder` is one): its name, its version id, its dimension."""

    @property
    def name(self) -> str: ...

    @property
    def embedder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...


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
    """Sampling, weights, the batch k-NN request and the vote over precomputed vectors, then
    any relevance feedback and re-ranking, and the answer's confidence.

    ``slice_vectors[i]`` is the embedding of slice ``slice_indices[i]`` (default: slice i).
    ``embedder_id`` restricts the hits to points of that embedder version; ``domain`` (the
    query's intensity domain) keeps out stored volumes of the other domain unless the options
    ask for ``cross_modality``.
    """
    method = check_rerank(options.rerank)
    n_vote = max(options.top, options.rerank_top) if method != "none" else options.top
    marked = [*options.like, *options.unlike]
    chosen, result, timings = _knn_vote(
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
        result.ranking = rerank_ranking(
            method, slice_vectors[chosen.rows], chosen.z_mm(z_spacing), chosen.weights,
            result.ranking, options.rerank_top, _stored_candidates(store, coll, embedder_id))
        timings["rerank_s"] = time.perf_counter() - t2
    result.ranking = result.ranking[: options.top]
    t3 = time.perf_counter()  # how sure the answer is (integration point: search.calibration)
    verdict = judge_vote(result, collection_calibration(store, coll, embedder_id or ""))
    timings["confidence_s"] = time.perf_counter() - t3
    return VectorSearch(chosen.slices, chosen.weights.tolist(), result, timings,
                        answer_dict(result, verdict))


def _knn_vote(store: SliceStore, coll: str, slice_vectors: np.ndarray, n_slices: int,
              z_spacing: float, options: QueryOptions, flt: Filter,
              slice_indices: np.ndarray | None, top: int
              ) -> tuple[QuerySlices, VoteResult, dict[str, float]]:
    """The query's core over the store: the chosen slices with their weights, one batched
    k-NN request (the options' k, ``flt``) and the vote over its hits, ranked ``top`` deep,
    with the seconds of the k-NN and the vote (:mod:`search.steps`)."""
    chosen = choose_slices(*options.parsed(), n_slices, z_spacing, slice_indices)
    result, timings = knn_vote(
        slice_vectors, chosen,
        lambda rows: store.search_batch(coll, rows, options.k, flt, exact=options.exact,
                                        payload_keys=HIT_PAYLOAD_KEYS), top)
    return chosen, result, timings


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
                     FEEDBACK_DEPTH)[1]


def _stored_candidates(store: SliceStore, coll: str, embedder_id: str | None) -> Candidates:
    """The re-rankers' candidates from the store: the stored slice vectors of the live version
    of each volume, fetched in ONE filtered scroll for all of them (computed in medir: each
    point is one slice, so a native multivector would need a second copy of every vector)."""

    def fetch(ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        must: dict[str, Any] = {"volume_id": ids if len(ids) > 1 else ids[0], **READY.must}
        if embedder_id:
            must["embedder"] = embedder_id
        by_volume: dict[str, list[Record]] = {v: [] for v in ids}
        for rec in store.scroll(coll, Filter(must), with_vectors=True):
            by_volume.setdefault(str(rec.payload.get("volume_id")), []).append(rec)
        slices: dict[str, list[tuple[float, np.ndarray]]] = {v: [] for v in ids}
        # the live version of each candidate only (a re-ingest may briefly leave two ready)
        for rec in (r for recs in by_volume.values() for r in live_records(recs)):
            vid = str(rec.payload.get("volume_id"))
            if rec.vector is not None and vid in slices:
                z = rec.payload.get("z_mm")
                slices[vid].append((float(z) if z is not None else float(rec.payload.get(
                    "slice", 0)), np.asarray(rec.vector, np.float32)))
        dim = next((v.shape[0] for rows in slices.values() for _, v in rows), 0)
        out = []
        for vid in ids:
            rows = sorted(slices[vid], key=lambda t: t[0])
            vecs = np.stack([v for _, v in rows]) if rows else np.zeros((0, dim), np.float32)
            out.append((vecs, np.asarray([z for z, _ in rows], np.float64)))
        return out

    return fetch


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
