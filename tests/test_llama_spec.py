"""Fast tier: the Llama-family block description (edgekit/core/llama_spec.py) made from HF-style
configs, stored in and read back from a segmented bundle's signature, and the segmented host side
running the same numbers from a signature that predates the stored spec."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.core.errors import BuildError
from edgekit.core.llama_spec import SIGNATURE_KEY, spec_from_config, spec_from_signature
from edgekit.device.segmented_model import SegmentedCausalLM


def _config(model_type="llama", **kw):
    base = dict(model_type=model_type, num_hidden_layers=2, hidden_size=8, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True,
                rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, attention_bias=False)
    return SimpleNamespace(**dict(base, **kw))


def test_llama_config_gives_gqa_facts_and_the_shared_op_order():
    spec = spec_from_config(_config())
    assert (spec.heads, spec.kv_heads, spec.head_dim, spec.groups) == (4, 2, 2, 2)
    assert spec.scaling == 2 ** -0.5 and spec.rope_scaling is None and spec.tied_embeddings
    assert [op.kind for op in spec.layer_ops] == ["rmsnorm", "linear", "split_heads", "rope", "attention",
                                                  "linear", "residual", "rmsnorm", "linear", "silu_mul",
                                                  "linear", "residual"]
    assert [op.name for op in spec.layer_ops if op.kind == "linear"] == ["qkv", "o", "up", "down"]
    assert spec.layer_ops[1].modules() == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    assert spec.head_reads == ("model.norm.weight", "model.embed_tokens.weight")


def test_family_details_are_decided_once():
    qwen2 = spec_from_config(_config("qwen2", attention_bias=None, use_sliding_window=False, sliding_window=64))
    qkv, o = (op for op in qwen2.layer_ops if op.name in ("qkv", "o"))
    assert qkv.has_bias("self_attn.k_proj") and not o.has_bias("self_attn.o_proj") and qwen2.sliding_window is None
    qwen3 = spec_from_config(_config("qwen3", head_dim=4))
    assert qwen3.qk_norm and qwen3.head_dim == 4
    assert [op.reads for op in qwen3.layer_ops if op.kind == "head_rmsnorm"] == [
        ("self_attn.q_norm.weight", "self_attn.k_norm.weight")]
    mistral = spec_from_config(_config("mistral", sliding_window=4096))
    assert mistral.sliding_window == 4096 and not mistral.qk_norm
    scaled = spec_from_config(_config(rope_parameters={"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}))
    assert scaled.rope_theta == 5e5 and scaled.rope_scaling == {"rope_type": "llama3", "factor": 8.0}


def test_unsupported_architectures_get_one_line_errors():
    with pytest.raises(BuildError, match=r"^TFLite export supports llama, mistral, qwen2, qwen3 decoders; "
                                         r"this model is 'gpt2' \(use an onnx target\)$"):
        spec_from_config(_config("gpt2"))
    with pytest.raises(BuildError, match="decoders with SiLU MLPs; got 'llama' \\(gelu\\)"):
        spec_from_config(_config(hidden_act="gelu"), "segments")
    with pytest.raises(BuildError, match=r"do not support per-head q/k norms \(qwen3\) yet"):
        spec_from_config(_config("qwen3"), "segments")


def _segmented(signature: dict, seed: int = 0):
    """A SegmentedCausalLM over fake segments (random linear maps) for `signature`."""
    rng = np.random.default_rng(seed)
    hidden, heads, kv, d, vocab, inter = 8, 4, 2, 2, 11, 12
    shapes = {"qkv": [(heads * d, hidden), (kv * d, hidden), (kv * d, hidden)], "o": [(hidden, heads * d)],
              "up": [(inter, hidden), (inter, hidden)], "down": [(hidden, inter)], "head": [(vocab, hidden)]}
    runners = []
    for seg in signature["segments"]:
        mats = [rng.normal(size=s).astype(np.float32) for s in shapes[seg["role"]]]
        runners.append(lambda feeds, mats=mats: [feeds[0] @ m.T for m in mats])
    layers, cache = signature["layers"], signature["cache_length"]
    angles = np.arange(cache)[:, None] * np.array([1.0, 1.0])[None, :]
    tables = {"embed": rng.normal(size=(vocab, hidden)), "cos": np.cos(angles), "sin": np.sin(angles),
              "input_norm": rng.normal(size=(layers, hidden)), "post_norm": rng.normal(size=(layers, hidden)),
              "final_norm": rng.normal(size=hidden), f"bias:{signature['segments'][0]['file']}:1": np.ones(kv * d)}
    return SegmentedCausalLM(runners, signature, tables)


def _signature(with_spec: bool) -> dict:
    roles = ["qkv", "o", "up", "down"] * 2 + ["head"]
    outputs = {"qkv": 3, "up": 2}
    sig = {"layout": "tpu-segments", "segments": [{"file": f"s{k}.tflite", "role": r, "outputs": outputs.get(r, 1)}
                                                  for k, r in enumerate(roles)],
           "host_file": "host_tables.npz", "cache_length": 8, "layers": 2, "hidden_size": 8, "heads": 4,
           "kv_heads": 2, "head_dim": 2, "rms_norm_eps": 1e-5, "scaling": 2 ** -0.5}
    if with_spec:  # as the manifest stores it: through JSON
        sig[SIGNATURE_KEY] = json.loads(json.dumps(spec_from_config(_config()).to_dict()))
    return sig


def test_signature_without_stored_spec_falls_back_to_its_flat_keys():
    old, new = _signature(False), _signature(True)
    assert spec_from_signature(new) == spec_from_config(_config())
    fallback = spec_from_signature(old)
    facts = (fallback.layers, fallback.heads, fallback.kv_heads, fallback.head_dim, fallback.scaling)
    assert facts == (2, 4, 2, 2, 2 ** -0.5)
    assert fallback.layer_ops == spec_from_config(_config()).layer_ops
    ids = [1, 5, 3, 9, 2]
    lm_old, lm_new = _segmented(old), _segmented(new)
    got_old = lm_old.forward(ids, lm_old.new_cache())
    got_new = lm_new.forward(ids, lm_new.new_cache())
    assert got_old.shape == (5, 11) and np.isfinite(got_old).all()
    np.testing.assert_array_equal(got_old, got_new)
    cache = lm_new.new_cache()
    split = np.concatenate([lm_new.forward(ids[:2], cache), lm_new.forward(ids[2:], cache)])
    np.testing.assert_allclose(split, got_new, rtol=1e-5, atol=1e-5)


def test_host_side_refuses_a_layout_or_op_it_cannot_run():
    sig = _signature(True)
    sig["segments"][1]["role"] = "up"
    with pytest.raises(ValueError, match="unexpected segment layout"):
        _segmented(sig)
    sig = _signature(True)
    sig[SIGNATURE_KEY]["qk_norm"] = True
    with pytest.raises(ValueError, match=r"no host rule for op\(s\) \['head_rmsnorm'\]"):
        _segmented(sig)
