"""The Celery tasks and the worker process's state: one model per name, one store, both lazy.

Tasks are thin adapters over the worker process's :class:`runner.local.LocalRunner`:
``ingest_volume`` reads one 3D volume and hands it to ``LocalRunner.index_one``;
``search_volume`` is ``LocalRunner.search`` (the same code as an in-process query);
``store_stats``, ``audit_duplicates``, ``list_volumes``, ``volume_ids``, ``prune_volumes`` and
``migrate_store`` are ``LocalRunner.stats``, ``audit``, ``volumes``, ``volume_ids``, ``prune``
and ``migrate`` on the store this process owns, their answers as plain JSON. The tasks add only
the queue's failure policy and the job records.

GPU safety: nothing here touches CUDA or loads weights at import. The embedders and the store
are created on first use inside the process that runs tasks (after fork for a prefork child;
``worker_process_init`` drops anything inherited from a parent), then kept for the life of the
process. The embedded store allows one process: in that mode the worker process owns it and
keeps it open across tasks, and ``worker_init`` takes an owner lock so a second worker on the
same store path refuses to start instead of failing every task.

Failures: :class:`~medir.errors.StoreUnavailable` and connection errors are retried with
exponential backoff; any other :class:`~medir.errors.MedirError` (a bad file, an unknown model,
missing weights) fails the task at once as :class:`~runner.queue.TaskFailed` with its message.

Trust: a worker runs no message as it comes. Every task's arguments are checked first
(:mod:`runner.queue.checks`: files inside the worker's folders, its own PACS, bounded fields);
a message that breaks a rule fails as :class:`~runner.queue.TaskRefused`, recorded in its job.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from celery import Celery, Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from medir.config import Settings, get_settings
from medir.errors import MedirError, StoreUnavailable
from runner.queue import (
    AUDIT_TASK,
    INGEST_TASK,
    MIGRATE_TASK,
    PRUNE_TASK,
    SEARCH_TASK,
    STATS_TASK,
    UNRECORDED_TASKS,
    VOLUME_IDS_TASK,
    VOLUMES_TASK,
    TaskFailed,
)

if TYPE_CHECKING:
    from runner.local import LocalRunner

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (StoreUnavailable, ConnectionError, TimeoutError)
OWNER_LOCK = ".medir-worker.lock"

T = TypeVar("T")


# ---- worker process state ------------------------------------------------------------------
class _ProcessState:
    """The process's settings (read once) and runner (its models and its kept-open store);
    the runner is dropped after a fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.settings: Settings | None = None
        self.runner: LocalRunner | None = None
        self.owner_lock: IO[str] | None = None

    def reset_if_forked(self) -> None:
        if self.pid != os.getpid():
            # inherited from the parent: never reuse a model (CUDA context) or a store handle
            self.pid = os.getpid()
            self.lock = threading.RLock()
            self.runner = None


_state = _ProcessState()


def worker_settings() -> Settings:
    """The worker process's settings: the worker's edge, read once per process, here only
    (``medir worker`` has set ``MEDIR_DEVICE`` before; a forked child inherits them)."""
    with _state.lock:
        if _state.settings is None:
            _state.settings = get_settings()
        return _state.settings


def worker_runner() -> LocalRunner:
    """The worker process's in-process runner: every task body runs on it; the store is opened
    once and kept open across tasks, each model loads once."""
    from runner.local import LocalRunner

    _state.reset_if_forked()
    with _state.lock:
        if _state.runner is None:
            _state.runner = LocalRunner(worker_settings(), keep_store_open=True)
        return _state.runner


def close_worker_state() -> None:
    """Flush and close the store (worker shutdown); models are simply dropped."""
    from runner.local import EMBEDDERS

    with _state.lock:
        if _state.runner is not None and _state.pid == os.getpid():
            try:
                _state.runner.close()
            except Exception as exc:  # shutting down: report, do not mask the exit
                log.warning("closing the store: %s", exc)
        _state.runner = None
        EMBEDDERS.clear()


