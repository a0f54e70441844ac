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
def stories_build(shared_dir, tmp_path_factory) -> dict:
    """Real stories260k bundles built through the CLI, sharing one work dir: int8 (default, with
    --tar) first, then fp32, whose distill stage resumes the finished checkpoint instead of retraining."""
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("build")
    stages = work / "stages"
    builds = {}
    for name, extra in (("int8", ["--tar"]), ("fp32", ["--precision", "fp32"])):
        res = run_cli("build", "--target", "onnx-cpu", "--recipe", "stories260k", "--out", str(work / name),
                      "--work-dir", str(stages), *extra, cwd=work)
        assert res.returncode == 0, res.stderr[-3000:]
        builds[name] = work / name
        builds[name + "_log"] = res.stderr
    builds["student"] = stages / "01-distill" / "student"
    builds["stages"] = stages
    return builds


@pytest.fixture(scope="session")
def tflite_builds(stories_build) -> dict:
    """The same stories260k student built for every TFLite target (and extra precisions), reusing the
    finished distillation: {variant name: bundle path}."""
    work = stories_build["stages"].parent
    single = work / "coral-single.toml"  # the naive full-int8 export: one graph, for comparison
    single.write_text((ROOT / "targets" / "coral.toml").read_text().replace('name = "coral"', 'name = "coral-single"')
                      .replace('layout = "tpu-segments"', 'layout = "single"'))
    variants = {
        "arm-cpu": ["--target", "arm-cpu"],  # int8-dynamic
        "arm-cpu-weight-only": ["--target", "arm-cpu", "--precision", "int8-weight-only"],
        "arm-cpu-fp32": ["--target", "arm-cpu", "--precision", "fp32"],
        "mobile-gpu": ["--target", "mobile-gpu"],  # fp16
        "coral": ["--target", "coral"],  # int8-full, Edge TPU segments
        "coral-single": ["--target", str(single)],  # int8-full, one graph
    }
    out = {}
    for name, args in variants.items():
        res = run_cli("build", *args, "--recipe", "stories260k", "--out", str(work / name),
                      "--work-dir", str(stories_build["stages"]), cwd=work)
        assert res.returncode == 0, res.stderr[-3000:]
        out[name] = work / name
    return out


@pytest.fixture(scope="session")
def stories_bundle(stories_build) -> Path:
    return stories_build["int8"]
