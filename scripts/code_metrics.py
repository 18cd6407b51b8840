"""Size and shape of the code: modules, lines, largest functions, import edges against the layers.

    python scripts/code_metrics.py [--json] [--top N] [ROOT]

What issue #22 asked to measure before and after a restructuring, in one repeatable script
(run it on an old checkout with ``ROOT`` to compare). Counts every ``.py`` of the first-party
packages (tests and scripts left out), by reading the source with :mod:`ast`, nothing imported.
An import edge is *upward* when it goes to a higher layer than its module's, *sideways* when it
joins two packages of the same layer (the UI and the command line) or breaks "search never
imports ingest". Layers, top to bottom, as in ``[tool.importlinter]`` of pyproject.toml.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import PACKAGES, graph  # noqa: E402

# rank of each layer (higher = closer to the user); a module's layer is its longest prefix here
LAYERS: dict[str, int] = {
    "medir.cli": 5, "ui": 5,
    "benchmarks": 4,
    "runner": 3,
    "ingest": 2,
    "search": 1,
    "medir": 0,  # core: config, errors, ids, files, terminal, secrets
}


def layer_of(module: str) -> str:
    for name in sorted(LAYERS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return module.split(".")[0]


def bad_edges(edges: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    """(kind, from, to) for every module edge that goes up or sideways."""
    out = []
    for a, targets in edges.items():
        la = layer_of(a)
        for b in targets:
            lb = layer_of(b)
            if la == lb:
                continue
            if LAYERS.get(lb, -1) > LAYERS.get(la, -1):
                out.append(("up", a, b))
            elif LAYERS.get(lb, -1) == LAYERS.get(la, -1):
                out.append(("sideways", a, b))
    return sorted(out)


def _walk(node: ast.AST, where: str, out: list[tuple[int, str]]) -> None:
    """Append (lines, ``where``-qualified name) of every function under ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (child.end_lineno or child.lineno) - child.lineno + 1
            out.append((n, f"{where}{child.name}"))
            _walk(child, f"{where}{child.name}.", out)
        elif isinstance(child, ast.ClassDef):
            _walk(child, f"{where}{child.name}.", out)


def functions(root: Path) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method, largest first."""
    out: list[tuple[int, str]] = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            rel = path.relative_to(root).as_posix()
            _walk(ast.parse(path.read_text(encoding="utf-8"), rel), f"{rel}::", out)
    return sorted(out, reverse=True)


def metrics(root: Path, top: int) -> dict[str, object]:
    files = [p for pkg in PACKAGES if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")]
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in files)
    edges = graph(root)
    bad = bad_edges(edges)
    funcs = functions(root)
    return {
        "modules": len(files),
        "lines": lines,
        "functions": len(funcs),
        "functions_over_80_lines": sum(1 for n, _ in funcs if n > 80),
        "largest_functions": [{"lines": n, "name": name} for n, name in funcs[:top]],
        "import_edges": sum(len(t) for t in edges.values()),
        "edges_up_or_sideways": len(bad),
        "bad_edges": [f"{k}: {a} -> {b}" for k, a, b in bad],
    }


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    top = 10
    args = [a for a in argv if not a.startswith("--")]
    if "--top" in argv:
        top = int(argv[argv.index("--top") + 1])
        args = [a for a in args if a != str(top)]
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    m = metrics(root, top)
    if as_json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['modules']} modules, {m['lines']} lines, {m['functions']} functions "
          f"({m['functions_over_80_lines']} over 80 lines)")
    print(f"{m['import_edges']} first-party import edges, "
          f"{m['edges_up_or_sideways']} up or sideways")
    for e in m["bad_edges"]:  # type: ignore[attr-defined]
        print(f"  {e}")
    print("largest functions:")
    for f in m["largest_functions"]:  # type: ignore[attr-defined]
        print(f"  {f['lines']:4d}  {f['name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
