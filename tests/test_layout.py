"""The layout the README's table describes: no import cycles between the project's files, and
every package of the source tree in the distribution."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "build", "tests", "bench", "runs", ".git"}


def modules() -> dict[str, Path]:
    """``lorarec.*`` module name -> file, for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(("lorarec", *rel.with_suffix("").parts)).removesuffix(".__init__")
        out[name] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, wherever in the file the import is (a
    function-level import is still a dependency). ``from pkg import name`` depends on
    ``pkg.name`` where that is a module, on ``pkg`` otherwise."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                for a in node.names:
                    if f"{base}.{a.name}" in mods:
                        deps.add(f"{base}.{a.name}")
                    elif base in mods:
                        deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_the_projects_files():
    graph = import_graph(modules())
    assert len(graph) > 50  # the whole package was read
    # imports inside functions count: the recipe imports the sharded evaluation in one
    assert "lorarec.evaluation.sharded" in graph["lorarec.trainer.recipe"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = import_graph(modules())
    graph["lorarec.data.prepared"] = graph["lorarec.data.prepared"] | {"lorarec.trainer.recipe"}
    (component,) = cycles(graph)
    assert {"lorarec.data.prepared", "lorarec.trainer.recipe"} <= set(component)


def test_every_package_of_the_tree_is_in_the_distribution():
    """A package missing from pyproject's list is missing from a wheel: ``import lorarec.X``
    works in the editable install and fails for users."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {n for n, p in modules().items() if p.name == "__init__.py"}
    assert packages - listed == set()
    assert listed - packages == set()


def test_the_readme_layout_table_has_a_row_for_every_folder():
    """The README's layout table gives every top-level folder its reason, and names no folder
    the repository does not have."""
    import re
    import subprocess

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") : text.index("## Install")]
    rows = set(re.findall(r"^\| `([\w-]+)/` \|", table, re.M))
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {p.split("/")[0] for p in tracked if "/" in p and not p.startswith(".")}
    assert rows == folders
