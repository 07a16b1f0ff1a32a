"""No import cycle between files, nor between folders, in api/, tasks/ and handlers/ (imports made
only for type checking aside; a package importing its own subpackages, as the app factory imports
its routes, is not a cycle). The package directions themselves are import-linter contracts
(pyproject.toml, `make lint`)."""

from __future__ import annotations

import grimp

PACKAGES = ("api", "tasks", "handlers")


def _graph():
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative enough for here)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_cycle_between_files():
    g = _graph()
    edges = {m: {i for i in g.find_modules_directly_imported_by(m) if i.split(".")[0] in PACKAGES}
             for m in g.modules if m.split(".")[0] in PACKAGES}
    assert _cycles(edges) == []


def test_no_cycle_between_folders():
    g = _graph()
    packages = {m for m in g.modules if m.split(".")[0] in PACKAGES and g.find_children(m)}

    def folder(module: str) -> str:
        return module if module in packages else module.rsplit(".", 1)[0]

    edges: dict[str, set[str]] = {}
    for m in g.modules:
        if m.split(".")[0] not in PACKAGES:
            continue
        src = folder(m)
        for i in g.find_modules_directly_imported_by(m):
            if i.split(".")[0] not in PACKAGES:
                continue
            dst = folder(i)
            # A folder importing its own subfolders (or a parent folder's __init__ re-export) is fine.
            if dst != src and not dst.startswith(src + ".") and not src.startswith(dst + "."):
                edges.setdefault(src, set()).add(dst)
    assert _cycles(edges) == []


def test_no_production_function_over_60_lines():
    """Functions that do one thing: none in api/, tasks/, handlers/ is longer than 60 lines."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    long = []
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                    if node.end_lineno - node.lineno + 1 > 60:
                        long.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert long == []
