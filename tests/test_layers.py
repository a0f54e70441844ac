"""One-way layering: core is stdlib-only, device never needs torch/tensorflow, the CLI (edgekit/cli, on
top of all three layers) imports the workshop and matplotlib only inside functions, and no layer imports
the CLI (fast tier); a base `pip install .` resolves without torch/tensorflow (full tier: asks the package
index)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from test_structure import imports_in, modules_of

PKG = ROOT / "edgekit"
WORKSHOP_ONLY = {"torch", "tensorflow", "transformers", "litert_torch", "onnx", "onnxscript", "jax", "accelerate"}
DEVICE_OK = {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "tokenizers", "starlette", "uvicorn",
             "jinja2", "prometheus_client", "psutil", "click", "cryptography", "llguidance", "edgekit"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _internal(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        out |= {".".join(m.split(".")[:2]) for m in mods if m.startswith("edgekit.")}
    return out


def test_core_imports_only_stdlib_and_core():
    for f in (PKG / "core").glob("*.py"):
        third = {m for m in _imports(f) if m not in sys.stdlib_module_names and m != "edgekit"}
        assert not third, f"{f.name} imports {third}"
        assert _internal(f) <= {"edgekit.core"}, f"{f.name} imports {_internal(f)}"


def test_device_never_imports_workshop_packages_or_workshop_layer():
    for f in (PKG / "device").rglob("*.py"):
        third = {m for m in _imports(f) if m not in sys.stdlib_module_names}
        assert third <= DEVICE_OK, f"{f.name} imports {third - DEVICE_OK}"
        assert not third & WORKSHOP_ONLY
        assert _internal(f) <= {"edgekit.core", "edgekit.device"}, f"{f.name} imports {_internal(f)}"


def test_cli_imports_the_workshop_and_matplotlib_only_inside_functions():
    """The CLI may import every layer, but edgekit.workshop (torch, transformers ...) and matplotlib only
    lazily, so `import edgekit.cli` and every device command work on a device install."""
    lazy_only = WORKSHOP_ONLY | {"matplotlib"}
    seen_lazy = set()
    for f in sorted((PKG / "cli").glob("*.py")):
        for imp in imports_in(f, "edgekit.cli"):
            top, layer = imp.module.split(".")[0], ".".join(imp.module.split(".")[:2])
            if layer == "edgekit.workshop" or top in lazy_only:
                assert imp.lazy, f"cli/{f.name}:{imp.line} imports {imp.module} at module level; import it inside the command"
                seen_lazy.add(top if top in lazy_only else layer)
            else:
                assert top in sys.stdlib_module_names or top in DEVICE_OK, f"cli/{f.name}:{imp.line} imports {imp.module}"
    assert seen_lazy >= {"edgekit.workshop", "matplotlib", "accelerate"}  # the rule met the real lazy imports


def test_no_layer_imports_the_cli():
    """core, device and workshop never import the front end (a `__main__` block, a program entry, may)."""
    for name, (path, package) in modules_of(PKG).items():
        if name.startswith(("edgekit.core", "edgekit.device", "edgekit.workshop")):
            cli = [i.module for i in imports_in(path, package) if (i.module or "").startswith("edgekit.cli")
                   or (i.module == "edgekit" and "cli" in i.names)]
            assert not cli, f"{name} imports {cli}"


def test_device_cli_runs_with_torch_and_tensorflow_blocked():
    code = ("import sys; sys.argv=['x']; exec(open(%r).read().split('if __name__')[0]);"
            "import edgekit.device.server, edgekit.device.runtime, edgekit.device.generate, edgekit.cli;"
            "import edgekit.device.power.probe, edgekit.device.power.session, edgekit.device.report;"
            "import importlib.util;"
            "exec('try:\\n import torch\\n print(\"torch importable\")\\nexcept ImportError: print(\"blocked\")')"
            % str(ROOT / "tests" / "no_torch.py"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "blocked"
    for cmd in (["serve", "--help"], ["inspect", "--help"], ["targets"], ["power", "--seconds", "0.2"],
                ["report", "--help"]):
        res = run_cli(*cmd, no_torch=True)
        assert res.returncode == 0, (cmd, res.stderr)
        assert "Traceback" not in res.stderr
    assert "--host" in run_cli("serve", "--help", no_torch=True).stdout


@pytest.mark.full
def test_base_install_resolves_without_torch_or_tensorflow(tmp_path):
    """`pip install .` with no extras: ask pip what it would install (no download of torch)."""
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", str(report), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "ai-edge-litert", "numpy", "click", "tokenizers"} <= names
    heavy = {n for n in names if n.startswith(("torch", "tensorflow", "nvidia-", "jax", "transformers"))}
    assert not heavy, f"base install would pull {heavy}"


def test_runtimes_are_required_only_where_they_publish_wheels(tmp_path):
    """The wheel's metadata: onnxruntime and ai-edge-litert on x86_64/aarch64, skipped on 32-bit ARM so the
    install succeeds there (and the CLI names what is missing); the distribution is edgekit-ml."""
    from email.parser import Parser

    pytest.importorskip("setuptools", minversion="70.1", reason="building metadata needs setuptools >= 70.1 "
                        "(bdist_wheel built in); a device venv may have an older one or none")
    from packaging.requirements import Requirement

    res = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                          "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = Parser().parsestr((tmp_path / res.stdout.strip().splitlines()[-1] / "METADATA").read_text())
    assert meta["Name"] == "edgekit-ml"
    base = [Requirement(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r]

    def wanted(machine: str) -> set[str]:
        env = {"platform_machine": machine, "sys_platform": "linux", "python_version": "3.11", "extra": ""}
        return {r.name for r in base if r.marker is None or r.marker.evaluate(env)}

    assert {"onnxruntime", "ai-edge-litert", "numpy", "tokenizers", "llguidance"} <= wanted("aarch64")
    assert {"onnxruntime", "ai-edge-litert", "llguidance"} <= wanted("x86_64")
    on_arm32 = wanted("armv7l")
    assert "onnxruntime" not in on_arm32 and "ai-edge-litert" not in on_arm32 and "tokenizers" in on_arm32
    assert "llguidance" not in on_arm32  # no armv7l wheel: a Rust build would fail the install
