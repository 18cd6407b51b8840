"""The queued runner: work goes to Celery workers; each runs it on its own LocalRunner.

An ingest becomes one ``ingest_volume`` task per 3D volume and returns their job ids (the ids
``medir jobs`` and the UI follow; the records live in Redis, written by the worker); ``watch``
reports how they stand, as events for a display to draw (the command line's bars). A query
waits for its ``search_volume`` task. With the embedded store the worker process owns the
store, so every other store call is a task too, answered by that worker: the statistics, the
audit, the volume listing and ids, prune and migrate (their answers cross the queue as plain
JSON and are rebuilt into the in-process types). With a Qdrant server this process reads the
store itself.

Neither Celery nor Redis is imported before the first call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medir.config import Settings
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
from runner.local import LocalRunner

if TYPE_CHECKING:
    from ingest.collection import VolumeSource
    from ingest.dicomweb import PacsSeries, Target
    from runner.queue.submit import VolumeJob
    from search.audit import AuditOptions
    from search.query import QueryOptions
    from search.volumes import PruneResult, VolumeInfo


class QueueRunner(Runner):
    """Submit to the Celery queue at ``settings.redis_url``; follow jobs by their ids."""

    mode = "queue"

    def __init__(self, settings: Settings, *, worker_owns_store: bool | None = None) -> None:
        """``worker_owns_store``: whether a worker owns the store, so this process must not
        open it (the embedded store; :func:`runner.get_runner` decides it from the settings)."""
        self.settings = settings
        self._local = LocalRunner(settings)
        self._submitted: dict[str, VolumeJob] = {}
        self._owns_store = (not store_is_server(settings) if worker_owns_store is None
                            else worker_owns_store)

    @property
    def worker_owns_store(self) -> bool:
        """Whether the store calls go to the worker (the embedded store) rather than being
        read from this process (a Qdrant server)."""
        return self._owns_store

    def ingest(self, sources: Sequence[VolumeSource | Path], options: IngestOptions, *,
               progress: ProgressFn | None = None,
               on_report: ReportFn | None = None) -> IngestOutcome:
        """Submit one job per 3D volume; returns their ids at once (``follow`` waits)."""
        from runner.queue.submit import submit_jobs

        jobs = submit_jobs(list(sources), options.model, options.labels,
                           intensity=options.intensity, settings=self.settings,
                           force=options.force, limits=self._local.limits)
        return self._outcome(jobs)

    def ingest_pacs(self, series: Sequence[PacsSeries], options: IngestOptions, *,
                    target: Target, on_report: ReportFn | None = None) -> IngestOutcome:
        """Submit one job per series (its source URL without credentials: the worker
        authenticates with its own settings); returns their ids at once."""
        from runner.queue.submit import submit_series

        return self._outcome(submit_series(series, options.model, options.intensity,
                                           self.settings, options.labels))

    def _outcome(self, jobs: Sequence[VolumeJob]) -> IngestOutcome:
        self._submitted.update((j.task_id, j) for j in jobs)
        return IngestOutcome(job_ids=[j.task_id for j in jobs],
                             job_volumes={j.task_id: j.volume_id for j in jobs})

    def watch(self, ids: Sequence[str], on_update: UpdateFn | None = None, *,
              poll_s: float = POLL_S) -> bool:
        """Report how the jobs stand (from their results) until all finished; True when every
        one succeeded. A job is named by its volume id (its record's, for a job another
        process submitted)."""
        from runner.queue.app import get_app
        from runner.queue.watch import watch_jobs

        names = {i: self._submitted[i].volume_id for i in ids if i in self._submitted}
        others = [i for i in ids if i not in names]
        if others:
            names.update((j.id, j.name) for j in self.jobs(others))
        return watch_jobs(get_app(self.settings), ids, names, on_update, poll_s=poll_s)

    def search(self, query: str, options: QueryOptions, *, model: str, by_id: bool = False,
               index_4d: int | None = None) -> dict[str, Any]:
        from runner.queue.submit import submit_search

        return submit_search(query, model, options, by_id=by_id, index_4d=index_4d,
                             settings=self.settings)

    def stats(self) -> dict[str, Any]:
        if not self._owns_store:
            return self._local.stats()
        from runner.queue.submit import submit_stats

        return submit_stats(self.settings)

    def audit(self, model: str, options: AuditOptions,
              progress: ProgressFn | None = None) -> list[dict[str, Any]]:
        if not self._owns_store:
            return self._local.audit(model, options, progress)
        from runner.queue.submit import submit_audit

        return submit_audit(model, options, self.settings)

    def volumes(self, model: str | None = None,
                filters: Mapping[str, Sequence[str]] | None = None) -> list[VolumeInfo]:
        if not self._owns_store:
            return self._local.volumes(model, filters)
        from runner.queue.submit import submit_volumes
        from search.volumes import check_filters

        check_filters(filters)  # the same line as in-process, before the queue is asked
        return submit_volumes(model, filters, self.settings)

    def volume_ids(self, model: str) -> list[str]:
        if not self._owns_store:
            return self._local.volume_ids(model)
        from runner.queue.submit import submit_volume_ids

        return submit_volume_ids(model, self.settings)

    def prune(self, apply: bool) -> PruneResult:
        if not self._owns_store:
            return self._local.prune(apply)
        from runner.queue.submit import submit_prune

        return submit_prune(apply, self.settings)

    def migrate(self, roots: Sequence[Path]) -> dict[str, int]:
        if not self._owns_store:
            return self._local.migrate(roots)
        from runner.queue.submit import submit_migrate

        return submit_migrate(roots, self.settings)

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
                                job.submitted, job.error_type))
        return out

    def workers_alive(self) -> bool:
        """Whether any worker answers a ping."""
        from runner.queue.app import get_app
        from runner.queue.watch import workers_alive

        return workers_alive(get_app(self.settings))

    def close(self) -> None:
        self._local.close()
