"""A machine without a runtime's wheel (32-bit Raspberry Pi OS) installs edgekit and is told which runtime is
missing and which bundles need it (fast tier)."""

from __future__ import annotations

from conftest import run_cli
from test_bundle import _make

from edgekit.device.runtimes import missing_reason, status


def test_installed_runtimes_are_found_with_their_versions():
    for runtime in ("onnxruntime", "litert", "litert-segments"):
        st = status(runtime)
        assert st.installed and st.version, st
    assert not status("no-such-runtime").installed


def test_missing_runtime_reason_names_armv7l_as_unsupported():
    said = missing_reason("onnxruntime", machine="armv7l")
    assert "32-bit ARM (armv7l" in said and "no wheels" in said and "64-bit Raspberry Pi OS" in said
    said = missing_reason("litert", machine="aarch64")
    assert "pip install ai-edge-litert" in said and "aarch64" in said


def test_serve_and_targets_say_which_runtime_is_missing(tmp_path):
    bundle = _make(tmp_path)  # an onnxruntime bundle
    env = {"EDGEKIT_TEST_BLOCK": "onnxruntime", "EDGEKIT_HOME": str(tmp_path / "home")}
    res = run_cli("serve", str(bundle), "--power", "none", no_torch=True, env=env, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "this bundle needs runtime 'onnxruntime' (onnxruntime), which is not installed here" in res.stderr
    res = run_cli("targets", no_torch=True, env=env)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("onnx-cpu ")][0]
    assert line.endswith("[cannot serve here: onnxruntime missing]")
    assert "[cannot serve" not in [ln for ln in res.stdout.splitlines() if ln.startswith("arm-cpu ")][0]
    assert "note: runtime 'onnxruntime' (onnxruntime), which is not installed here" in res.stderr


def test_onnxruntime_leaves_no_file_in_the_temporary_folder(tmp_path):
    """onnxruntime's telemetry writes $TMPDIR/.ses at import unless ORT_DISABLE_TELEMETRY is set: edgekit sets
    it, so a served ONNX bundle leaves nothing behind in /tmp."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["TMPDIR"] = str(tmp_path)
    code = "from edgekit.device.onnx_model import import_onnxruntime; print(import_onnxruntime().__version__)"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.iterdir()) == []