def acquire_owner_lock(s: Settings) -> None:
    """In embedded-store mode, make this process the store's only worker (flock on a file in
    the store folder; the kernel releases it when the process dies, even by SIGKILL)."""
    if s.qdrant_url or _state.owner_lock is not None:
        return
    s.store_path.mkdir(parents=True, exist_ok=True)
    fh = open(s.store_path / OWNER_LOCK, "a+")  # noqa: SIM115 - held for the process life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreUnavailable(
            f"another medir worker owns the embedded store at {s.store_path}; the embedded "
            "store allows one worker process (set MEDIR_QDRANT_URL to run several)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _state.owner_lock = fh


@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    from runner.queue.worker import check_broker_auth

    try:
        check_broker_auth(worker_settings())  # `celery -A runner.queue.app worker` too
        acquire_owner_lock(worker_settings())
    except MedirError as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None  # Celery logs and swallows Exceptions from handlers


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Heartbeat, claims and the sweep that resumes dead workers' volumes (recovery.py)."""
    from runner.queue.recovery import start_recovery

    s = worker_settings()
    app = getattr(sender, "app", None)
    if app is None or not s.redis_url:
        return
    qs = s.queue
    try:
        start_recovery(app, s.redis_url, qs.heartbeat_ttl, qs.restore_interval,
                       exclusive=_state.owner_lock is not None)
    except Exception as exc:  # the broker's visibility timeout still redelivers, later
        log.warning("recovery not started: %s", exc)


@task_received.connect
def _on_task_received(request: Any = None, **_: Any) -> None:
    from runner.queue.recovery import current

    rec = current()
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    if rec is None or not tag:
        return
    try:
        rec.claim(str(tag))
    except Exception as exc:
        log.warning("cannot claim %s: %s", tag, exc)


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    _state.reset_if_forked()


@worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    close_worker_state()


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    from runner.queue.recovery import stop_recovery

    stop_recovery()
    close_worker_state()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_logs(**_: Any) -> None:
    """Celery configured its handlers: mask credentials in every record they write."""
    from medir.secrets import install_log_filter

    install_log_filter("celery", "celery.task", "celery.worker", "celery.app.trace")


# ---- task bodies ---------------------------------------------------------------------------
def _jobs() -> Any:
    from runner.queue.jobs import job_store

    try:
        return job_store(worker_settings())
    except Exception as exc:  # records are a convenience; the task must not fail for them
        log.warning("job records unavailable: %s", exc)
        return None


def _record(task: Task, **changes: Any) -> None:
    if task.name in UNRECORDED_TASKS:  # polled often; not a job anyone follows
        return
    jobs = _jobs()
    if jobs is not None and task.request.id:
        jobs.update(task.request.id, **changes)


def _refuse_poison(task: Task) -> None:
    """A message delivered more than ``MEDIR_QUEUE__MAX_DELIVERIES`` times killed the worker
    that ran it each time (OOM, SIGKILL, a crash in native code): fail it, with the reason,
    instead of redelivering it forever. A retry is a new message and starts a new count."""
    if task.name in UNRECORDED_TASKS or not task.request.id:
        return
    jobs = _jobs()
    if jobs is None:
        return
    n = jobs.count_delivery(task.request.id, task.request.retries or 0)
    limit = worker_settings().queue.max_deliveries
    if n > limit:
        from runner.queue.checks import shown

        args = list(task.request.args or [])
        what = (task.request.kwargs or {}).get("path") or (args[0] if args else "")
        msg = (f"{shown(what) + ': ' if what else ''}killed its worker {n - 1} times "
               f"(delivered {n} times; the limit is {limit}, MEDIR_QUEUE__MAX_DELIVERIES): "
               "not run again")
        _record(task, state="FAILURE", error=msg, finished=time.time())
        raise TaskFailed(msg)


def _run(task: Task, kind: str, body: Callable[[], T]) -> T:
    """Run a task body with medir's failure policy and job-record bookkeeping."""
    _refuse_poison(task)
    _record(task, state="STARTED", started=time.time(), kind=kind,
            worker=task.request.hostname or "", retries=task.request.retries, error="")
    try:
        result = body()
    except TRANSIENT as exc:
        qs = worker_settings().queue
        n = task.request.retries
        if n >= qs.max_retries:
            msg = f"gave up after {n} retries: {exc}"
            _record(task, state="FAILURE", error=msg, finished=time.time())
            raise TaskFailed(msg) from None
        delay = min(qs.retry_backoff * 2 ** n, qs.retry_backoff_max) * random.uniform(0.8, 1.2)
        _record(task, state="RETRY", error=f"{exc} (retry {n + 1} in {delay:.0f} s)")
        raise task.retry(exc=exc, countdown=delay, max_retries=qs.max_retries) from None
    except MedirError as exc:
        _record(task, state="FAILURE", error=str(exc), error_type=type(exc).__name__,
                finished=time.time())
        raise TaskFailed(str(exc), type(exc).__name__) from None
    except Exception as exc:
        _record(task, state="FAILURE", error=f"{type(exc).__name__}: {exc}",
                finished=time.time())
        raise
    _record(task, state="SUCCESS", finished=time.time())
    return result


