"""The UI's only door to medir: store statistics, indexed volumes, searches and ingests.

Two modes, chosen by the settings:

* **queue mode** (``MEDIR_REDIS_URL`` set): searches and ingests are Celery tasks run by a
  worker that owns the model (and, with the embedded store, the store). Every failure to reach
  Redis or a worker becomes :class:`QueueUnavailable` with a message saying what to start.
* **in-process mode** (no broker): this Streamlit process embeds and searches itself. The
  embedded store (Qdrant Edge) admits one opener at a time, so the store is opened per request
  and closed again, and a process-wide lock keeps two browser sessions from opening it at once.
  The embedder is loaded once per process and reused.

No Streamlit here: the pages render, this module computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from ingest.collection import VolumeSource
from ingest.embedders import get_embedder
from ingest.embedders.base import Embedder
from ingest.pipeline import IngestReport, ingest_paths
from medir.config import Settings
from medir.errors import MedirError, StoreUnavailable
from medir.secrets import mask_secrets, safe_url
from search.query import QueryOptions, search_file, search_indexed
from search.service import collection_stats, run_search
from search.store import READY, SliceStore, collection_name
from search.store_factory import open_store

STORE_WAIT_S = 20.0
_STORE_LOCK = threading.Lock()


class QueueUnavailable(MedirError):
    """Redis or the Celery worker cannot be reached (queue mode)."""


def queue_mode(settings: Settings) -> bool:
    return bool(settings.redis_url)


def mode_text(settings: Settings) -> str:
    """One line naming where searches run and which store they use."""
    store = f"Qdrant server {safe_url(settings.qdrant_url)}" if settings.qdrant_url else (
        f"embedded store {settings.store_path}")
    runner = (f"queue at {safe_url(settings.redis_url)}" if queue_mode(settings)
              else "in this process")
    return mask_secrets(f"{store} · searches run {runner}")


def queue_error(exc: BaseException, settings: Settings) -> QueueUnavailable:
    """A clear 'worker not running / queue unavailable' error for any queue failure."""
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return QueueUnavailable(mask_secrets(
        f"The queue at {safe_url(settings.redis_url)} did not answer: is redis-server running "
        f"and is a worker started (medir worker)? ({detail})"
    ))


@contextmanager
def store_session(settings: Settings) -> Iterator[SliceStore]:
    """The store, opened for one request and closed after it (one opener at a time here)."""
    if not _STORE_LOCK.acquire(timeout=STORE_WAIT_S):
        raise StoreUnavailable("the store is busy with another request in this server (an "
                               "ingest?); try again when it has finished")
    try:
        with open_store(settings) as store:
            yield store
    finally:
        _STORE_LOCK.release()


@contextmanager
def _queue_calls(settings: Settings) -> Iterator[None]:
    """Turn a broker or worker that does not answer into :class:`QueueUnavailable`.

    The queue client reports both as StoreUnavailable (no broker, no answer in time); any other
    non-medir exception (ImportError, connection errors) is the same failure seen from here.
    """
    try:
        yield
    except QueueUnavailable:
        raise
    except StoreUnavailable as exc:
        raise QueueUnavailable(f"{exc}") from exc
    except MedirError:
        raise
    except Exception as exc:  # ImportError, redis/kombu connection errors, Celery timeouts
        raise queue_error(exc, settings) from exc


def stats(settings: Settings) -> dict[str, Any]:
    """``collection_stats``: store mode, and per collection volumes, points and label facets."""
    if queue_mode(settings) and not settings.qdrant_url:
        with _queue_calls(settings):
            return collection_stats(settings)
    if settings.qdrant_url:
        return collection_stats(settings)
    if not _STORE_LOCK.acquire(timeout=STORE_WAIT_S):
        raise StoreUnavailable("the store is busy with another request in this server")
    try:
        return collection_stats(settings)
    finally:
        _STORE_LOCK.release()


def indexed_volumes(settings: Settings, model: str) -> list[str] | None:
    """Ids of the complete volumes indexed with ``model``; None when this process cannot read
    the store (queue mode with the embedded store, which the worker owns)."""
    if queue_mode(settings) and not settings.qdrant_url:
        return None
    coll = collection_name(model)
    with store_session(settings) as store:
        if not store.has_collection(coll):
            return []
        return sorted(str(v) for v in store.facet(coll, "volume_id", READY, limit=1_000_000))


@lru_cache(maxsize=2)
def _embedder(name: str, device: str, batch_size: int, weights_dir: str) -> Embedder:
    return get_embedder(name, device=device, batch_size=batch_size, weights_dir=Path(weights_dir))


def embedder(settings: Settings, model: str) -> Embedder:
    """The process-wide embedder for ``model`` (weights load once, on first use)."""
    return _embedder(model, settings.device, settings.batch_size, str(settings.weights_dir))


def search(
    settings: Settings,
    query: str,
    model: str,
    options: QueryOptions,
    *,
    by_id: bool = False,
) -> dict[str, Any]:
    """One volume query (a file path, or an indexed volume id with ``by_id``) → result dict."""
    options.parsed()  # a bad option fails here, before the queue or the model
    if queue_mode(settings):
        with _queue_calls(settings):
            return run_search(query, model, options, by_id=by_id)
    emb = embedder(settings, model)
    with store_session(settings) as store:
        if by_id:
            return search_indexed(query, store, emb, options).to_dict()
        return search_file(query, store, emb, options).to_dict()


ProgressFn = Callable[[str, int, int], None]
ReportFn = Callable[[IngestReport], None]


def ingest_here(
    settings: Settings,
    files: Sequence[VolumeSource | Path],
    model: str,
    labels: Mapping[str, Mapping[str, str]] | None,
    progress: ProgressFn | None = None,
    on_report: ReportFn | None = None,
) -> list[IngestReport]:
    """Ingest in this process (no broker): every volume of every file; bad files are reported."""
    emb = embedder(settings, model)
    with store_session(settings) as store:
        return ingest_paths(files, store, emb, labels=labels, intensity=settings.intensity,
                            upsert_batch=settings.upsert_batch, progress=progress,
                            on_report=on_report)
