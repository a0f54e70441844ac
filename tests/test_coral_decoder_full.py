"""Full tier: the host LM head path of the Edge TPU segments on a real model (the stories260k teacher
from the shared folder stands in for SmolLM2: same Llama family, tied embedding / LM head). No
distillation, no build: export, calibrate and quantize the segments directly (seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.full


@pytest.fixture(scope="module")
def teacher(shared_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = Path(shared_dir) / "models" / "stories260k"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path} not found")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


IDS = [1, 403, 407, 261, 378, 9, 30, 56, 200, 100, 23, 11]


def test_host_head_segments_equal_pytorch_in_fp32_and_stay_close_in_int8(teacher, tmp_path):
    import torch

    from edgekit.device.segmented_model import host_weight_bytes, open_segmented
    from edgekit.device.tflite_model import load_host_tables
    from edgekit.workshop.coral_segments import calibration_feeds_segments, export_segments, quantize_segments

    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    fp32.mkdir()
    int8.mkdir()
    sig = export_segments(teacher, fp32 / "model.tflite", 64, lm_head="host")
    files = sorted(p.name for p in fp32.glob("*.tflite"))
    # 5 layers x 4 segments, no head segment: the LM head reads the tied embedding on the host
    assert len(sig["segments"]) == len(files) == 20 and "head" not in [s["role"] for s in sig["segments"]]
    assert sig["lm_head"] == "host" and sig["lm_head_tied"] is True and sig["vocab_size"] == 512
    assert host_weight_bytes(sig) == 64 * 512
    with torch.no_grad():
        ref = teacher(torch.tensor([IDS])).logits[0].numpy()
    lm = open_segmented(fp32 / "model.tflite", {"signature": sig})
    assert lm.head is not None and lm.head.rows.dtype == np.float32
    got = lm.forward(IDS, lm.new_cache())
    assert np.abs(got - ref).max() < 1e-3

    # calibration and evaluation on the model's own greedy text (natural token statistics)
    with torch.no_grad():
        text = [teacher.generate(torch.tensor([[1, t]]), max_new_tokens=38, do_sample=False)[0].tolist()
                for t in (403, 261, 378)]
    feeds = calibration_feeds_segments(fp32 / "model.tflite", sig, text[:2])
    params = quantize_segments(fp32 / "model.tflite", int8 / "model.tflite", "int8-full", feeds)
    assert params["embedding_dtype"] == "int8" and "host_lm_head_dtype" not in params  # tied: stored once
    tables = load_host_tables(int8 / "model.tflite", sig)
    assert "lm_head" not in tables and tables["embed"].dtype == np.int8
    q = open_segmented(int8 / "model.tflite", {"signature": sig})
    assert q.head.rows.dtype == np.int8 and q.head.scale.shape == (512,)
    # the int8 host head alone, on the fp32 model's final states: every logit within the rounding bound
    # |sum((q s - w) h)| <= s / 2 x sum |h| of its row
    with torch.no_grad():
        out = teacher(torch.tensor([text[2]]), output_hidden_states=True)
    h, ref = out.hidden_states[-1][0].numpy(), out.logits[0].numpy()
    for t in range(h.shape[0]):
        bound = q.head.scale / 2 * np.abs(h[t]).sum() + 1e-4
        assert (np.abs(q.head(h[t]) - ref[t]) <= bound).all()
    # end to end (int8 segments + int8 host head): mostly the same next token as the fp32 model
    logits = q.forward(text[2], q.new_cache())
    agree = float(np.mean(logits.argmax(-1) == ref.argmax(-1)))
    assert agree >= 0.6, agree


def test_untied_host_head_gets_its_own_int8_table(teacher, tmp_path):
    import copy

    import torch

    from edgekit.device.segmented_model import open_segmented
    from edgekit.workshop.coral_segments import export_segments, quantize_segments

    model = copy.deepcopy(teacher)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 1.5)  # no longer tied
    (tmp_path / "q").mkdir()
    sig = export_segments(model, tmp_path / "model.tflite", 32, lm_head="host")
    assert sig["lm_head_tied"] is False
    with np.load(tmp_path / "host_tables.npz") as z:
        assert z["lm_head"].shape == (512, 64) and z["lm_head"].dtype == np.float32
    params = quantize_segments(tmp_path / "model.tflite", tmp_path / "q" / "model.tflite", "int8-weight-only")
    assert params["host_lm_head_dtype"] == "int8"
    with np.load(tmp_path / "q" / "host_tables.npz") as z:
        rows, scale = z["lm_head"], z["lm_head_scale"]
    w = model.lm_head.weight.detach().numpy()
    assert rows.dtype == np.int8 and np.abs(rows * scale[:, None] - w).max() <= scale.max() / 2 + 1e-7
    lm = open_segmented(tmp_path / "model.tflite", {"signature": sig})
    with torch.no_grad():
        ref = model(torch.tensor([IDS[:6]])).logits[0].numpy()
    assert np.abs(lm.forward(IDS[:6], lm.new_cache()) - ref).max() < 1e-3
