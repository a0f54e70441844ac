"""Full tier: the export's fusion pass (edgekit/workshop/onnx_fuse.py) on real exports, against the same
export unfused, run by the device runner (prompt, a chunk after it, greedy single-token steps):
a tiny random Llama with head_dim 16 (norms and rotary fused) and stories260k (head_dim 8: norms fused,
rotary kept in the graph because onnxruntime's GroupQueryAttention rotary needs head_size % 16 == 0);
both with their q/k/v and gate/up MatMuls packed (edgekit/workshop/onnx_pack.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from edgekit.core.paths import shared_dir

pytestmark = pytest.mark.full
MAX_LEN = 64
UNFUSED_OPS = ("Pow", "ReduceMean", "Sqrt", "Reciprocal")
ROTARY_OPS = ("Neg", "Slice", "Cos", "Sin")


def _tiny_llama():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_LEN, rope_theta=5000.0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # random norm weights, so a dropped or swapped one shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def _exports(model, folder):
    from edgekit.workshop.onnx_export import export_onnx

    plain = export_onnx(model, folder / "plain.onnx", MAX_LEN, fuse=False)
    fused = export_onnx(model, folder / "fused.onnx", MAX_LEN)
    assert "fused" not in plain and plain == {k: v for k, v in fused.items() if k != "fused"}
    return fused["fused"]


def _run(path, prompt: list[int], steps: int):
    """Every logits row of prompt[:-3], then prompt[-3:] as a chunk, then `steps` greedy tokens."""
    import onnxruntime as ort

    from edgekit.device.onnx_model import OnnxCausalLM

    lm = OnnxCausalLM(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), MAX_LEN)
    cache = lm.new_cache()
    rows = [lm.forward(prompt[:-3], cache), lm.forward(prompt[-3:], cache)]
    tokens = []
    for _ in range(steps):
        tokens.append(int(rows[-1][-1].argmax()))
        rows.append(lm.forward([tokens[-1]], cache, last_only=True))
    return np.concatenate(rows), tokens


def _ops(path):
    import onnx

    model = onnx.load(str(path))
    return Counter(n.op_type for n in model.graph.node), [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]


def _batch(path, prompt: list[int]) -> np.ndarray:
    """Two caches of different lengths decoded together (serve --parallel's step), twice."""
    import onnxruntime as ort

    from edgekit.device.onnx_model import OnnxCausalLM

    lm = OnnxCausalLM(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), MAX_LEN)
    a, b = lm.new_cache(), lm.new_cache()
    lm.forward(prompt, a)
    lm.forward(prompt[:4], b)
    return np.concatenate([lm.forward_batch([prompt[1], prompt[2]], [a, b]), lm.forward_batch([3, 5], [a, b])])


def _same_numbers(folder, prompt):
    plain, plain_tokens = _run(folder / "plain.onnx", prompt, 12)
    fused, fused_tokens = _run(folder / "fused.onnx", prompt, 12)
    assert np.abs(plain - fused).max() <= 1e-4
    assert fused_tokens == plain_tokens
    assert np.abs(_batch(folder / "plain.onnx", prompt) - _batch(folder / "fused.onnx", prompt)).max() <= 1e-4


def test_tiny_llama_norms_and_rotary_fused_same_logits(tmp_path):
    from onnx import helper

    layers = 3
    counts = _exports(_tiny_llama(), tmp_path)
    assert counts == {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2 * layers,
                      "rotary_in_attention": layers, "rotary_kept_because": None,
                      "reshape_pairs_dropped": 3 * layers, "packed_matmuls": 2 * layers, "matmuls_saved": 3 * layers}
    ops, gqas = _ops(tmp_path / "fused.onnx")
    # q/k/v: one MatMul the attention reads packed (key, value empty); gate/up: one MatMul + Split
    assert ops["MatMul"] == 4 * layers + 1 and ops["Split"] == layers
    assert all(g.input[1] == "" and g.input[2] == "" for g in gqas)
    assert ops["SimplifiedLayerNormalization"] == 1 and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert not any(ops[op] for op in UNFUSED_OPS + ROTARY_OPS) and not ops["Reshape"], ops
    plain_ops, _ = _ops(tmp_path / "plain.onnx")
    assert sum(ops.values()) < sum(plain_ops.values()) - 20 * layers
    for g in gqas:
        attrs = {a.name: helper.get_attribute_value(a) for a in g.attribute}
        assert attrs["do_rotary"] == 1 and attrs["rotary_interleaved"] == 0 and g.input[9] == "position_ids"
    rng = np.random.default_rng(3)
    _same_numbers(tmp_path, rng.integers(0, 96, 20).tolist())


@pytest.mark.skipif(shared_dir() is None or not (shared_dir() / "models" / "stories260k").is_dir(),
                    reason="needs ../shared/models/stories260k")
def test_stories260k_norms_fused_rotary_kept_same_logits(tmp_path):
    from edgekit.workshop.teacher import load_causal_lm

    model, tokenizer = load_causal_lm(shared_dir() / "models" / "stories260k")
    counts = _exports(model, tmp_path)
    layers = model.config.num_hidden_layers
    assert counts["SimplifiedLayerNormalization"] == 1 and counts["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert counts["rotary_in_attention"] == 0 and "multiple of 16" in counts["rotary_kept_because"]
    assert counts["reshape_pairs_dropped"] == layers  # the values' only: q and k pass through the rotary
    assert counts["packed_matmuls"] == 2 * layers and counts["matmuls_saved"] == 3 * layers
    ops, _ = _ops(tmp_path / "fused.onnx")
    assert ops["MatMul"] == 4 * layers + 1 and ops["Split"] == 2 * layers  # the rotary reads q and k apart
    assert not any(ops[op] for op in UNFUSED_OPS) and ops["Neg"] == 2 * layers
    prompt = tokenizer("Once upon a time, there was a little dog who liked to run in the park.")["input_ids"]
    _same_numbers(tmp_path, prompt)
