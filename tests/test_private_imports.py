"""Fast tier: no module imports another module's private names (`from edgekit.x import _name`),
in the package, the bench scripts or the tests. A name a second module needs is public (no leading
underscore, with a docstring) or lives where it is used. Dunder names (`__version__`) are public."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SCANNED = ("edgekit", "bench", "tests")

# Owned by another part of issue 19 (the server refactor makes api's usage shaping public); delete
# the entry when that lands. Nothing else may be added here.
ALLOWED: set = set()


def _module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The module an import names, with relative imports (`from .x import y`) resolved."""
    if node.level == 0:
        return node.module or ""
    package = _module_of(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(path: Path, root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(file, module, name) for each private name `path` (a file under `root`) imports from another
    edgekit module."""
    found = []
    here = _module_of(path, root)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = _absolute(node, path, root)
        if module.split(".")[0] != "edgekit" or module == here:
            continue
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                found.append((path.relative_to(root).as_posix(), module, name))
    return found


def _python_files() -> list[Path]:
    return sorted(f for d in SCANNED for f in (ROOT / d).rglob("*.py"))


def test_no_module_imports_another_modules_private_names():
    files = _python_files()
    assert any(f.parts[-3:] == ("device", "server", "routes.py") for f in files)  # the scan sees the package
    found = [hit for f in files for hit in private_imports(f)]
    bad = [f"{file}: from {module} import {name}" for file, module, name in found
           if (file, module, name) not in ALLOWED]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_check_catches_absolute_relative_and_aliased_private_imports(tmp_path):
    probe = tmp_path / "edgekit" / "device" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from edgekit.device.tflite_model import _order as order\n"
                     "from .api import _usage\n"
                     "from ..core import __version__\n"
                     "from . import _private_module\n"
                     "from .probe import _own_name\n"
                     "from edgekit.device.api import parse_completion_request\n"
                     "from numpy import _private_elsewhere\n"
                     "def later():\n"
                     "    from edgekit.workshop.verify import _lazy\n")
    hits = private_imports(probe, tmp_path)
    assert [(m, n) for _, m, n in hits] == [
        ("edgekit.device.tflite_model", "_order"), ("edgekit.device.api", "_usage"),
        ("edgekit.device", "_private_module"), ("edgekit.workshop.verify", "_lazy")]
    assert {f for f, _, _ in hits} == {"edgekit/device/probe.py"}
