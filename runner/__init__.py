"""Where medir's work runs, chosen once from the settings (see :mod:`runner.base`).

``get_runner(settings)`` gives a :class:`~runner.queued.QueueRunner` when a broker is
configured (``MEDIR_REDIS_URL``) and a :class:`~runner.local.LocalRunner` otherwise; the CLI,
the UI and the Celery tasks call the same methods either way.
"""

from __future__ import annotations

from medir.config import Settings
from runner.base import (
    IngestOptions,
    IngestOutcome,
    JobState,
    JobsUpdate,
    Runner,
    queue_on,
    store_is_server,
)


def get_runner(settings: Settings, *, queue: bool | None = None,
               keep_store_open: bool = False) -> Runner:
    """The runner the settings ask for: the queue when a broker is set, else this process.

    ``queue``: True or False where the caller's own option decides (``medir ingest --queue``);
    None lets the settings decide (:func:`runner.base.queue_on`). ``keep_store_open``: an
    in-process runner keeps the store open for its life (a long ``medir follow``) instead of
    opening it per call.
    """
    if queue_on(settings) if queue is None else queue:
        from runner.queued import QueueRunner

        return QueueRunner(settings, worker_owns_store=not store_is_server(settings))
    from runner.local import LocalRunner

    return LocalRunner(settings, keep_store_open=keep_store_open)


__all__ = ["IngestOptions", "IngestOutcome", "JobState", "JobsUpdate", "Runner", "get_runner",
           "queue_on", "store_is_server"]
