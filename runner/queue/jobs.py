"""Job records in Redis: what was submitted, where it stands, why it failed (``medir jobs``).

Celery's result backend keeps a task's state and result, but not which file it was about, and
it cannot list tasks. A job record is one Redis hash per task (``medir:job:<task id>``) plus a
sorted set of task ids by submission time (``medir:jobs``); the submitter creates it and the
worker updates it (started, progress, retry, success, failure). Records expire after
``MEDIR_QUEUE__JOB_TTL`` seconds. Writing a record never fails a task: Redis errors are logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import redis

from medir.config import Settings
from medir.secrets import mask_secrets

INDEX_KEY = "medir:jobs"
JOB_KEY = "medir:job:{}"
DELIVERIES_KEY = "medir:deliveries:{}:{}"  # task id, retry number
MAX_JOBS = 100_000  # the index is trimmed to the newest ones

log = logging.getLogger(__name__)

# Celery's states plus the PROGRESS state medir reports while a volume is embedded.
FINISHED_STATES = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class Job:
    """One task as ``medir jobs`` shows it. Times are Unix seconds (0 = not yet)."""

    id: str
    kind: str = ""  # ingest | search | stats
    file: str = ""
    volume: str = ""
    model: str = ""
    state: str = "PENDING"
    error: str = ""
    #: The class of the error (a :class:`medir.errors.MedirError` subclass's name).
    error_type: str = ""
    done: int = 0
    total: int = 0
    retries: int = 0
    worker: str = ""
    submitted: float = 0.0
    started: float = 0.0
    finished: float = 0.0

    @property
    def seconds(self) -> float:
        """Run time so far (or in total once finished)."""
        if not self.started:
            return 0.0
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> Job:
        data = {_s(k): _s(v) for k, v in raw.items()}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.type in ("int", int):
                kwargs[f.name] = int(float(value or 0))
            elif f.type in ("float", float):
                kwargs[f.name] = float(value or 0)
            else:
                kwargs[f.name] = value
        return cls(**kwargs)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class JobStore:
    """Job records on one Redis database."""

    def __init__(self, client: redis.Redis, ttl: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, ttl: int = 7 * 24 * 3600) -> JobStore:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), ttl)

    def create(self, job: Job) -> None:
        """Record a submitted job (state PENDING)."""
        job.submitted = job.submitted or time.time()
        key = JOB_KEY.format(job.id)
        pipe = self.client.pipeline()
        pipe.hset(key, mapping={k: str(v) for k, v in job.to_dict().items()})
        pipe.expire(key, self.ttl)
        pipe.zadd(INDEX_KEY, {job.id: job.submitted})
        pipe.zremrangebyrank(INDEX_KEY, 0, -MAX_JOBS - 1)
        pipe.expire(INDEX_KEY, self.ttl)
        pipe.execute()

    def update(self, job_id: str, **changes: Any) -> None:
        """Change some fields of a job; creates the record when a task has none (sent by
        another client). Never raises: a lost update must not fail the task."""
        key = JOB_KEY.format(job_id)
        try:
            pipe = self.client.pipeline()
            pipe.hset(key, mapping={"id": job_id,
                                    **{k: mask_secrets(v) for k, v in changes.items()}})
            pipe.expire(key, self.ttl)
            pipe.zadd(INDEX_KEY, {job_id: changes.get("submitted", time.time())}, nx=True)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("job %s: cannot update its record (%s)", job_id, exc)

    def count_delivery(self, task_id: str, retries: int) -> int:
        """Count one more delivery of a task message (one retry is one message); returns the
        count so far, 0 when Redis cannot say (a lost count must not fail the task)."""
        key = DELIVERIES_KEY.format(task_id, retries)
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, self.ttl)
            n, _ = pipe.execute()
            return int(n)
        except redis.RedisError as exc:
            log.warning("job %s: cannot count its deliveries (%s)", task_id, exc)
            return 0

    def get(self, job_id: str) -> Job | None:
        raw = self.client.hgetall(JOB_KEY.format(job_id))
        return Job.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def recent(self, limit: int = 20, state: str | None = None,
               kind: str | None = None) -> list[Job]:
        """The newest jobs first, optionally only one state (e.g. FAILURE) or kind."""
        out: list[Job] = []
        start, page = 0, max(limit, 50)
        while len(out) < limit:
            ids = self.client.zrevrange(INDEX_KEY, start, start + page - 1)
            if not ids:
                break
            start += page
            pipe = self.client.pipeline()
            for jid in ids:
                pipe.hgetall(JOB_KEY.format(_s(jid)))  # type: ignore[arg-type]
            for raw in pipe.execute():
                if not raw:
                    continue  # expired
                job = Job.from_hash(raw)
                if (state is None or job.state == state.upper()) and (
                        kind is None or job.kind == kind):
                    out.append(job)
                    if len(out) >= limit:
                        break
        return out


def job_store(settings: Settings) -> JobStore:
    """The job records on the broker of the settings (``MEDIR_REDIS_URL``)."""
    from medir.errors import ConfigError

    url = settings.redis_url
    if not url:
        raise ConfigError("no broker configured: set MEDIR_REDIS_URL to list queue jobs")
    return JobStore.from_url(url, ttl=settings.queue.job_ttl)