def ingest_volume_body(
    task: Task,
    path: str,
    index_4d: int | None,
    model: str,
    labels: Mapping[str, str] | None = None,
    intensity: str | None = None,
    volume_id: str | None = None,
    force: bool = False,
    files: list[str] | None = None,
) -> dict[str, Any]:
    """Index one 3D volume (``index_4d`` of a 4D file, or the DICOM series of ``files``) under
    the volume id the client's folder walk gave; returns the ingest report."""
    from ingest.collection import file_source, source_for_job
    from ingest.dicomweb import is_dicomweb_source, open_pacs_source
    from runner.base import IngestOptions

    runner = worker_runner()
    s = runner.settings
    t0 = time.perf_counter()
    # a PACS series (source URL without credentials; the worker authenticates itself)
    if is_dicomweb_source(path):
        vf = open_pacs_source(path, s)
    else:
        src = (source_for_job(path, volume_id, index_4d, files) if volume_id
               else file_source(path))
        vf = src.open(runner.limits)
    vol = vf.read(index_4d if vf.is_4d else None)
    vol.labels = dict(labels or {})
    last = [0.0]

    def progress(volume_id: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.25:
            return
        last[0] = now
        meta = {"done": done, "total": total, "volume_id": volume_id}
        task.update_state(state="PROGRESS", meta=meta)
        _record(task, state="PROGRESS", done=done, total=total)

    _record(task, volume=vol.volume_id, total=vol.n_slices, done=0)
    options = IngestOptions(model=model, intensity=intensity or s.intensity, force=force,
                            labels={vol.volume_id: dict(labels)} if labels is not None else None)
    report = runner.index_one(vol, options, progress)
    out = report.to_dict()
    seconds = time.perf_counter() - t0
    out["task_seconds"] = seconds
    out["model"] = model
    _record(task, done=report.n_slices, total=report.n_slices)
    return out


def search_volume_body(
    volume: str,
    model: str,
    options: Mapping[str, Any],
    by_id: bool = False,
    index_4d: int | None = None,
) -> dict[str, Any]:
    """The server-side vote: :meth:`runner.local.LocalRunner.search` on the worker's runner."""
    from search.query import QueryOptions

    opts = QueryOptions.from_dict(options)
    return worker_runner().search(volume, opts, model=model, by_id=by_id, index_4d=index_4d)


def audit_body(model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The near-duplicate audit on the worker's store (:meth:`LocalRunner.audit`)."""
    from search.audit import AuditOptions

    return {"pairs": worker_runner().audit(model, AuditOptions(**options))}


def store_stats_body() -> dict[str, Any]:
    """Collections, volumes and points (complete and all) of the worker's store, counted in one
    consistent snapshot (no upsert between the counts and facets of one answer)."""
    return worker_runner().stats()


def volumes_body(model: str | None, filters: Mapping[str, list[str]]) -> dict[str, Any]:
    """The indexed volumes of the worker's store (:meth:`LocalRunner.volumes`), as rows."""
    return {"volumes": [v.to_dict() for v in worker_runner().volumes(model, filters)]}


def volume_ids_body(model: str) -> dict[str, Any]:
    """Ids of one model's complete volumes (:meth:`LocalRunner.volume_ids`)."""
    return {"ids": worker_runner().volume_ids(model)}


def prune_body(apply: bool) -> dict[str, Any]:
    """Every volume's source checked from this worker, the gone ones deleted with ``apply``
    (:meth:`LocalRunner.prune`); every check, present ones included."""
    return worker_runner().prune(apply).to_wire()


def migrate_body(roots: list[Path]) -> dict[str, Any]:
    """The worker's store upgraded in place (:meth:`LocalRunner.migrate`)."""
    return {"migrated": worker_runner().migrate(roots)}


def register_tasks(app: Celery) -> None:
    """Register medir's tasks on ``app`` under fixed names (clients send them by name)."""

    @app.task(bind=True, name=INGEST_TASK, acks_late=True, reject_on_worker_lost=True)
    def ingest_volume(self: Task, path: str, index_4d: int | None = None,
                      model: str | None = None, labels: Mapping[str, str] | None = None,
                      intensity: str | None = None, volume_id: str | None = None,
                      force: bool = False, files: list[str] | None = None) -> dict[str, Any]:
        """Index one 3D volume of a file; progress in the task state (PROGRESS)."""
        from runner.queue.checks import check_ingest, shown

        s = worker_settings()
        name = model or s.model
        _record(self, file=shown(path), model=shown(name))

        def body() -> dict[str, Any]:
            a = check_ingest(s, path, index_4d, name, labels, intensity, volume_id, force, files)
            return ingest_volume_body(self, a.path, a.index_4d, a.model, a.labels, a.intensity,
                                      a.volume_id, a.force, a.files)

        return _run(self, "ingest", body)

    @app.task(bind=True, name=SEARCH_TASK, acks_late=True, reject_on_worker_lost=True)
    def search_volume(self: Task, volume: str, model: str | None = None,
                      options: Mapping[str, Any] | None = None, by_id: bool = False,
                      index_4d: int | None = None) -> dict[str, Any]:
        """Rank indexed volumes against a query volume (a file the worker can read, or an id)."""
        from runner.queue.checks import check_search

        s = worker_settings()
        name = model or s.model

        def body() -> dict[str, Any]:
            a = check_search(s, volume, name, options, by_id, index_4d)
            return search_volume_body(a.volume, a.model, a.options, a.by_id, a.index_4d)

        return _run(self, "search", body)

    @app.task(bind=True, name=AUDIT_TASK, acks_late=True, reject_on_worker_lost=True)
    def audit_duplicates(self: Task, model: str | None = None,
                         options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Near-duplicate pairs of one model's collection in the store the worker owns."""
        from runner.queue.checks import check_audit

        s = worker_settings()

        def body() -> dict[str, Any]:
            a = check_audit(s, model, options)
            return audit_body(a.model, a.options)

        return _run(self, "audit", body)

    @app.task(bind=True, name=STATS_TASK, acks_late=True, reject_on_worker_lost=True)
    def store_stats(self: Task) -> dict[str, Any]:
        """Collections, volumes and points of the store the worker owns."""
        return _run(self, "stats", store_stats_body)

    @app.task(bind=True, name=VOLUMES_TASK, acks_late=True, reject_on_worker_lost=True)
    def list_volumes(self: Task, model: str | None = None,
                     filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The indexed volumes of the store the worker owns (one model's, label filters)."""
        from runner.queue.checks import check_volumes

        def body() -> dict[str, Any]:
            a = check_volumes(model, filters)
            return volumes_body(a.model, a.filters)

        return _run(self, "volumes", body)

    @app.task(bind=True, name=VOLUME_IDS_TASK, acks_late=True, reject_on_worker_lost=True)
    def volume_ids(self: Task, model: str | None = None) -> dict[str, Any]:
        """Ids of one model's complete volumes in the store the worker owns."""
        from runner.queue.checks import check_volume_ids

        s = worker_settings()
        return _run(self, "volume_ids", lambda: volume_ids_body(check_volume_ids(s, model)))

    @app.task(bind=True, name=PRUNE_TASK, acks_late=True, reject_on_worker_lost=True)
    def prune_volumes(self: Task, apply: bool = False) -> dict[str, Any]:
        """Volumes whose sources are gone, checked (and with ``apply`` deleted) here."""
        from runner.queue.checks import check_prune

        return _run(self, "prune", lambda: prune_body(check_prune(apply)))

    @app.task(bind=True, name=MIGRATE_TASK, acks_late=True, reject_on_worker_lost=True)
    def migrate_store(self: Task, roots: list[str] | None = None) -> dict[str, Any]:
        """Upgrade the store the worker owns (written before volume identities)."""
        from runner.queue.checks import check_migrate

        s = worker_settings()
        return _run(self, "migrate", lambda: migrate_body(check_migrate(s, roots)))
