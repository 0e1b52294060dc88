"""The house's layout, checked: stages import only what sits below them, and nothing imports
in a circle (issue 15).

The packages, bottom to top: `sql` (SQL text by name), `consumers` (logs in), `shadow` (replay
and scoring), `analytics` (the store and what is estimated from it), `shadowroute` (the
composition root: config assembly, CLI, service, API, demo). Every import counts, those inside
functions too (a late import must not hide a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("sql", "consumers", "shadow", "analytics", "shadowroute")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module of this house imported, line) for every import in the file."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                up = here[: len(here) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # `from a import b` names module a.b when there is one, else a name inside a.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a house module, or a name in it
                t = t.rpartition(".")[0]
            if t:
                yield t, node.lineno


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _ in imports(p, m, known) if t != m} for m, p in known.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_every_import_points_down() -> None:
    known = modules()
    upward = [f"{p.relative_to(ROOT)}:{line}: {m} imports {t}"
              for m, p in known.items() for t, line in imports(p, m, known)
              if layer(t) > layer(m)]
    assert upward == []


def test_stages_never_import_the_root() -> None:
    known = modules()
    assert [f"{p.relative_to(ROOT)}:{line}" for m, p in known.items()
            for t, line in imports(p, m, known)
            if layer(m) < LAYERS.index("shadowroute") and t.startswith("shadowroute")] == []


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_checks_can_fail() -> None:
    # The walk finds what it must: a circle, an upward import, a relative import.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    g = graph()
    assert "consumers.records" in g["consumers.ingest"]
    assert "shadow.routers" in g["shadowroute.config"]
    assert layer("shadowroute.config") > layer("analytics.store") > layer("consumers.ingest")
