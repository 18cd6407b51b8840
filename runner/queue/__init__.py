"""The background queue: Celery tasks on a Redis broker, one task per 3D volume.

It sits above ingest and search, which know nothing of it: :class:`runner.queued.QueueRunner`
sends work down to it, and its tasks run that work on a :class:`runner.local.LocalRunner`.

Layout: :mod:`.app` builds the Celery app from settings, :mod:`.tasks` holds the tasks (thin
adapters over the worker process's runner), :mod:`.worker` starts a worker, :mod:`.submit` is
the client side (``medir ingest --queue``, queries and store maintenance through the queue),
:mod:`.watch` reads how submitted jobs stand (the runner's progress events), :mod:`.checks`
what a worker accepts of a message, :mod:`.jobs` keeps job records in Redis for ``medir jobs``,
:mod:`.recovery` resumes dead workers' volumes.

Importing this package imports neither Celery nor torch; the client side never loads a model.
Every function here takes the settings from its caller (the runner, the CLI); the worker
process reads them once, in :func:`runner.queue.tasks.worker_settings`.
"""

from __future__ import annotations

from medir.errors import MedirError

INGEST_QUEUE = "ingest"
SEARCH_QUEUE = "search"
INGEST_TASK = "medir.ingest_volume"
SEARCH_TASK = "medir.search_volume"
STATS_TASK = "medir.store_stats"
AUDIT_TASK = "medir.audit_duplicates"
# store maintenance, run by the worker that owns the embedded store
VOLUMES_TASK = "medir.list_volumes"
VOLUME_IDS_TASK = "medir.volume_ids"
PRUNE_TASK = "medir.prune_volumes"
MIGRATE_TASK = "medir.migrate_store"
#: Reads a client may send often (a page's refresh): no job record, no delivery count.
UNRECORDED_TASKS = (STATS_TASK, VOLUMES_TASK, VOLUME_IDS_TASK)


class TaskFailed(MedirError):
    """A task that failed for a reason retrying cannot fix (bad file, unknown model, ...).

    It carries the message and the class name of the worker's error (``kind``: ``EmptyStore``,
    ``VolumeError``, ...), so Celery can rebuild it on the client from the result backend and
    the client can raise the same :class:`MedirError` subclass (:func:`medir.errors.error_named`).
    """

    def __init__(self, message: str = "", kind: str = "") -> None:
        super().__init__(message, kind)

    # read from ``args``: an error rebuilt by class name (medir.errors.error_named) has only
    # the message there, and its __init__ was not called
    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def kind(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else ""

    def __str__(self) -> str:
        return self.message


class TaskRefused(TaskFailed):
    """A message the worker does not run: a file outside its folders, another PACS, a field
    of the wrong type or size (runner/queue/checks.py). Nothing was read or stored."""


__all__ = [
    "INGEST_QUEUE",
    "INGEST_TASK",
    "SEARCH_QUEUE",
    "SEARCH_TASK",
    "STATS_TASK",
    "AUDIT_TASK",
    "VOLUMES_TASK",
    "VOLUME_IDS_TASK",
    "PRUNE_TASK",
    "MIGRATE_TASK",
    "UNRECORDED_TASKS",
    "TaskFailed",
    "TaskRefused",
]
