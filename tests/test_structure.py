"""The layout is the architecture: the package root holds only the three layers and the CLI, setup.py ships
every package, and no two edgekit modules import each other, directly or around a loop (fast tier).

The import graph is read from the source with ast, imports inside functions included (a lazy import still
closes a loop at run time). Left out, on purpose: the body of an `if __name__ == "__main__":` block (it runs
only when the file is the program, as the module `__main__`, so importing the module never runs it), and the
implicit import of a parent package (`import a.b.c` first runs `a/b/__init__.py`; counting that would make
every package whose __init__ registers its own submodules, like edgekit/cli, a loop).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "edgekit"
ROOT_ENTRIES = {"__init__.py", "__main__.py", "core", "device", "workshop", "cli"}


@dataclass(frozen=True)
class Imported:
    """One `import X` / `from X import a, b` statement: X, the names taken from it, inside a function or not."""
    module: str
    names: tuple[str, ...]
    lazy: bool
    line: int


def _is_main_guard(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and len(t.comparators) == 1 and isinstance(t.comparators[0], ast.Constant)
            and t.comparators[0].value == "__main__")


def imports_in(path: Path, package: str) -> list[Imported]:
    """Every import statement of a module file outside `if __name__ == "__main__":` blocks; relative imports
    are resolved against `package` (the module's own package)."""
    found: list[Imported] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_main_guard(node):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Import):
            found.extend(Imported(a.name, (), lazy, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            found.append(Imported(module, tuple(a.name for a in node.names), lazy, node.lineno))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def modules_of(pkg_dir: Path) -> dict[str, tuple[Path, str]]:
    """Module name -> (file, the package its relative imports start from), for every .py under pkg_dir."""
    out = {}
    for f in sorted(pkg_dir.rglob("*.py")):
        parts = list(f.relative_to(pkg_dir.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts.pop()
        name = ".".join(parts)
        out[name] = (f, name if is_init else ".".join(parts[:-1]))
    return out


def _longest_known(name: str, known) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def import_graph(pkg_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (anywhere in its body, functions included)."""
    modules = modules_of(pkg_dir)
    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        targets = set()
        for imp in imports_in(path, package):
            if not imp.module:
                continue
            subs = [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in modules]
            if subs:  # `from pkg import submodule`: the submodules (and pkg itself if other names come from it)
                targets |= set(subs)
                if len(subs) == len(imp.names):
                    continue
            if (hit := _longest_known(imp.module, modules)) is not None:
                targets.add(hit)
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop (a -> b -> ... -> a) per strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_loop(graph, set(g), g[0]) for g in groups]


def _loop(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected group."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a strongly connected group but no loop was found")


def test_no_import_cycle_between_edgekit_modules():
    graph = import_graph(PKG)
    assert len(graph) > 50 and graph["edgekit.cli"] >= {"edgekit.cli.serve", "edgekit.cli.bench"}
    assert "edgekit.device.report" in graph["edgekit.cli.report"]  # lazy (inside the command) imports count
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_cycle_check_finds_a_loop_through_a_function_and_ignores_main_blocks(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import c\n")  # registers its submodule: not a loop
    (pkg / "a.py").write_text("import pkg.sub.c\n\ndef f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from .sub.c import thing\n")
    (pkg / "sub" / "c.py").write_text("from pkg.sub import d\nthing = 1\n")
    (pkg / "sub" / "d.py").write_text('if __name__ == "__main__":\n    import pkg.a\nelse:\n    import json\n')
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.c", "pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.d"] == set() and graph["pkg.sub"] == {"pkg.sub.c"}
    assert cycles(graph) == []
    (pkg / "sub" / "c.py").write_text("thing = 1\n\ndef g():\n    import pkg.b\n")
    assert cycles(import_graph(pkg)) == [["pkg.b", "pkg.sub.c", "pkg.b"]]


def test_package_root_holds_only_the_layers_and_the_cli():
    entries = {p.name for p in PKG.iterdir() if p.name != "__pycache__"}
    assert entries == ROOT_ENTRIES, f"unexpected in edgekit/: {sorted(entries - ROOT_ENTRIES)}"


def test_setup_ships_every_package():
    call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    listed = set(ast.literal_eval(next(k.value for k in call.keywords if k.arg == "packages")))
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert found <= listed, f"setup.py packages= misses {sorted(found - listed)}"


MAX_FUNCTION_LINES = 60  # the house rule (DEVELOPERS.md); bench/ scripts are exempt
MAX_MODULE_LINES = 400


def oversized(pkg_dir: Path) -> list[str]:
    """Functions over MAX_FUNCTION_LINES (def line to last line) and modules over MAX_MODULE_LINES."""
    found = []
    for path in sorted(pkg_dir.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_functions_and_modules_stay_small():
    assert oversized(PKG) == []


def test_size_check_sees_a_long_function_and_a_long_module(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "a.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    (tmp_path / "b.py").write_text("y = 1\n" * (MAX_MODULE_LINES + 1))
    assert oversized(tmp_path) == [f"a.py:1 long: {MAX_FUNCTION_LINES + 1} lines", f"b.py: {MAX_MODULE_LINES + 1} lines"]
