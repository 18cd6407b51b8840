"""How submitted jobs stand, read from the result backend: the queued runner's progress events.

:func:`watch_jobs` looks at each job's Celery result (its state, the ``PROGRESS`` meta a worker
writes while it embeds, the report once it succeeded, the error once it failed) and hands every
look to its caller as a :class:`runner.base.JobsUpdate`. It draws nothing: the command line
renders the updates (``medir/cli/progress.py``), a test waits on them, so the runner needs no
terminal library. When no job has started :data:`runner.base.NO_WORKER_HINT_S` after the watch
began, it asks once whether any worker answers a ping and says so in the updates
(``no_worker``) instead of printing it.

The result backend, not the job records, is read here: only it holds an ingest job's report
(indexed or skipped, slices, seconds), which the command line prints per volume.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from runner.base import NO_WORKER_HINT_S, POLL_S, JobState, JobsUpdate, UpdateFn
from runner.queue import TaskFailed

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult


def task_error(res: AsyncResult) -> str:
    """The one line a failed task left: its exception's message, or its state."""
    info = res.info
    if isinstance(info, BaseException):
        return str(info) or type(info).__name__
    return str(info or res.state)


def workers_alive(app: Celery) -> bool:
    """Whether any worker answers a ping within a second (a broker error reads as none)."""
    try:
        return bool(app.control.ping(timeout=1.0))
    except Exception:
        return False


def job_state(res: AsyncResult, job_id: str, name: str, last: JobState | None = None) -> JobState:
    """Where one job stands now, from its result; ``last`` is the previous look (slices done
    stay known between the worker's progress reports)."""
    state = res.state
    done, total = (last.done, last.total) if last is not None else (0, 0)
    if state == "PROGRESS":
        info = res.info
        if isinstance(info, dict):
            done, total = int(info.get("done", 0)), int(info.get("total", 0))
        return JobState(job_id, name, state, done, total)
    if state == "SUCCESS":
        result = res.result
        return JobState(job_id, name, state, done, total,
                        result=dict(result) if isinstance(result, dict) else {})
    if state in ("FAILURE", "REVOKED"):
        info = res.info
        kind = info.kind if isinstance(info, TaskFailed) else ""
        return JobState(job_id, name, state, done, total, task_error(res), error_type=kind)
    return JobState(job_id, name, state, done, total)


def watch_jobs(app: Celery, ids: Sequence[str], names: Mapping[str, str],
               on_update: UpdateFn | None = None, *, poll_s: float = POLL_S,
               hint_s: float = NO_WORKER_HINT_S) -> bool:
    """Look at the jobs ``ids`` (shown as ``names``) every ``poll_s`` seconds until all
    finished, handing each look to ``on_update``; True when every one succeeded. A finished
    job is not read again."""
    results = {i: app.AsyncResult(i) for i in ids}
    states: dict[str, JobState] = {}
    t0 = time.monotonic()
    started = checked = False
    no_worker = False
    while True:
        for i in ids:
            last = states.get(i)
            if last is None or not last.finished:
                states[i] = job_state(results[i], i, names.get(i, i), last)
        update_jobs = [states[i] for i in ids]
        started = started or any(j.started for j in update_jobs)
        waited = time.monotonic() - t0
        if not started and not checked and waited > hint_s:
            checked = True
            no_worker = not workers_alive(app)
        update = JobsUpdate(update_jobs, waited, no_worker and not started)
        if on_update is not None:
            on_update(update)
        if update.finished:
            return update.succeeded
        time.sleep(poll_s)
