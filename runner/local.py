"""The in-process runner: this process embeds, writes and searches.

It owns the two things every entry point used to set up for itself:

* **the embedders**: one cache per process (the CLI, the UI server and a Celery worker
  process alike), keyed by model and configuration; weights load on the first ``embed``. The
  cache is dropped in a forked child (a CUDA context or an ONNX session is never inherited).
* **the store**: opened for one call and closed after it (the CLI; the UI, where a process-wide
  lock keeps two browser sessions from opening the embedded store at once), or opened once and
  kept open for the life of the process (a worker: ``keep_store_open=True``), with every call
  serialised by a fair lock so a query never waits behind a whole bulk ingest. Opening the
  embedded store takes its process lock (:mod:`search.store_lock`): another medir process
  holding it makes this one wait, bounded, never harms it. A kept-open store whose engine
  fails a call (:class:`StoreFault`) is closed and opened again for the next call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from medir.config import Settings
from medir.errors import MedirError, StoreUnavailable
from runner.base import (
    POLL_S,
    IngestOptions,
    IngestOutcome,
    JobState,
    ProgressFn,
    ReportFn,
    Runner,
    UpdateFn,
    store_is_server,
)

if TYPE_CHECKING:
    from ingest.collection import VolumeSource
    from ingest.dicomweb import PacsSeries, Target
    from ingest.embedders.base import Embedder
    from ingest.embedders.registry import EmbedderConfig
    from ingest.pipeline import IngestReport
    from ingest.volume import Volume
    from search.audit import AuditOptions
    from search.query import QueryOptions
    from search.store import SliceStore
    from search.volumes import PruneResult, VolumeInfo

STORE_WAIT_S = 20.0


# ---- the process's embedders ----------------------------------------------------------------
class _Embedders:
    """One embedder per model and configuration for this process, dropped after a fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.items: dict[EmbedderConfig, Embedder] = {}

    def get(self, model: str, settings: Settings) -> Embedder:
        from ingest.embedders.registry import EmbedderConfig

        if self.pid != os.getpid():
            self.pid, self.lock, self.items = os.getpid(), threading.Lock(), {}
        config = EmbedderConfig.of(model, settings)  # the constructor's arguments and the key
        with self.lock:
            emb = self.items.get(config)
            if emb is None:
                emb = self.items[config] = config.build()
            return emb

    def clear(self) -> None:
        with self.lock:
            self.items = {}


EMBEDDERS = _Embedders()
_OPEN_LOCK = threading.Lock()  # one opener of a per-call store at a time in this process


