"""First-party import graph: module → module edges, package-level edges and import cycles.

    python scripts/import_graph.py [--edges] [ROOT]

Reads every ``.py`` under the first-party packages with :mod:`ast` (nothing is imported), so
it also sees imports made inside functions (lazy imports count: they are a dependency too);
imports under ``if TYPE_CHECKING:`` are left out (annotations only, never run).
Prints the package → package edges, the number of modules and edges, and every cycle between
modules (strongly connected components of more than one module). The command line
(``medir.cli``) counts as a package of its own: it is the top layer, and a module outside it
that imports it is a layer violation. Exits 1 when there is a cycle or a violation. The whole
layers contract is import-linter's (`lint-imports`, `[tool.importlinter]` in pyproject.toml).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGES = ("medir", "ingest", "search", "ui", "benchmarks", "runner")
# The top layer: it imports the library, nothing imports it.
CLI = "medir.cli"


def package_of(module: str) -> str:
    """The layer a module belongs to: its top-level package, or the CLI."""
    if module == CLI or module.startswith(CLI + "."):
        return CLI
    return module.split(".")[0]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module prefix of a dotted import name."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those inside ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _is_type_checking(node):
            assert isinstance(node, ast.If)
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(tree: ast.AST, me: str, is_pkg: bool) -> set[str]:
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(root, p): p for pkg in PACKAGES if (root / pkg).is_dir()
             for p in sorted((root / pkg).rglob("*.py"))}
    modules = set(files)
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name in imports_of(tree, mod, path.name == "__init__.py"):
            if name.split(".")[0] not in PACKAGES:
                continue
            target = resolve(name, modules)
            if target and target != mod and not mod.startswith(target + "."):
                edges[mod].add(target)
        edges.setdefault(mod, set())
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    show_edges = "--edges" in argv
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    edges = graph(root)
    pkg_edges: dict[str, set[str]] = defaultdict(set)
    violations: list[str] = []
    for a, targets in edges.items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa != pb:
                pkg_edges[pa].add(pb)
            if pb == CLI and pa != CLI:
                violations.append(f"{a} -> {b}")
    n_edges = sum(len(t) for t in edges.values())
    print(f"{len(edges)} modules, {n_edges} first-party import edges")
    print("package -> packages it imports:")
    for pkg in (CLI, *PACKAGES):
        if pkg in {package_of(m) for m in edges}:
            print(f"  {pkg:10s} -> {', '.join(sorted(pkg_edges.get(pkg, set()))) or '-'}")
    if show_edges:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"  {a} -> {b}")
    if violations:
        print(f"{len(violations)} import(s) of the command line from below it:")
        for v in sorted(violations):
            print(f"  {v}")
    found = cycles(edges)
    if not found:
        print("no import cycle")
        return 1 if violations else 0
    print(f"{len(found)} import cycle(s) (strongly connected modules):")
    for comp in found:
        print("  " + " <-> ".join(comp))
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
