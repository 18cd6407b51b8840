"""Ingest jobs in queue mode: submit files through the runner and read each job's state.

The runner (:class:`runner.queued.QueueRunner`) returns the job id of every ``ingest_volume``
task it submits (one per 3D volume); the worker writes each job's record in Redis (state,
slices done, error). Failing to reach Redis becomes :class:`~ui.backend.QueueUnavailable`;
jobs nobody picks up raise :class:`NoWorker`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from medir.config import Settings
from runner import IngestOptions, JobState, get_runner
from runner.library import VolumeSource
from ui.backend import QueueUnavailable, queue_calls

NO_WORKER_AFTER_S = 10.0

__all__ = ["JobState", "NoWorker", "check_worker", "states", "submit"]


class NoWorker(QueueUnavailable):
    """Jobs wait in the queue and no worker answers a ping."""


def submit(settings: Settings, files: Sequence[VolumeSource | Path],
           model: str, labels: Mapping[str, Mapping[str, str]] | None) -> list[str]:
    """Submit one ingest job per volume of ``files``; returns the job (task) ids."""
    options = IngestOptions(model=model, intensity=settings.intensity, labels=labels)
    with queue_calls(settings):
        return get_runner(settings).ingest(list(files), options).job_ids


def states(settings: Settings, ids: Sequence[str]) -> list[JobState]:
    """The current state of each job (from its record; unknown ids read as PENDING)."""
    with queue_calls(settings):
        return get_runner(settings).jobs(ids)


def check_worker(settings: Settings, jobs: Sequence[JobState]) -> None:
    """Raise :class:`NoWorker` when every job has waited a while and no worker answers."""
    waiting = [j for j in jobs if j.state == "PENDING"]
    if not jobs or len(waiting) < len(jobs):
        return
    if time.time() - min(j.submitted or time.time() for j in waiting) < NO_WORKER_AFTER_S:
        return
    with queue_calls(settings):
        alive = get_runner(settings).workers_alive()
    if not alive:
        raise NoWorker(f"{len(waiting)} job(s) wait in the queue at {settings.redis_url} and no "
                       "worker answers: start one with `medir worker` (the jobs will run then).")
