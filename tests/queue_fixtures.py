"""Pytest plugin for queue tests: a real ``redis-server`` and real ``medir worker`` processes.

- ``redis_server`` (session): ``MEDIR_REDIS_URL`` when it is set (tests then share that
  server, so its database must be disposable); otherwise a private ``redis-server`` on a free
  port, with a random password (a worker refuses a broker without one), without persistence,
  stopped at the end (``apt-get install -y redis-server``).
- ``queue_env`` (function): points this process at that broker (``MEDIR_REDIS_URL``) on a
  fresh database number, so tests do not see each other's queues and job records.
- ``worker`` (function): a factory starting ``medir worker`` subprocesses on a store path with
  extra environment; it waits until the worker is consuming and stops leftovers afterwards.
  A worker reads volumes from the system's temporary folder (the tests' files) and the sample
  folder besides its data folder (``MEDIR_QUEUE__ROOTS``, unless the test sets it); on a given
  broker URL without a password it runs with ``MEDIR_QUEUE__ALLOW_INSECURE_BROKER=1``.

Worker-side test hooks (a worker started with ``MEDIR_PLUGINS=tests.queue_fixtures``):

- ``MEDIR_TEST_UPSERT_DELAY=<seconds>`` sleeps before each embedded-store upsert;
- ``MEDIR_TEST_PAUSE_VOLUME=<volume id>``, ``MEDIR_TEST_PAUSE_AFTER=<n>`` and
  ``MEDIR_TEST_PAUSE_FILE=<path>``: after the n-th upsert of that volume's points the worker
  creates the file and stops there for good, so a test waits for the file (an event, not a
  sleep) and finds the volume half written (pending points stored, not marked ready);
- ``MEDIR_TEST_KILL_ON=<text>``: the first upsert of a volume whose source path contains the
  text SIGKILLs its own worker process (a volume that kills its worker, e.g. by OOM).

Load it with ``pytest_plugins = ["tests.queue_fixtures"]`` in ``conftest.py`` (or import the
fixtures into a test module).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from medir.config import get_settings
from search.store import SlicePoint

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0
_db_counter = {"n": 0}


def _install_upsert_delay() -> None:
    """Slow down embedded-store upserts in this process (worker side, tests only)."""
    delay = float(os.environ.get("MEDIR_TEST_UPSERT_DELAY", "0") or 0)
    if delay <= 0:
        return
    from search.store_edge import EdgeStore

    original = EdgeStore.upsert
    if getattr(original, "_medir_delayed", False):
        return

    def upsert(self: EdgeStore, name: str, points: Sequence[SlicePoint]) -> None:
        time.sleep(delay)
        original(self, name, points)

    upsert._medir_delayed = True  # type: ignore[attr-defined]
    EdgeStore.upsert = upsert  # type: ignore[method-assign]


def _install_pause() -> None:
    """Stop for good after the n-th upsert of one volume (worker side, tests only)."""
    volume = os.environ.get("MEDIR_TEST_PAUSE_VOLUME")
    flag = os.environ.get("MEDIR_TEST_PAUSE_FILE")
    if not volume or not flag:
        return
    after = int(os.environ.get("MEDIR_TEST_PAUSE_AFTER", "1"))
    from search.store_edge import EdgeStore

    original = EdgeStore.upsert
    seen = {"n": 0}

    def upsert(self: EdgeStore, name: str, points: Sequence[SlicePoint]) -> None:
        original(self, name, points)
        if points and points[0].payload.get("volume_id") == volume:
            seen["n"] += 1
            if seen["n"] >= after:
                self.flush()  # what is written is on disk, as after any crash
                Path(flag).write_text(str(os.getpid()))
                while True:  # half written, for good: the test kills this process
                    time.sleep(3600)

    EdgeStore.upsert = upsert  # type: ignore[method-assign]


def _install_kill_on() -> None:
    """SIGKILL this worker at the first upsert of a volume whose source has the marker."""
    marker = os.environ.get("MEDIR_TEST_KILL_ON")
    if not marker:
        return
    from search.store_edge import EdgeStore

    original = EdgeStore.upsert

    def upsert(self: EdgeStore, name: str, points: Sequence[SlicePoint]) -> None:
        if points and marker in str(points[0].payload.get("source", "")):
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, name, points)

    EdgeStore.upsert = upsert  # type: ignore[method-assign]


_install_upsert_delay()
_install_pause()
_install_kill_on()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker URL (database 0) of a running Redis server."""
    given = os.environ.get("MEDIR_TEST_REDIS_URL") or os.environ.get("MEDIR_REDIS_URL")
    if given:
        if not _ping(given):
            pytest.fail(f"MEDIR_REDIS_URL={given} does not answer")
        yield given
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    password = secrets.token_hex(16)
    conf = workdir / "redis.conf"  # the password in a file, not on the command line
    conf.write_text(f"requirepass {password}\n")
    conf.chmod(0o600)
    proc = subprocess.Popen(
        [exe, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--databases", "64"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while not _ping(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def fresh_db_url(base_url: str) -> str:
    """The same server, on a database number not used before in this session (flushed)."""
    import redis

    _db_counter["n"] += 1
    root = base_url.rsplit("/", 1)[0] if base_url.count("/") > 2 else base_url
    url = f"{root}/{_db_counter['n'] % 63 + 1}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def queue_env(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Use the test broker in this process, on a database of its own; returns its URL."""
    url = fresh_db_url(redis_server)
    monkeypatch.setenv("MEDIR_REDIS_URL", url)
    get_settings.cache_clear()
    return url


@dataclass
class WorkerProcess:
    """A ``medir worker`` subprocess; its combined output goes to ``log``."""

    redis_url: str
    store_path: Path
    log: Path
    args: list[str] = field(default_factory=list)
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIR_")}
        env.update({
            "MEDIR_REDIS_URL": self.redis_url,
            "MEDIR_STORE_PATH": str(self.store_path),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            **{k: v for k, v in os.environ.items() if k in ("MEDIR_WEIGHTS_DIR",
                                                            "MEDIR_CACHE_DIR")},
            **default_worker_env(self.redis_url),
            **self.env,
        })
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "medir.cli", "worker", "--loglevel", "info", *self.args],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the worker logs that it consumes (Celery's ``ready.`` line)."""
        deadline = time.monotonic() + timeout
        start = self.log.stat().st_size if self.log.exists() else 0
        assert self.proc is not None
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[start:].decode(errors="replace")
            if " ready." in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no acknowledgement, nothing flushed."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def default_worker_env(redis_url: str) -> dict[str, str]:
    """What a test worker needs besides the broker: the folders it reads volumes from (the
    tests' temporary files, the samples) and, on a given broker without a password, the
    development flag that lets it start."""
    roots = [tempfile.gettempdir()]
    if os.environ.get("MEDIR_TEST_SAMPLES"):
        roots.append(os.environ["MEDIR_TEST_SAMPLES"])
    env = {"MEDIR_QUEUE__ROOTS": json.dumps(roots)}
    if not urlsplit(redis_url).password:
        env["MEDIR_QUEUE__ALLOW_INSECURE_BROKER"] = "1"
    return env


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def worker(queue_env: str, tmp_path: Path) -> Iterator[StartWorker]:
    """``worker(store_path=None, args=[], env={}, wait=True)`` starts a worker on the test
    broker; the default store is this test's ``MEDIR_STORE_PATH``. All are stopped after."""
    started: list[WorkerProcess] = []

    def _start(store_path: Path | None = None, args: list[str] | None = None,
               env: Mapping[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        w = WorkerProcess(queue_env, store_path or get_settings().store_path,
                          tmp_path / f"worker{len(started)}.log", list(args or []),
                          dict(env or {}))
        started.append(w)
        return w.start(wait=wait)

    yield _start
    for w in started:
        w.stop()
