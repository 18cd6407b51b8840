"""The search layer's entry points used by the CLI, the UI and the Celery tasks.

``run_search`` goes through the queue when a broker is configured (``MEDIR_REDIS_URL``: the
worker owns the model and, in embedded mode, the store) and runs in-process otherwise.
``search_in_process`` is what the ``search_volume`` task itself runs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from ingest.embedders import Embedder, get_embedder
from medir.config import Settings, get_settings
from search.query import QueryOptions, search_file, search_indexed
from search.store import LABEL_KEYS, READY, Filter, SliceStore
from search.store_factory import open_store


@lru_cache(maxsize=4)
def cached_embedder(model: str, device: str, batch_size: int, weights_dir: Path) -> Embedder:
    """One loaded model per process and configuration (workers and the UI query many times)."""
    return get_embedder(model, device=device, batch_size=batch_size, weights_dir=weights_dir)


def search_in_process(
    volume: str,
    model: str,
    options: QueryOptions,
    *,
    by_id: bool = False,
    index_4d: int | None = None,
    store: SliceStore | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run one volume query here; returns the JSON-serialisable result."""
    s = settings or get_settings()
    embedder = cached_embedder(model, s.device, s.batch_size, s.weights_dir)
    own = store is None
    st = store or open_store(s)
    try:
        if by_id:
            result = search_indexed(volume, st, embedder, options)
        else:
            result = search_file(volume, st, embedder, options, index_4d=index_4d)
        return result.to_dict()
    finally:
        if own:
            st.close()


def run_search(
    volume: str,
    model: str,
    options: QueryOptions,
    *,
    by_id: bool = False,
    index_4d: int | None = None,
) -> dict[str, Any]:
    """A volume query through the queue when one is configured, else in-process."""
    s = get_settings()
    if s.redis_url:
        from ingest.queue.submit import submit_search

        return submit_search(volume, model, options, by_id=by_id, index_4d=index_4d)
    return search_in_process(volume, model, options, by_id=by_id, index_4d=index_4d)


def store_stats(store: SliceStore) -> dict[str, Any]:
    """Collections, volumes and points per model, label facets (the collection page, info)."""
    collections = []
    for name in store.collections():
        facets = {key: _volumes_per_value(store, name, key) for key in LABEL_KEYS}
        collections.append({
            "name": name,
            "dim": store.collection_dim(name),
            "points": store.count(name),
            "ready_points": store.count(name, READY),
            "volumes": len(store.facet(name, "volume_id", READY, limit=1_000_000)),
            "embedders": sorted(map(str, store.facet(name, "embedder", READY))),
            "facets": facets,
        })
    return {"mode": store.mode, "location": store.location, "collections": collections}


def _volumes_per_value(store: SliceStore, name: str, key: str) -> dict[str, int]:
    """Number of complete volumes per value of a label (facets count points, not volumes)."""
    out: dict[str, int] = {}
    for value in store.facet(name, key, READY):
        flt = READY.and_(Filter({key: value}))
        out[str(value)] = len(store.facet(name, "volume_id", flt, limit=1_000_000))
    return dict(sorted(out.items()))


def collection_stats(settings: Settings | None = None) -> dict[str, Any]:
    s = settings or get_settings()
    if s.redis_url and not s.qdrant_url:
        from ingest.queue.submit import submit_stats

        return submit_stats()
    with open_store(s) as store:
        return store_stats(store)
