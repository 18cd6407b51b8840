"""The Celery app, configured from settings: broker and result backend on ``MEDIR_REDIS_URL``.

Reliability settings (why GPU workers are safe with Celery: docs/queue.md):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only after it
  finished, so a worker killed mid-volume leaves its message to be delivered again; the
  pipeline's deterministic point ids and pending→ready marker make the rerun exact.
- ``worker_prefetch_multiplier=1``: a worker reserves one volume per process, not a batch that
  would sit behind a long volume (and be redelivered if the worker dies).
- Redis ``visibility_timeout`` (``MEDIR_QUEUE_VISIBILITY_TIMEOUT``, default 2 h): a message
  not acknowledged within it is delivered again. It must stay above the longest task, or a
  still-running volume is started a second time; it is also how long a crashed worker's volume
  waits before another worker takes it.

``celery -A runner.queue.app worker`` works too (``app`` is built on first access), but
``medir worker`` adds the pool checks of embedded-store mode.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from medir.config import QueueSettings, Settings
from medir.errors import ConfigError
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
)


def celery_config(redis_url: str, qs: QueueSettings) -> dict[str, Any]:
    """The Celery configuration medir runs with."""
    transport = {
        "visibility_timeout": qs.visibility_timeout,
        # kombu sweeps for expired unacknowledged messages every interval × throttle seconds
        "unacked_restore_interval": qs.restore_interval,
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": qs.result_expires,
        "result_extended": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        # with acks_late a connection loss would otherwise let a running volume be redelivered
        # while it still runs here
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": INGEST_QUEUE,
        "task_routes": {
            INGEST_TASK: {"queue": INGEST_QUEUE},
            SEARCH_TASK: {"queue": SEARCH_QUEUE},
            STATS_TASK: {"queue": SEARCH_QUEUE},
            AUDIT_TASK: {"queue": SEARCH_QUEUE},
            VOLUMES_TASK: {"queue": SEARCH_QUEUE},
            VOLUME_IDS_TASK: {"queue": SEARCH_QUEUE},
            PRUNE_TASK: {"queue": SEARCH_QUEUE},
            MIGRATE_TASK: {"queue": SEARCH_QUEUE},
        },
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


@lru_cache(maxsize=4)
def _build(redis_url: str, qs_json: str) -> Celery:
    from runner.queue.tasks import register_tasks

    qs = QueueSettings.model_validate_json(qs_json)
    app = Celery("medir", set_as_current=False)
    app.conf.update(celery_config(redis_url, qs))
    register_tasks(app)
    return app


def get_app(settings: Settings) -> Celery:
    """The Celery app of the settings (one per broker URL and queue settings)."""
    url = settings.redis_url
    if not url:
        raise ConfigError("no broker configured: set MEDIR_REDIS_URL (e.g. "
                          "redis://localhost:6379/0) to use the queue, or run without --queue")
    return _build(url, settings.queue.model_dump_json())


def __getattr__(name: str) -> Any:
    """``runner.queue.app:app`` for ``celery -A runner.queue.app``, built on first access: a
    process entry point, so it reads the settings itself (the worker's, as its tasks do)."""
    if name in ("app", "celery"):
        from runner.queue.tasks import worker_settings

        return get_app(worker_settings())
    raise AttributeError(name)
