"""What a benchmark figure depends on: the machine, the library versions, the git revision and
how busy the machine was.

Every ``medir bench`` command starts with :func:`check_machine`: a figure taken while other jobs
run on the same cores measures them, not medir (issue 24: a 2-core machine at load 2–17 gave a
matrix-multiply "peak" 4–10× below the idle one). So a bench refuses to start when the 1-minute
load is above :data:`BUSY_LOAD_PER_CPU` per CPU (1.5 on 2 cores) unless ``--allow-busy`` is
given, and then its JSON says ``"busy": true``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medir.errors import MedirError

REPO = Path(__file__).resolve().parents[1]
#: Where the load average and the process states are read (Linux procfs). A module attribute
#: so that tests can point it at a fake tree (``loadavg`` and ``<pid>/stat`` files).
PROC = Path("/proc")
#: A bench refuses to start above this 1-minute load per CPU: 1.5 on a 2-core machine.
BUSY_LOAD_PER_CPU = 0.75
_VERSIONED = ("numpy", "faiss-cpu", "qdrant-edge-py", "qdrant-client", "torch", "onnxruntime")


def git_info(root: Path = REPO) -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (``dirty``)."""

    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  check=False, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``VmRSS``; peak RSS elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def machine_info() -> dict[str, Any]:
    """Platform, CPU, memory, threads and versions of the libraries that do the work."""
    versions: dict[str, str] = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_bytes": _mem_total_bytes(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import faiss

        info["faiss_threads"] = int(faiss.omp_get_max_threads())
    except ImportError:
        pass
    return info


def stamp(guard: BenchGuard | None = None) -> dict[str, Any]:
    """The header every benchmark JSON carries; with the run's ``guard``, also ``busy`` and
    the load at the run's start and now."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
            "git": git_info(), **(guard.record() if guard is not None else {})}


# ---- how busy the machine is -----------------------------------------------------------------
@dataclass(frozen=True)
class LoadReading:
    """The machine's load at one moment: the 1- and 5-minute load averages (runnable plus
    uninterruptible tasks, averaged) and how many other processes are running right now
    (state ``R`` in ``/proc/<pid>/stat``, this process excluded); None where unreadable."""

    load_1min: float | None
    load_5min: float | None
    other_running: int | None
    time: str

    def to_dict(self) -> dict[str, Any]:
        return {"load_1min": self.load_1min, "load_5min": self.load_5min,
                "other_running_processes": self.other_running, "time": self.time}


def read_load(proc: Path | None = None) -> LoadReading:
    """The load averages and the other running processes, from ``proc`` (default
    :data:`PROC`); the load from :func:`os.getloadavg` where there is no procfs."""
    root = proc if proc is not None else PROC
    loads: list[float] = []
    try:
        loads = [float(v) for v in (root / "loadavg").read_text().split()[:2]]
    except (OSError, ValueError):
        if root == Path("/proc") and hasattr(os, "getloadavg"):  # no procfs (macOS)
            loads = list(os.getloadavg()[:2])
    return LoadReading(round(loads[0], 2) if loads else None,
                       round(loads[1], 2) if len(loads) > 1 else None,
                       _other_running(root), time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _other_running(proc: Path) -> int | None:
    """Processes in state R other than this one (their main thread running or runnable)."""
    if not proc.is_dir():
        return None
    me = str(os.getpid())
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'
        fields = stat[stat.rfind(")") + 1:].split()
        if fields and fields[0] == "R":
            count += 1
    return count


def busy_threshold(cpus: int | None = None) -> float:
    """The 1-minute load above which a bench refuses to start: 0.75 per CPU."""
    return BUSY_LOAD_PER_CPU * (cpus or os.cpu_count() or 1)


class MachineBusy(MedirError):
    """A bench asked to measure a machine that other jobs are using."""

    def __init__(self, load: float) -> None:
        self.load = load
        super().__init__(f"machine busy: load {load:.2f}; rerun on a quiet machine")


@dataclass(frozen=True)
class BenchGuard:
    """One bench run's load record and its decision: ``busy`` when the 1-minute load at its
    start was above ``threshold`` (it ran only because ``--allow-busy`` was given)."""

    start: LoadReading
    threshold: float
    busy: bool

    def record(self) -> dict[str, Any]:
        """What the bench's JSON carries: ``busy`` and the load at its start and now (end)."""
        return {"busy": self.busy,
                "load": {"busy_threshold_1min": self.threshold, "start": self.start.to_dict(),
                         "end": read_load().to_dict()}}

    @contextlib.contextmanager
    def covering(self) -> Iterator[BenchGuard]:
        """Benches started inside (``medir bench perf all``) are parts of this run: each
        records its own start load, but the decision is this run's (the load the first part
        raised is not another job's)."""
        token = _RUN.set(self)
        try:
            yield self
        finally:
            _RUN.reset(token)


_RUN: contextvars.ContextVar[BenchGuard | None] = contextvars.ContextVar("bench_run",
                                                                          default=None)


def check_machine(allow_busy: bool, cpus: int | None = None) -> BenchGuard:
    """The one decision every bench makes before it measures anything: raise
    :class:`MachineBusy` when the 1-minute load is above :func:`busy_threshold` and
    ``allow_busy`` is false; otherwise the run's :class:`BenchGuard` (``busy`` set when the
    load was above the threshold)."""
    start = read_load()
    parent = _RUN.get()
    if parent is not None:
        return BenchGuard(start, parent.threshold, parent.busy)
    threshold = busy_threshold(cpus)
    busy = start.load_1min is not None and start.load_1min > threshold
    if busy and not allow_busy:
        assert start.load_1min is not None
        raise MachineBusy(start.load_1min)
    return BenchGuard(start, threshold, busy)
