"""What a benchmark figure depends on: the machine, the library versions and the git revision."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
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


def stamp() -> dict[str, Any]:
    """The header every benchmark JSON carries."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
            "git": git_info()}
