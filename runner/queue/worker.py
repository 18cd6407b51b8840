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

Whoever can write to the broker can send the worker tasks, so a worker refuses to start on a
broker URL without a password (:func:`check_broker_auth`) unless development mode says so
(``MEDIR_QUEUE__ALLOW_INSECURE_BROKER=1``, never with ``MEDIR_REQUIRE_SECRETS``); the tasks
check every message anyway (runner/queue/checks.py).
"""

from __future__ import annotations

import logging
import os
from urllib.parse import parse_qs, urlsplit

from medir.config import Settings, get_settings
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


def broker_password(url: str) -> str | None:
    """The password a broker URL authenticates with (``redis://:PASSWORD@host`` or
    ``?password=``), or None."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    given = parse_qs(parts.query).get("password")
    return given[0] if given and given[0] else None


def check_broker_auth(settings: Settings) -> None:
    """Refuse a broker URL without a password: anyone who reaches it could make this worker read
    and index files. Development only: ``MEDIR_QUEUE__ALLOW_INSECURE_BROKER=1``."""
    from medir.secrets import safe_url

    url = settings.redis_url
    if not url or broker_password(url):
        return
    if settings.queue.allow_insecure_broker and not settings.require_secrets:
        log.warning("the broker %s has no password (MEDIR_QUEUE__ALLOW_INSECURE_BROKER): "
                    "development only", safe_url(url))
        return
    raise ConfigError(
        f"refusing to start: the broker {safe_url(url)} (MEDIR_REDIS_URL) has no password, so "
        "anyone who reaches it could make this worker read and index files; give Redis one "
        "(requirepass) and the URL too (redis://:PASSWORD@host:6379/0), or for development "
        "only set MEDIR_QUEUE__ALLOW_INSECURE_BROKER=1")


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
    check_broker_auth(settings)
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
