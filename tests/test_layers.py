"""The layers of docs/architecture.md, enforced: the import-linter contracts of pyproject.toml
(``lint-imports``), and no module importing another package's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medir", "ingest", "search", "ui", "benchmarks", "runner")


def _package_of(module: str) -> str:
    """The layer a module belongs to: its top-level package, or the CLI (``medir.cli``)."""
    return "medir.cli" if module == "medir.cli" or module.startswith("medir.cli.") else \
        module.split(".")[0]


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def private_imports(root: Path = ROOT) -> list[str]:
    """``from <other package>.mod import _name`` anywhere in the first-party packages (lazy
    imports inside functions included), as ``module:line -> target._name``."""
    found = []
    for module, path in _modules(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in PACKAGES:
                continue
            if _package_of(node.module) == _package_of(module):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module}:{node.lineno} -> {node.module}.{alias.name}")
    return found


def test_no_private_names_imported_across_packages() -> None:
    assert private_imports() == []


def test_the_private_name_scan_sees_a_violation(tmp_path: Path) -> None:
    (tmp_path / "medir" / "cli").mkdir(parents=True)
    (tmp_path / "runner").mkdir()
    # across packages (the CLI is a package of its own), lazily, inside a function: found
    (tmp_path / "medir" / "cli" / "pacs.py").write_text(
        "def f():\n    from runner.queue.submit import _app\n")
    # within one package, a dunder, a public name: not found
    (tmp_path / "runner" / "local.py").write_text(
        "from runner.base import _helper\nfrom runner import __all__\nfrom medir.ids import x\n")
    (tmp_path / "medir" / "config.py").write_text("from medir.cli.root import _start\n")
    assert private_imports(tmp_path) == [
        "medir.cli.pacs:2 -> runner.queue.submit._app",
        "medir.config:1 -> medir.cli.root._start",
    ]


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return [exe, "--no-cache", "--config", str(ROOT / "pyproject.toml")]


def test_import_contracts_hold() -> None:
    """The layers contract, search never importing ingest, nothing importing the CLI, no
    terminal drawing (rich) below the CLI."""
    proc = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True,
                          env=_env(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_import_contracts_catch_an_upward_import(tmp_path: Path) -> None:
    """The contracts are not vacuous: a copy of the tree with search importing ingest,
    ingest importing the CLI, and the runner drawing a progress bar, breaks them."""
    copy = tmp_path / "tree"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "search" / "zz_up.py").write_text("import ingest.reader\n")
    (copy / "ingest" / "zz_up.py").write_text("def f() -> None:\n    import medir.cli\n")
    (copy / "runner" / "zz_bar.py").write_text("def f() -> None:\n    import rich.progress\n")
    proc = subprocess.run([*_lint_imports()[:-1], str(copy / "pyproject.toml")], cwd=copy,
                          capture_output=True, text=True, env=_env(copy), timeout=300)
    assert proc.returncode != 0
    assert "search.zz_up -> ingest.reader" in proc.stdout
    assert "ingest.zz_up -> medir.cli" in proc.stdout
    assert "runner.zz_bar -> rich" in proc.stdout
    assert "4 broken" in proc.stdout


def _env(root: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(root)}
