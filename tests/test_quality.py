"""The code base stays lint-clean and type-clean (ruff and mypy as configured in pyproject)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_ruff_clean() -> None:
    r = _run("ruff", "check", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = _run("mypy", "medir", "ingest", "search", "ui", "benchmarks", "runner")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