# ---- the store lock -------------------------------------------------------------------------
class FairLock:
    """A re-entrant FIFO lock: threads acquire in arrival order. A plain lock lets a thread
    that releases and re-acquires in a loop (bulk upserts) starve the others (queries)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket or self._owner is not None:
                self._cond.wait()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FairLock not held by this thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._serving += 1
                self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StoreFault(StoreUnavailable):
    """A store call failed inside the engine (its handle or files in a bad state): this call
    fails with one line, and the runner opens the store again for the next one."""


# what a healthy store raises: a user error, a missing collection, a refused argument
_ANSWERS = (MedirError, KeyError, ValueError)


class LockedStore:
    """Serialises calls into one store object, so a threads-pool worker can run a query while
    another thread ingests (an embedded engine handle is not safe for concurrent calls). The
    lock is fair: a query waits for at most the one store call in progress.

    Any other exception from the engine marks the store ``broken`` and is raised as a
    :class:`StoreFault`; :meth:`LocalRunner.store` then replaces it with a fresh one."""

    def __init__(self, inner: SliceStore) -> None:
        self._inner = inner
        self.lock = FairLock()
        self.mode = inner.mode
        self.location = inner.location
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        lock = self.lock

        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                try:
                    result = attr(*args, **kwargs)
                    if name == "scroll":  # a generator: drain it under the lock
                        result = iter(list(result))
                except _ANSWERS:
                    raise
                except Exception as exc:
                    self.broken = True
                    text = (str(exc).splitlines() or [""])[0][:300]
                    raise StoreFault(
                        f"store {self.location}: {name} failed ({type(exc).__name__}: {text}); "
                        "the store is opened again for the next call") from None
                return result

        return locked

    def __enter__(self) -> LockedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the runner -----------------------------------------------------------------------------
class LocalRunner(Runner):
    """Ingest, search and statistics in this process, on the store the settings name."""

    mode = "local"

    def __init__(self, settings: Settings, *, keep_store_open: bool = False,
                 store_wait_s: float = STORE_WAIT_S, store: SliceStore | None = None) -> None:
        """``settings``: read once by the caller (the edge); everything below gets its part of
        them from here. ``store``: an already open store to work on (the caller closes it)."""
        from ingest.embedders import use_plugins
        from ingest.reader import Limits

        self.settings = settings
        self.limits = Limits.of(settings.limits)
        use_plugins(settings.plugin_modules)
        self.keep_store_open = keep_store_open
        self.store_wait_s = store_wait_s
        self._given = store
        self._store: LockedStore | None = None
        self._lock = threading.Lock()

    # -- what the runner owns --
    def embedder(self, model: str) -> Embedder:
        """The process's embedder for ``model`` (weights load once, on its first use)."""
        return EMBEDDERS.get(model, self.settings)

    def store(self) -> SliceStore:
        """The store kept open for this runner's life (a worker's), thread-safe."""
        from search.store_factory import open_store

        with self._lock:
            if self._store is not None and self._store.broken:
                broken, self._store = self._store, None
                try:
                    broken.close()  # flushes what it can, releases the store's process lock
                except StoreUnavailable:
                    pass
            if self._store is None:
                self._store = LockedStore(open_store(self.settings))
            return cast("SliceStore", self._store)

    @contextmanager
    def session(self) -> Iterator[SliceStore]:
        """The store for one call: the kept-open one, or one opened now and closed after.

        The embedded store admits one opener: a process-wide lock makes concurrent requests
        (two browser sessions) wait for each other, up to ``store_wait_s``.
        """
        if self._given is not None:
            yield self._given
            return
        if self.keep_store_open:
            yield self.store()
            return
        from search.store_factory import open_store

        if store_is_server(self.settings):  # a server: any number of clients
            with open_store(self.settings) as store:
                yield store
            return
        if not _OPEN_LOCK.acquire(timeout=self.store_wait_s):
            raise StoreUnavailable("the store is busy with another request in this server (an "
                                   "ingest?); try again when it has finished")
        try:
            with open_store(self.settings) as store:
                yield store
        finally:
            _OPEN_LOCK.release()

    @contextmanager
    def snapshot(self) -> Iterator[SliceStore]:
        """A session in which no other thread of this process writes (consistent counts)."""
        with self.session() as store:
            lock = store.lock if isinstance(store, LockedStore) else None
            if lock is None:
                yield store
                return
            with lock:
                yield store

    # -- the work --
    def ingest(self, sources: Sequence[VolumeSource | Path], options: IngestOptions, *,
               progress: ProgressFn | None = None,
               on_report: ReportFn | None = None) -> IngestOutcome:
        """Every volume of every source, read, embedded and written here; bad files become
        failed reports (the others are indexed)."""
        from ingest.pipeline import ingest_paths

        emb = self.embedder(options.model)
        with self.session() as store:
            reports = ingest_paths(sources, store, emb, labels=options.labels,
                                   intensity=options.intensity,
                                   upsert_batch=self.settings.upsert_batch, progress=progress,
                                   on_report=on_report, force=options.force,
                                   limits=self.limits)
        return IngestOutcome(reports=reports)

    def ingest_pacs(self, series: Sequence[PacsSeries], options: IngestOptions, *,
                    target: Target, on_report: ReportFn | None = None) -> IngestOutcome:
        """Each series retrieved (one at a time), read, embedded and written here through the
        same stages as files; a bad series is a failed report, a server that refuses us or
        cannot be reached (:class:`ingest.dicomweb.PacsUnavailable`) raises."""
        from ingest.pacs_ingest import ingest_series

        emb = self.embedder(options.model)
        with self.session() as store:
            reports = ingest_series(series, store, emb, target=target, labels=options.labels,
                                    intensity=options.intensity,
                                    upsert_batch=self.settings.upsert_batch,
                                    on_report=on_report, limits=self.limits)
        return IngestOutcome(reports=reports)

    def watch(self, ids: Sequence[str], on_update: UpdateFn | None = None, *,
              poll_s: float = POLL_S) -> bool:
        """In-process work has no jobs to watch: it is done when ``ingest`` returns."""
        return True

    def workers_alive(self) -> bool:
        """This process does the work."""
        return True

    def index_one(self, volume: Volume, options: IngestOptions,
                  progress: ProgressFn | None = None) -> IngestReport:
        """One 3D volume already read (a queue job's), under the volume id it carries."""
        from ingest.pipeline import index_volume

        emb = self.embedder(options.model)
        with self.session() as store:
            return index_volume(store, emb, volume, intensity=options.intensity,
                                upsert_batch=self.settings.upsert_batch, progress=progress,
                                force=options.force, labels_given=options.labels is not None)

    def search(self, query: str, options: QueryOptions, *, model: str, by_id: bool = False,
               index_4d: int | None = None) -> dict[str, Any]:
        from runner.query_service import search_file
        from search.query import search_indexed

        emb = self.embedder(model)  # the options were validated when they were built
        with self.session() as store:
            if by_id:
                result = search_indexed(query, store, emb, options)
            else:
                result = search_file(query, store, emb, options, index_4d=index_4d,
                                     limits=self.limits, pacs=self.settings)
            return result.to_dict()

    def stats(self) -> dict[str, Any]:
        from search.volumes import store_stats

        with self.snapshot() as store:
            return store_stats(store)

    def audit(self, model: str, options: AuditOptions,
              progress: ProgressFn | None = None) -> list[dict[str, Any]]:
        from search.audit import audit_collection
        from search.store import collection_name

        coll = collection_name(model)
        with self.session() as store:
            if not store.has_collection(coll):
                raise NoCollection(f"no collection for model {model!r} at {store.location}")
            step = (lambda i, n: progress("audit", i, n)) if progress else None
            return [p.to_dict() for p in audit_collection(store, coll, options, step)]

    def volumes(self, model: str | None = None,
                filters: Mapping[str, Sequence[str]] | None = None) -> list[VolumeInfo]:
        from search.store import collection_name
        from search.volumes import check_filters, list_volumes

        check_filters(filters)
        with self.session() as store:
            colls = [collection_name(model)] if model else None
            if colls and not store.has_collection(colls[0]):
                raise NoCollection(f"no collection for model {model!r} at {store.location}")
            return list_volumes(store, colls, filters)

    def volume_ids(self, model: str) -> list[str]:
        from search.store import READY, collection_name

        coll = collection_name(model)
        with self.session() as store:
            if not store.has_collection(coll):
                return []
            return sorted(str(v) for v in store.facet(coll, "volume_id", READY,
                                                      limit=1_000_000))

    def prune(self, apply: bool) -> PruneResult:
        """Every volume's source checked (present, gone, unknown) and, with ``apply``, the
        gone ones deleted. The checks (a PACS may be slow) run between two store sessions; the
        second deletes a volume only if nothing was written to it since it was listed."""
        from runner.pacs_sources import check_pacs_sources
        from search.volumes import GONE, PruneResult, check_sources, list_volumes, prune

        with self.session() as store:
            volumes = list_volumes(store)
        pacs = self.settings.pacs
        result = PruneResult(check_sources(volumes, lambda s: check_pacs_sources(s, pacs)),
                             applied=apply)
        gone = [c.volume for c in result.checks if c.state == GONE]
        if apply and gone:
            with self.session() as store:
                result.removed_points = prune(store, gone)
        return result

    def migrate(self, roots: Sequence[Path]) -> dict[str, int]:
        """Upgrade a store written before volume identities (in place, no re-embedding)."""
        from search.volumes import migrate

        with self.session() as store:
            return migrate(store, roots)

    def jobs(self, ids: Sequence[str]) -> list[JobState]:
        """In-process work has no jobs: it is done when ``ingest`` returns."""
        return []

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


class NoCollection(MedirError):
    """The store has no collection for the model asked for."""
