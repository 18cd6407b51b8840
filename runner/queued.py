"""The queued runner: work goes to Celery workers; each runs it on its own LocalRunner.

An ingest becomes one ``ingest_volume`` task per 3D volume and returns their job ids (the ids
``medir jobs`` and the UI follow; the records live in Redis, written by the worker). A query
waits for its ``search_volume`` task. With the embedded store the worker process owns the
store, so the statistics are a task too; with a Qdrant server this process reads it itself.
Store maintenance (volumes, prune, migrate) reads the store from here, as before the queue.

Neither Celery nor Redis is imported before the first call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medir.config import Settings
from runner.base import (
    IngestOptions,
    IngestOutcome,
    JobState,
    ProgressFn,
    ReportFn,
    Runner,
)
from runner.local import LocalRunner

if TYPE_CHECKING:
    from rich.console import Console

    from ingest.collection import VolumeSource
    from runner.queue.submit import VolumeJob
    from search.query import QueryOptions
    from search.volumes import PruneResult, VolumeInfo


class QueueRunner(Runner):
    """Submit to the Celery queue at ``settings.redis_url``; follow jobs by their ids."""

    mode = "queue"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = LocalRunner(settings)
        self._submitted: dict[str, VolumeJob] = {}

    @property
    def owns_store(self) -> bool:
        """Whether a worker owns the store (embedded mode): this process must not open it."""
        return not self.settings.qdrant_url

    def ingest(self, sources: Sequence[VolumeSource | Path], options: IngestOptions, *,
               progress: ProgressFn | None = None,
               on_report: ReportFn | None = None) -> IngestOutcome:
        """Submit one job per 3D volume; returns their ids at once (``follow`` waits)."""
        from runner.queue.submit import submit_jobs

        jobs = submit_jobs(list(sources), options.model, options.labels,
                           intensity=options.intensity, settings=self.settings,
                           force=options.force, limits=self._local.limits)
        self._submitted.update((j.task_id, j) for j in jobs)
        return IngestOutcome(job_ids=[j.task_id for j in jobs])

    def volume_of(self, job_id: str) -> str:
        """The volume id of a job this runner submitted."""
        job = self._submitted.get(job_id)
        return job.volume_id if job else ""

    def follow(self, ids: Sequence[str], console: Console) -> bool:
        """Show the progress of jobs this runner submitted until all finished; True when every
        one succeeded."""
        from runner.queue.app import get_app
        from runner.queue.submit import follow

        return follow(get_app(self.settings), [self._submitted[i] for i in ids], console)

    def search(self, query: str, options: QueryOptions, *, model: str, by_id: bool = False,
               index_4d: int | None = None) -> dict[str, Any]:
        from runner.queue.submit import submit_search

        return submit_search(query, model, options, by_id=by_id, index_4d=index_4d,
                             settings=self.settings)

    def stats(self) -> dict[str, Any]:
        if not self.owns_store:
            return self._local.stats()
        from runner.queue.submit import submit_stats

        return submit_stats(self.settings)

    def volumes(self, model: str | None = None,
                filters: Mapping[str, Sequence[str]] | None = None) -> list[VolumeInfo]:
        return self._local.volumes(model, filters)

    def prune(self, apply: bool) -> PruneResult:
        return self._local.prune(apply)

    def migrate(self, roots: Sequence[Path]) -> dict[str, int]:
        return self._local.migrate(roots)

    def jobs(self, ids: Sequence[str]) -> list[JobState]:
        """Each job's state from its record (an id without a record reads as PENDING)."""
        from runner.queue.jobs import job_store

        store = job_store(self.settings)
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

    def workers_alive(self) -> bool:
        """Whether any worker answers a ping."""
        from runner.queue.app import get_app

        try:
            return bool(get_app(self.settings).control.ping(timeout=1.0))
        except Exception:
            return False

    def close(self) -> None:
        self._local.close()
