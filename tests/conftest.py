"""Shared fixtures.

Tiers: tests marked `full` need the build toolchain (torch, transformers, onnx) and real models;
the rest (fast tier) need only the device install. `pytest -m "not full"` runs the fast tier.

Tests that need ../shared skip with a reason on a user's machine, but fail under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_TORCH = ROOT / "tests" / "no_torch.py"


def pytest_configure(config):
    config.addinivalue_line("markers", "full: needs torch/transformers and real models (slow tier)")


def _shared() -> Path | None:
    from edgekit.core.paths import shared_dir

    d = shared_dir()
    return d if d is not None and (d / "models" / "stories260k" / "config.json").is_file() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared()
    if d is None:
        msg = "../shared (reference models and data) not found; set EDGEKIT_SHARED"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " - required under CI")
        pytest.skip(msg)
    return d


def run_cli(*args: str, no_torch: bool = False, cwd: Path | None = None, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `edgekit ARGS` in a subprocess (optionally with torch/tensorflow imports blocked)."""
    cmd = [sys.executable, str(NO_TORCH) if no_torch else "-m", *([] if no_torch else ["edgekit"]), *args]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def stories_bundle(shared_dir, tmp_path_factory) -> Path:
    """A real stories260k onnx-cpu bundle built once per session through the CLI."""
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("build")
    out = work / "bundle"
    res = run_cli("build", "--target", "onnx-cpu", "--recipe", "stories260k", "--out", str(out),
                  "--work-dir", str(work / "stages"), "--tar", cwd=work)
    assert res.returncode == 0, res.stderr
    return out
