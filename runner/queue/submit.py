"""The client side of the queue: submit ingest jobs; queries and store maintenance through a
worker (the one that owns the embedded store). How submitted jobs stand is :mod:`.watch`.

Paths are sent as absolute paths: a worker must see the same files (same machine, or the same
mount in every container). Jobs carry the volume id the folder walker
(:func:`ingest.collection.scan_paths`) gave, so queued and in-process ingests use the same ids;
a DICOM series' job carries its files. A 4D file becomes one task per 3D volume. A file the
client cannot open is still submitted, so its task fails in the worker with the reason, like
any other job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from ingest.collection import VolumeSource
from medir.config import Settings
from medir.errors import MedirError, StoreUnavailable, VolumeError, error_named
from runner.queue import (
    AUDIT_TASK,
    INGEST_QUEUE,
    INGEST_TASK,
    MIGRATE_TASK,
    PRUNE_TASK,
    SEARCH_QUEUE,
    SEARCH_TASK,
    STATS_TASK,
    VOLUME_IDS_TASK,
    VOLUMES_TASK,
    TaskFailed,
)
from runner.queue.watch import task_error

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

    from ingest.dicomweb import PacsSeries
    from ingest.reader import Limits
    from search.audit import AuditOptions
    from search.query import QueryOptions
    from search.volumes import PruneResult, VolumeInfo

#: How much longer than a query a client waits for a task that walks a whole collection (the
#: audit; prune, which may ask a PACS about every series; migrate).
LONG_TASK_FACTOR = 6
T = TypeVar("T")


@dataclass
class VolumeJob:
    """One submitted ``ingest_volume`` task."""

    task_id: str
    path: str
    index_4d: int | None
    volume_id: str
    labels: dict[str, str] | None = None  # None: no labels table (keep the stored labels)
    files: list[str] = field(default_factory=list)  # a DICOM series' files


def _app(settings: Settings) -> Celery:
    """The Celery app of the settings, its broker checked."""
    from runner.queue.app import get_app

    app = get_app(settings)
    check_broker(settings.redis_url or "")
    return app


def check_broker(url: str) -> None:
    """Fail with one clear line when the broker does not answer."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.RedisError as exc:
        raise StoreUnavailable(f"the queue broker at {_safe_url(url)} does not answer ({exc}); "
                               "start redis-server, or unset MEDIR_REDIS_URL to work "
                               "in-process") from None


def _safe_url(url: str) -> str:
    """The URL without its password (for messages)."""
    from medir.secrets import safe_url

    return safe_url(url)


def expand_files(sources: Sequence[VolumeSource | Path],
                 labels: Mapping[str, Mapping[str, str]] | None,
                 limits: Limits | None = None) -> list[VolumeJob]:
    """One job per 3D volume: a 4D file gives one per index of its 4th axis (``limits``: what
    a file may declare, the settings')."""
    from ingest.collection import file_source, labels_for

    jobs: list[VolumeJob] = []
    for item in sources:
        src = item if isinstance(item, VolumeSource) else file_source(item)
        path = src.path.expanduser().resolve()
        try:
            vf = src.open(limits)
            ids = vf.volume_ids()
            indices: list[int | None] = list(range(vf.n_volumes)) if vf.is_4d else [None]
        except VolumeError:
            ids, indices = [src.volume_id], [None]
        files = [str(f.resolve()) for f in src.files] if src.series is not None else []
        for vid, k in zip(ids, indices, strict=True):
            jobs.append(VolumeJob(str(uuid.uuid4()), str(path), k, vid,
                                  labels_for(labels, vid, src) if labels is not None else None,
                                  files))
    return jobs


def submit_jobs(
    files: Sequence[VolumeSource | Path],
    model: str,
    labels: Mapping[str, Mapping[str, str]] | None,
    *,
    intensity: str,
    settings: Settings,
    force: bool = False,
    limits: Limits | None = None,
) -> list[VolumeJob]:
    """Submit one ``ingest_volume`` task per 3D volume of ``files`` to the queue of the
    ``settings``; returns the jobs (their ``task_id`` is the job id ``medir jobs`` and the job
    records know)."""
    from runner.queue.jobs import Job, job_store

    app = _app(settings)
    jobs = expand_files(files, labels, limits)
    records = job_store(settings)
    for j in jobs:
        records.create(Job(j.task_id, kind="ingest", file=j.path, volume=j.volume_id,
                           model=model))
        app.send_task(INGEST_TASK, task_id=j.task_id, queue=INGEST_QUEUE, kwargs={
            "path": j.path, "index_4d": j.index_4d, "model": model, "labels": j.labels,
            "intensity": intensity, "volume_id": j.volume_id, "force": force,
            "files": j.files,
        })
    return jobs


def _wait(res: AsyncResult, timeout: float, what: str) -> dict[str, Any]:
    """Wait for a query-like task; its failure becomes a MedirError with the worker's line."""
    deadline = time.monotonic() + timeout
    while not res.ready():
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"{what}: no answer from a worker within {timeout:.0f} s; "
                                   f"is `medir worker` running on queue {SEARCH_QUEUE!r}?")
        time.sleep(0.05)
    if res.state != "SUCCESS":
        info = res.info
        if isinstance(info, TaskFailed) and info.kind:  # the worker's error, same class
            raise error_named(info.kind, str(info))
        raise MedirError(task_error(res))
    out = res.result
    res.forget()
    if not isinstance(out, dict):
        raise MedirError(f"{what}: unexpected answer {out!r}")
    return out


