"""The client side of the queue: submit ingest jobs and follow them, queries through a worker.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ingest.collection import VolumeSource
from medir.config import Settings
from medir.errors import MedirError, StoreUnavailable, VolumeError, error_named
from medir.terminal import safe_text
from runner.queue import (
    AUDIT_TASK,
    INGEST_QUEUE,
    INGEST_TASK,
    SEARCH_QUEUE,
    SEARCH_TASK,
    STATS_TASK,
    TaskFailed,
)

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

    from ingest.dicomweb import PacsSeries
    from ingest.reader import Limits
    from search.audit import AuditOptions
    from search.query import QueryOptions

POLL_S = 0.5
NO_WORKER_HINT_S = 10.0


@dataclass
class VolumeJob:
    """One submitted ``ingest_volume`` task."""

    task_id: str
    path: str
    index_4d: int | None
    volume_id: str
    labels: dict[str, str] | None = None  # None: no labels table (keep the stored labels)
    files: list[str] = field(default_factory=list)  # a DICOM series' files
    state: str = "PENDING"
    done: int = 0
    total: int = 0
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)


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


def submit_ingest(
    files: Sequence[VolumeSource | Path],
    model: str,
    labels: Mapping[str, Mapping[str, str]] | None,
    *,
    wait: bool,
    console: Console,
    settings: Settings,
    force: bool = False,
    intensity: str | None = None,
) -> bool:
    """Submit one ``ingest_volume`` task per 3D volume; follow them unless ``wait`` is false.

    Returns True when every task succeeded (or, without waiting, when all were submitted).
    """
    jobs = submit_jobs(files, model, labels, intensity=intensity or settings.intensity,
                       settings=settings, force=force)
    console.print(f"submitted {len(jobs)} volume(s) from {len(files)} file(s) to queue "
                  f"{INGEST_QUEUE!r} (model {safe_text(model)})", highlight=False)
    if not wait:
        for j in jobs:
            console.print(f"  {j.task_id}  {safe_text(j.volume_id)}", highlight=False)
        console.print("follow them with: medir jobs", highlight=False)
        return True
    return follow(_app(settings), jobs, console)


def follow(app: Celery, jobs: list[VolumeJob], console: Console) -> bool:
    """Show per-volume progress and the total slices/s until every job finished."""
    results = {j.task_id: app.AsyncResult(j.task_id) for j in jobs}
    pending = {j.task_id: j for j in jobs}
    rows: dict[str, TaskID] = {}
    t0 = time.monotonic()
    first_start: float | None = None
    slices_done = 0  # slices embedded by finished volumes (indexed, not skipped)
    warned = False
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=False) as bar:
        overall = bar.add_task("volumes", total=len(jobs), info="")
        while pending:
            running = 0
            for tid, j in list(pending.items()):
                res = results[tid]
                state = res.state
                if state == "PROGRESS" and isinstance(res.info, dict):
                    first_start = first_start or time.monotonic()
                    j.done, j.total = int(res.info.get("done", 0)), int(res.info.get("total", 0))
                    if tid not in rows:
                        rows[tid] = bar.add_task(f"  {safe_text(j.volume_id[:40])}",
                                                 total=j.total or 1, info="")
                    bar.update(rows[tid], completed=j.done, total=j.total or 1)
                    running += j.done
                elif state == "STARTED":
                    first_start = first_start or time.monotonic()
                elif state in ("SUCCESS", "FAILURE", "REVOKED"):
                    j.state = state
                    if state == "SUCCESS" and isinstance(res.result, dict):
                        j.result = res.result
                        if j.result.get("status") == "indexed":
                            slices_done += int(j.result.get("n_slices", 0))
                        msg = (f"{safe_text(j.result.get('status', 'done')):8s} "
                               f"{safe_text(j.volume_id)} "
                               f"({j.result.get('n_slices', 0)} slices, "
                               f"{float(j.result.get('task_seconds', 0)):.1f} s)")
                        bar.console.print(msg, highlight=False)
                    else:
                        j.error = _error_of(res)
                        bar.console.print(f"[red]failed[/]   {safe_text(j.volume_id)}: "
                                          f"{safe_text(j.error)}", highlight=False)
                    if tid in rows:
                        bar.remove_task(rows.pop(tid))
                    del pending[tid]
                    bar.advance(overall)
            elapsed = time.monotonic() - (first_start or t0)
            rate = (slices_done + running) / elapsed if first_start and elapsed > 0 else 0.0
            bar.update(overall, info=f"{rate:.1f} slices/s")
            if pending and not first_start and not warned and \
                    time.monotonic() - t0 > NO_WORKER_HINT_S:
                warned = True
                if not _workers_alive(app):
                    bar.console.print("[yellow]no worker answers: start one with "
                                      "`medir worker` (the jobs wait in the queue)[/]")
            if pending:
                time.sleep(POLL_S)
    failed = [j for j in jobs if j.state != "SUCCESS"]
    total_s = time.monotonic() - t0
    rate = slices_done / max(time.monotonic() - (first_start or t0), 1e-9)
    console.print(f"{len(jobs) - len(failed)} of {len(jobs)} volume(s) done in {total_s:.1f} s, "
                  f"{slices_done} slices embedded ({rate:.1f} slices/s)", highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} volume(s) failed[/], the others were indexed")
    return not failed


def _error_of(res: AsyncResult) -> str:
    info = res.info
    if isinstance(info, BaseException):
        return str(info) or type(info).__name__
    return str(info or res.state)


def _workers_alive(app: Celery) -> bool:
    try:
        return bool(app.control.ping(timeout=1.0))
    except Exception:
        return False


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
        raise MedirError(_error_of(res))
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
    out = _wait(res, settings.queue.search_timeout * 6, f"audit of {model}")
    pairs = out.get("pairs")
    if not isinstance(pairs, list):
        raise MedirError(f"audit of {model}: unexpected answer")
    return pairs


def submit_stats(settings: Settings, timeout: float | None = None) -> dict[str, Any]:
    """Collections, volumes and points of the store a worker owns."""
    app = _app(settings)
    res = app.send_task(STATS_TASK, queue=SEARCH_QUEUE)
    return _wait(res, timeout or settings.queue.search_timeout, "store statistics")


def submit_series(series: Sequence[PacsSeries], model: str, intensity: str,
                  settings: Settings) -> list[VolumeJob]:
    """One ``ingest_volume`` task per PACS series; returns the submitted jobs. The task's
    ``path`` is the series' source URL, without credentials: the worker authenticates with
    its own settings."""
    from runner.queue.jobs import Job, job_store

    app = _app(settings)
    records = job_store(settings)
    jobs = []
    for s in series:
        job = VolumeJob(str(uuid.uuid4()), s.source, None, s.volume_id)
        records.create(Job(job.task_id, kind="ingest", file=s.source, volume=s.volume_id,
                           model=model))
        app.send_task(INGEST_TASK, task_id=job.task_id, queue=INGEST_QUEUE, kwargs={
            "path": s.source, "index_4d": None, "model": model, "labels": {},
            "intensity": intensity,
        })
        jobs.append(job)
    return jobs
