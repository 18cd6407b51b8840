"""Ingest jobs in queue mode: submit files to the Celery queue and read each job's record.

The queue (``ingest.queue``) is imported lazily, only when a broker is configured, so the UI
works without Celery or Redis in in-process mode. A job is one ``ingest_volume`` task (one 3D
volume); its record in Redis (:mod:`ingest.queue.jobs`) carries the state, the slices done and
the error, written by the worker. Failing to reach Redis becomes
:class:`~ui.backend.QueueUnavailable`; jobs nobody picks up raise :class:`NoWorker`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingest.collection import VolumeSource
from medir.config import Settings
from ui.backend import QueueUnavailable, _queue_calls

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")
NO_WORKER_AFTER_S = 10.0


class NoWorker(QueueUnavailable):
    """Jobs wait in the queue and no worker answers a ping."""


@dataclass
class JobState:
    """Where one ingest job stands."""

    id: str
    name: str
    state: str  # PENDING | STARTED | PROGRESS | RETRY | SUCCESS | FAILURE | REVOKED
    done: int = 0
    total: int = 0
    error: str = ""
    submitted: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float:
        if self.state == "SUCCESS":
            return 1.0
        return min(self.done / self.total, 1.0) if self.total else 0.0


def submit(settings: Settings, files: Sequence[VolumeSource | Path],
           model: str, labels: Mapping[str, Mapping[str, str]] | None) -> list[str]:
    """Submit one ingest job per volume of ``files``; returns the job (task) ids."""
    with _queue_calls(settings):
        from rich.console import Console

        from ingest.queue.jobs import job_store
        from ingest.queue.submit import submit_ingest

        paths = [(f.path if isinstance(f, VolumeSource) else Path(f)).expanduser().resolve()
                 for f in files]
        since = time.time() - 1.0
        quiet = Console(file=io.StringIO(), width=200)
        submit_ingest(list(files), model, labels, wait=False, console=quiet)
        wanted = {str(p) for p in paths}
        recent = job_store(settings.redis_url).recent(limit=max(200, 4 * len(paths)),
                                                      kind="ingest")
        return [j.id for j in reversed(recent) if j.file in wanted and j.submitted >= since]


def states(settings: Settings, ids: Sequence[str]) -> list[JobState]:
    """The current state of each job (from its record; unknown ids read as PENDING)."""
    with _queue_calls(settings):
        from ingest.queue.jobs import job_store

        store = job_store(settings.redis_url)
        out = []
        for i in ids:
            job = store.get(i)
            if job is None:
                out.append(JobState(i, i, "PENDING"))
                continue
            name = job.volume or Path(job.file).name or i
            out.append(JobState(i, name, job.state, job.done, job.total, job.error,
                                job.submitted))
        return out


def check_worker(settings: Settings, jobs: Sequence[JobState]) -> None:
    """Raise :class:`NoWorker` when every job has waited a while and no worker answers."""
    waiting = [j for j in jobs if j.state == "PENDING"]
    if not jobs or len(waiting) < len(jobs):
        return
    if time.time() - min(j.submitted or time.time() for j in waiting) < NO_WORKER_AFTER_S:
        return
    with _queue_calls(settings):
        from ingest.queue.app import get_app

        try:
            alive = bool(get_app().control.ping(timeout=1.0))
        except Exception:
            alive = False
    if not alive:
        raise NoWorker(f"{len(waiting)} job(s) wait in the queue at {settings.redis_url} and no "
                       "worker answers: start one with `medir worker` (the jobs will run then).")
