"""``medir worker``: a Celery worker that owns the model (and, in embedded mode, the store).

Pools:

- ``solo`` (default): tasks run in the worker's main process, one at a time. A GPU worker uses
  it: one process, one CUDA context, no fork after CUDA was initialised, and the model loaded
  once. It is also the embedded-store default: one process owns the store.
- ``threads``: one process, several tasks at a time (``--concurrency``). In embedded mode this
  lets the one worker answer queries while it ingests; store calls are serialised.
- ``prefork``: child processes, each loading its own model after fork (CUDA is never touched at
  import). Only with a Qdrant server (``MEDIR_QDRANT_URL``), or with ``--concurrency 1``: an
  embedded store cannot be opened by two processes.
"""

from __future__ import annotations

import logging
import os

from medir.config import get_settings
from medir.errors import ConfigError, StoreUnavailable
from runner.base import store_is_server
from runner.queue import INGEST_QUEUE, SEARCH_QUEUE

POOLS = ("solo", "threads", "prefork")

log = logging.getLogger(__name__)


def worker_argv(queues: str, pool: str, concurrency: int, loglevel: str,
                hostname: str | None = None) -> list[str]:
    """The ``celery worker`` arguments medir starts a worker with."""
    argv = ["worker", f"--queues={queues}", f"--pool={pool}", f"--loglevel={loglevel}",
            "--without-mingle"]
    if pool != "solo":
        argv.append(f"--concurrency={concurrency}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    return argv


def check_pool(pool: str, concurrency: int, embedded: bool) -> None:
    """Refuse configurations that would open the embedded store from several processes."""
    if pool not in POOLS:
        raise ConfigError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
    if concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    if embedded and pool == "prefork" and concurrency > 1:
        raise ConfigError(
            "the embedded store allows one process: use --pool solo or --pool threads, or "
            "--concurrency 1, or set MEDIR_QDRANT_URL to a Qdrant server for several processes")


def run_worker(
    queues: str = f"{INGEST_QUEUE},{SEARCH_QUEUE}",
    device: str | None = None,
    pool: str | None = None,
    concurrency: int = 1,
    loglevel: str = "info",
) -> None:
    """Start a worker consuming ``queues`` (blocks until it is stopped)."""
    if device:
        os.environ["MEDIR_DEVICE"] = device  # read by the settings in this process and children
        get_settings.cache_clear()
    settings = get_settings()
    from medir.secrets import check_secrets

    check_secrets(settings)
    chosen = pool or "solo"
    embedded = not store_is_server(settings)
    check_pool(chosen, concurrency, embedded)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        raise ConfigError("--queues is empty; use e.g. ingest,search")

    from runner.queue.app import get_app
    from runner.queue.tasks import acquire_owner_lock

    app = get_app(settings)  # ConfigError without MEDIR_REDIS_URL
    if embedded:
        try:
            acquire_owner_lock(settings)
        except StoreUnavailable as exc:
            raise ConfigError(str(exc)) from None
    store = settings.qdrant_url or f"embedded at {settings.store_path}"
    log.info("medir worker: queues %s, pool %s, model %s, device %s, store %s", ",".join(names),
             chosen, settings.model, settings.device, store)
    app.worker_main(worker_argv(",".join(names), chosen, concurrency, loglevel,
                                settings.queue.worker_name))
