"""Full tier: the restatements that follow the LlamaSpec equal Hugging Face's forward on tiny random
qwen2 (q/k/v biases), qwen3 (q/k norms) and mistral (GQA) decoders: the TFLite export's static-shape
decoder (eager, before conversion) and, for qwen2, the fp32 Edge TPU segments with the numpy host side."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.full
IDS = [1, 7, 3, 20, 5, 9]
CACHE = 16


def _tiny(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # random norm weights and biases, so a dropped one shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
    return model


def _reference(model) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].numpy()


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_static_shape_decoder_equals_hugging_face(model_type):
    import torch

    from edgekit.workshop.tflite_export import EdgeDecoder, rotary_tables

    model = _tiny(model_type)
    dec = EdgeDecoder(model, CACHE).eval()
    n = len(IDS)
    cos, sin = rotary_tables(model, CACHE)
    mask = torch.full((1, 1, n, CACHE), -1e4)
    for i in range(n):
        mask[0, 0, i, : i + 1] = 0
    kv = [torch.zeros(1, dec.kv_heads, CACHE, dec.head_dim) for _ in range(2 * len(dec.layers))]
    with torch.no_grad():
        x = model.model.embed_tokens.weight[IDS][None]
        got = dec(x, torch.arange(n, dtype=torch.int32), cos[:n], sin[:n], mask, *kv)[0][0].numpy()
    assert np.abs(got - _reference(model)).max() < 1e-4


def test_qwen2_segments_with_host_biases_equal_hugging_face(tmp_path):
    from edgekit.device.segmented_model import open_segmented
    from edgekit.workshop.coral_segments import export_segments

    model = _tiny("qwen2")
    sig = export_segments(model, tmp_path / "model.tflite", CACHE)
    assert sig["llama_spec"]["qkv_bias"] and not sig["llama_spec"]["o_bias"]
    lm = open_segmented(tmp_path / "model.tflite", {"signature": sig})
    cache = lm.new_cache()
    got = np.concatenate([lm.forward(IDS[:4], cache), lm.forward(IDS[4:], cache)])
    assert np.abs(got - _reference(model)).max() < 1e-4
