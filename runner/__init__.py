"""Where medir's work runs, chosen once from the settings (see :mod:`runner.base`).

``get_runner(settings)`` gives a :class:`~runner.queued.QueueRunner` when a broker is
configured (``MEDIR_REDIS_URL``) and a :class:`~runner.local.LocalRunner` otherwise; the CLI,
the UI and the Celery tasks call the same methods either way.
"""

from __future__ import annotations

from medir.config import Settings
from runner.base import IngestOptions, IngestOutcome, JobState, Runner


def get_runner(settings: Settings) -> Runner:
    """The runner the settings ask for: the queue when a broker is set, else this process."""
    if settings.redis_url:
        from runner.queued import QueueRunner

        return QueueRunner(settings)
    from runner.local import LocalRunner

    return LocalRunner(settings)


__all__ = ["IngestOptions", "IngestOutcome", "JobState", "Runner", "get_runner"]
