"""Full tier: `edgekit verify` on real stories260k bundles (ONNX, its .tar, TFLite, Coral segments)
with torch blocked, and `serve --verify` reporting the check in /props."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import run_cli
from test_build_serve import serving

pytestmark = pytest.mark.full


def _verify(bundle, *extra):
    res = run_cli("verify", str(bundle), *extra, no_torch=True, timeout=120)
    return res, json.loads((bundle / "manifest.json").read_text()) if bundle.is_dir() else None


def _same_as_workstation(out: dict, manifest: dict) -> None:
    """On the build machine the device figures are the workstation's (same kernels)."""
    ws = manifest["metrics"]["verify"]["reference"]["workstation"]
    fig = out["figures"]
    assert fig["tokenizer_match"] is True and fig["greedy_total"] == ws["greedy_total"] > 0
    assert fig["max_logit_diff"] == pytest.approx(ws["max_logit_diff"], abs=1e-3)
    assert fig["perplexity"] == pytest.approx(ws["perplexity"], rel=1e-4)


def test_onnx_bundle_and_its_tar_verify_on_this_machine(stories_build):
    bundle = stories_build["int8"]
    res, m = _verify(bundle, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["passed"] is True and out["seconds"] < 2.0
    _same_as_workstation(out, m)
    ppl = next(c for c in out["checks"] if c["name"] == "perplexity_ratio")
    assert ppl["limit"] == m["target"]["verify"]["max_perplexity_ratio"] and ppl["pytorch"] > 1.0
    ref = next(f for f in m["files"] if f["path"] == "reference.npz")
    assert ref["bytes"] == m["metrics"]["verify"]["reference"]["bytes"] < 50_000
    res = run_cli("verify", str(bundle.with_name("int8.tar")), "--threads", "1", no_torch=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "perplexity ratio" in res.stdout and "workstation export" in res.stdout and "passed on" in res.stdout


@pytest.mark.parametrize("variant", ["arm-cpu", "coral"])
def test_tflite_and_coral_bundles_verify_on_this_machine(tflite_builds, variant):
    if variant == "coral":  # no Edge TPU here: an error, unless the CPU is allowed
        refused, _ = _verify(tflite_builds[variant], "--json")
        assert refused.returncode == 1 and "--allow-cpu-fallback" in refused.stderr
    res, m = _verify(tflite_builds[variant], "--json", *(["--allow-cpu-fallback"] if variant == "coral" else []))
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["delegation"]["cpu_fallback"] is (variant == "coral")
    assert out["passed"] is True and out["seconds"] < 2.0
    _same_as_workstation(out, m)
    assert {c["name"] for c in out["checks"]} >= {"max_logit_diff", "greedy_agreement", "perplexity_ratio"}


def test_serve_verify_shows_the_check_in_props(stories_bundle):
    with serving(stories_bundle, "--verify", "--power", "none") as base:
        dv = httpx.get(base + "/props", timeout=10).json()["device_verify"]
    assert dv["passed"] is True and dv["workstation"]["machine"] == dv["machine"]
    assert all(c["passed"] in (True, None) for c in dv["checks"])
