"""Resume the volumes of a dead worker within a minute, not after the visibility timeout.

kombu's Redis transport keeps every delivered, unacknowledged message in the ``unacked`` hash
(and its delivery time in ``unacked_index``) until the worker acknowledges it, which medir does
after the task finished (``acks_late``). When a worker dies (SIGKILL, OOM, power), kombu only
puts its messages back once they are older than ``visibility_timeout`` (2 h by default: it
must exceed the longest task, or a running volume would start twice).

medir adds ownership and liveness:

- every worker process start is an *incarnation* (a random id); it keeps a heartbeat key
  ``medir:alive:<id>`` that expires ``heartbeat_ttl`` seconds (30 s) after its last beat;
- when the worker's consumer receives a message it *claims* the delivery tag
  (``medir:claims`` hash: tag → incarnation);
- a *sweep* (when a worker becomes ready, then every ``restore_interval`` seconds) puts back
  each unacknowledged message whose owner is not alive: its claim names a dead incarnation, or
  nobody claimed it for longer than the heartbeat TTL. In embedded-store mode a worker holds
  the store's exclusive lock, which proves every other incarnation dead: its sweep restores
  them at once, so a restarted worker resumes the interrupted volume as soon as it is ready.

A restore uses kombu's own ``restore_by_tag`` (a Redis transaction that WATCHes the hash), so
two sweeps never requeue one message twice. A message of a live worker is never touched. A
redelivered volume is ingested again from the start; ingest is idempotent (deterministic point
ids, pending → ready marker, pending points of the interrupted run overwritten), so it ends
with exactly one copy of every slice (tests/test_queue.py, test (b)).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import redis

log = logging.getLogger(__name__)

ALIVE_KEY = "medir:alive:{}"
CLAIMS_KEY = "medir:claims"
UNACKED_KEY = "unacked"  # kombu's redis transport defaults
UNACKED_INDEX_KEY = "unacked_index"


class Recovery:
    """One worker incarnation's heartbeat, claims and sweeps."""

    def __init__(self, client: redis.Redis, ttl: int, interval: float,
                 exclusive: bool = False) -> None:
        self.client = client
        self.ttl = ttl
        self.interval = interval
        self.exclusive = exclusive  # this process owns the store: no other worker is alive
        self.id = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- liveness ------------------------------------------------------------------------------
    def beat(self) -> None:
        self.client.set(ALIVE_KEY.format(self.id), str(time.time()), ex=self.ttl)

    def claim(self, delivery_tag: str) -> None:
        self.client.hset(CLAIMS_KEY, delivery_tag, self.id)

    def _alive(self, owner: str) -> bool:
        if owner == self.id:
            return True
        if self.exclusive:
            return False
        return bool(self.client.exists(ALIVE_KEY.format(owner)))

    # -- the sweep -----------------------------------------------------------------------------
    def orphans(self) -> list[str]:
        """Delivery tags of unacknowledged messages whose owner is not alive."""
        tags = [_s(t) for t in self.client.hkeys(UNACKED_KEY)]
        claims = {_s(k): _s(v) for k, v in self.client.hgetall(CLAIMS_KEY).items()}
        stale = [t for t in claims if t not in set(tags)]
        if stale:
            self.client.hdel(CLAIMS_KEY, *stale)  # acknowledged meanwhile
        now = time.time()
        out = []
        for tag in tags:
            owner = claims.get(tag)
            if owner is not None:
                if not self._alive(owner):
                    out.append(tag)
                continue
            # delivered but not (yet) claimed: kombu records it a moment before the consumer
            # sees it; only a message unclaimed for a whole heartbeat TTL is an orphan
            since = self.client.zscore(UNACKED_INDEX_KEY, tag)
            if since is not None and now - float(since) > self.ttl:
                out.append(tag)
        return out

    def sweep(self, app: Any) -> int:
        """Put the orphans back on their queues; returns how many."""
        tags = self.orphans()
        if not tags:
            return 0
        with app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag)
                self.client.hdel(CLAIMS_KEY, tag)
        log.warning("restored %d message(s) of dead workers: %s", len(tags), ", ".join(tags))
        return len(tags)

    # -- the background thread -----------------------------------------------------------------
    def start(self, app: Any) -> None:
        self.beat()
        self._safe_sweep(app)
        self._thread = threading.Thread(target=self._loop, args=(app,), daemon=True,
                                        name="medir-recovery")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.delete(ALIVE_KEY.format(self.id))
        except redis.RedisError:
            pass

    def _loop(self, app: Any) -> None:
        beat_every = max(self.ttl / 3, 0.5)
        next_sweep = time.monotonic() + self.interval
        while not self._stop.wait(min(beat_every, self.interval)):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat: %s", exc)
            if time.monotonic() >= next_sweep:
                self._safe_sweep(app)
                next_sweep = time.monotonic() + self.interval

    def _safe_sweep(self, app: Any) -> None:
        try:
            self.sweep(app)
        except Exception as exc:  # the broker restarts: try again at the next interval
            log.warning("recovery sweep: %s", exc)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


_current: dict[str, Recovery] = {}


def start_recovery(app: Any, redis_url: str, ttl: int, interval: float,
                   exclusive: bool) -> Recovery:
    rec = Recovery(redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5),
                   ttl, interval, exclusive)
    rec.start(app)
    _current["worker"] = rec
    return rec


def current() -> Recovery | None:
    return _current.get("worker")


def stop_recovery() -> None:
    rec = _current.pop("worker", None)
    if rec is not None:
        rec.stop()
