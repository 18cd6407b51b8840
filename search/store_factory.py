"""Open the store the settings select: a Qdrant server when ``MEDIR_QDRANT_URL`` is set,
otherwise the embedded Qdrant Edge store at ``MEDIR_STORE_PATH``."""

from __future__ import annotations

from medir.config import Settings
from search.store import SliceStore


def open_store(s: Settings) -> SliceStore:
    """The store of the settings ``s`` (read by the caller, the runner)."""
    if s.qdrant_url:
        from search.store_qdrant import QdrantStore

        return QdrantStore(url=s.qdrant_url, api_key=s.qdrant_api_key, hnsw=s.hnsw,
                           storage=s.store)
    from search.store_edge import EdgeStore

    return EdgeStore(s.store_path, hnsw=s.hnsw, storage=s.store)