def submit_search(
    volume: str,
    model: str,
    options: QueryOptions,
    *,
    by_id: bool,
    index_4d: int | None,
    settings: Settings,
) -> dict[str, Any]:
    """Run a volume query on a worker; the same dict as ``LocalRunner.search``."""
    app = _app(settings)
    target = volume if by_id else str(Path(volume).expanduser().resolve())
    if not by_id and not Path(target).exists():
        raise VolumeError(target, "no such file")
    res = app.send_task(SEARCH_TASK, queue=SEARCH_QUEUE, kwargs={
        "volume": target, "model": model, "options": options.to_dict(), "by_id": by_id,
        "index_4d": index_4d,
    })
    return _wait(res, settings.queue.search_timeout, f"query {volume}")


def submit_audit(model: str, options: AuditOptions, settings: Settings) -> list[dict[str, Any]]:
    """The near-duplicate audit of one model's collection, run by the worker that owns it."""
    app = _app(settings)
    res = app.send_task(AUDIT_TASK, queue=SEARCH_QUEUE,
                        kwargs={"model": model, "options": options.to_dict()})
    out = _wait(res, settings.queue.search_timeout * LONG_TASK_FACTOR, f"audit of {model}")
    pairs = out.get("pairs")
    if not isinstance(pairs, list):
        raise MedirError(f"audit of {model}: unexpected answer")
    return pairs


def submit_stats(settings: Settings, timeout: float | None = None) -> dict[str, Any]:
    """Collections, volumes and points of the store a worker owns."""
    app = _app(settings)
    res = app.send_task(STATS_TASK, queue=SEARCH_QUEUE)
    return _wait(res, timeout or settings.queue.search_timeout, "store statistics")


def submit_volumes(model: str | None, filters: Mapping[str, Sequence[str]] | None,
                   settings: Settings) -> list[VolumeInfo]:
    """The indexed volumes of the store a worker owns (``LocalRunner.volumes`` there), read
    back into the same :class:`~search.volumes.VolumeInfo` rows."""
    from search.volumes import VolumeInfo

    app = _app(settings)
    wire = {k: list(v) for k, v in (filters or {}).items()}
    res = app.send_task(VOLUMES_TASK, queue=SEARCH_QUEUE,
                        kwargs={"model": model, "filters": wire})
    out = _wait(res, settings.queue.search_timeout, "volume listing")
    return _answer("volume listing", lambda: [VolumeInfo.from_dict(v) for v in out["volumes"]])


def submit_volume_ids(model: str, settings: Settings) -> list[str]:
    """Ids of the complete volumes of one model in the store a worker owns."""
    app = _app(settings)
    res = app.send_task(VOLUME_IDS_TASK, queue=SEARCH_QUEUE, kwargs={"model": model})
    out = _wait(res, settings.queue.search_timeout, f"volume ids of {model}")
    ids = out.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise MedirError(f"volume ids of {model}: unexpected answer")
    return ids


def submit_prune(apply: bool, settings: Settings) -> PruneResult:
    """Every volume's source checked by the worker that owns the store (the sources are
    paths it read, PACS series of its settings); with ``apply`` the gone ones deleted there."""
    from search.volumes import PruneResult

    app = _app(settings)
    res = app.send_task(PRUNE_TASK, queue=SEARCH_QUEUE, kwargs={"apply": apply})
    out = _wait(res, settings.queue.search_timeout * LONG_TASK_FACTOR, "prune")
    return _answer("prune", lambda: PruneResult.from_wire(out))


def submit_migrate(roots: Sequence[Path], settings: Settings) -> dict[str, int]:
    """Upgrade the store a worker owns (``LocalRunner.migrate`` there). The roots are sent
    absolute, as this process names them (``~`` and the working folder resolved here)."""
    app = _app(settings)
    wire = [str(Path(r).expanduser().absolute()) for r in roots]
    res = app.send_task(MIGRATE_TASK, queue=SEARCH_QUEUE, kwargs={"roots": wire})
    out = _wait(res, settings.queue.search_timeout * LONG_TASK_FACTOR, "migrate")
    return _answer("migrate", lambda: {str(k): int(v) for k, v in out["migrated"].items()})


def _answer(what: str, read: Callable[[], T]) -> T:
    """A worker's answer read back into its type; a malformed one is one line."""
    try:
        return read()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MedirError(f"{what}: unexpected answer from the worker ({exc})") from None


def submit_series(series: Sequence[PacsSeries], model: str, intensity: str,
                  settings: Settings,
                  labels: Mapping[str, Mapping[str, str]] | None = None) -> list[VolumeJob]:
    """One ``ingest_volume`` task per PACS series; returns the submitted jobs. The task's
    ``path`` is the series' source URL, without credentials: the worker authenticates with
    its own settings. Each task carries its series' row of the ``labels`` table (None: no
    table, the worker keeps the labels stored for the series), as a file's job does."""
    from ingest.collection import labels_for
    from runner.queue.jobs import Job, job_store

    app = _app(settings)
    records = job_store(settings)
    jobs = []
    for s in series:
        rows = labels_for(labels, s.volume_id) if labels is not None else None
        job = VolumeJob(str(uuid.uuid4()), s.source, None, s.volume_id, labels=rows)
        records.create(Job(job.task_id, kind="ingest", file=s.source, volume=s.volume_id,
                           model=model))
        app.send_task(INGEST_TASK, task_id=job.task_id, queue=INGEST_QUEUE, kwargs={
            "path": s.source, "index_4d": None, "model": model, "labels": rows,
            "intensity": intensity,
        })
        jobs.append(job)
    return jobs
