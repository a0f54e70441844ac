"""Fast tier (with onnx installed): the in-place KV path of edgekit.device.onnx_model on a one-layer
GroupQueryAttention graph built here and run by onnxruntime, against attention over the whole
sequence recomputed in numpy (no cache)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from edgekit.device.onnx_model import OnnxCausalLM  # noqa: E402

VOCAB, HEADS, KV_HEADS, DIM, MAX_LEN = 32, 4, 2, 8, 24
RNG = np.random.default_rng(0)
W = {n: RNG.normal(0, 0.5, s).astype(np.float32) for n, s in (
    ("emb", (VOCAB, HEADS * DIM)), ("wq", (HEADS * DIM, HEADS * DIM)), ("wk", (HEADS * DIM, KV_HEADS * DIM)),
    ("wv", (HEADS * DIM, KV_HEADS * DIM)), ("wo", (HEADS * DIM, VOCAB)))}


def write_model(path):
    """input_ids -> embedding -> q/k/v -> GroupQueryAttention(past_key_0, past_value_0) -> logits
    (+ position_ids, so positions count): the graph form edgekit/workshop/onnx_gqa.py writes."""
    from onnx import TensorProto, helper, numpy_helper

    f, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    kv = ["batch", KV_HEADS, "capacity", DIM]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"]),
        *[helper.make_node("MatMul", ["x", w], [o]) for w, o in (("wq", "q"), ("wk", "k"), ("wv", "v"))],
        helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key_0", "past_value_0", "seqlens_k",
                                                 "total_sequence_length"], ["attn", "present_key_0", "present_value_0"],
                         domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS),
        helper.make_node("MatMul", ["attn", "wo"], ["head"]),
        helper.make_node("Unsqueeze", ["position_ids", "last"], ["pos3"]),
        helper.make_node("Cast", ["pos3"], ["posf"], to=f),
        helper.make_node("Add", ["head", "posf"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "gqa", [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
                       helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"]),
                       helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
                       helper.make_tensor_value_info("total_sequence_length", i32, []),
                       helper.make_tensor_value_info("past_key_0", f, kv),
                       helper.make_tensor_value_info("past_value_0", f, kv)],
        [helper.make_tensor_value_info("logits", f, ["batch", "seq", VOCAB]),
         helper.make_tensor_value_info("present_key_0", f, kv), helper.make_tensor_value_info("present_value_0", f, kv)],
        [numpy_helper.from_array(a, n) for n, a in W.items()] + [numpy_helper.from_array(np.array([-1]), "last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))


def reference(tokens: list[int]) -> np.ndarray:
    """Logits of every position of `tokens`, causal attention recomputed in full."""
    x = W["emb"][tokens]
    q = (x @ W["wq"]).reshape(len(tokens), HEADS, DIM)
    k, v = ((x @ W[w]).reshape(len(tokens), KV_HEADS, DIM) for w in ("wk", "wv"))
    group = HEADS // KV_HEADS
    out = np.zeros_like(q)
    for h in range(HEADS):
        s = q[:, h] @ k[:, h // group].T / np.sqrt(DIM) + np.triu(np.full((len(tokens),) * 2, -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, h // group]
    return out.reshape(len(tokens), -1) @ W["wo"] + np.arange(len(tokens))[:, None]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("gqa") / "model.onnx"
    write_model(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return OnnxCausalLM(session, MAX_LEN)


def test_steps_write_into_the_same_buffers_and_match_full_attention(lm):
    assert lm.inplace and lm.batch_refusal is None
    tokens = RNG.integers(0, VOCAB, 12).tolist()
    cache = lm.new_cache()
    buffers = list(cache.past)
    got = [lm.forward(tokens[:5], cache)]  # a prompt, then a 3-token chunk after it, then single tokens
    got.append(lm.forward(tokens[5:8], cache))
    got += [lm.forward([t], cache, last_only=True) for t in tokens[8:]]
    np.testing.assert_allclose(np.concatenate(got), reference(tokens), atol=1e-4)
    assert all(a is b for a, b in zip(cache.past, buffers)) and cache.length == 12
    assert np.abs(buffers[0][0, :, :12]).sum(axis=-1).all() and not buffers[0][0, :, 12:].any()


def test_rewind_prefix_copy_and_batch_rows_of_different_lengths(lm):
    a_tokens, b_tokens = RNG.integers(0, VOCAB, 9).tolist(), RNG.integers(0, VOCAB, 4).tolist()
    a, b = lm.new_cache(), lm.new_cache()
    lm.forward(a_tokens[:7] + [3, 3], a)
    lm.rewind(a, 7)  # speculative decoding's rejected drafts: the next step overwrites them
    snapshot = lm.cache_copy(a, 7)  # what the prefix cache stores: only the 7 tokens
    assert snapshot.past[0].shape[2] == 7
    lm.forward(b_tokens[:3], b)
    logits = lm.forward_batch([a_tokens[7], b_tokens[3]], [a, b])
    np.testing.assert_allclose(logits[0], reference(a_tokens[:8])[-1], atol=1e-4)
    np.testing.assert_allclose(logits[1], reference(b_tokens)[-1], atol=1e-4)
    again = lm.forward_batch([a_tokens[8], 5], [a, b])  # the same rows: the batch buffers are reused
    np.testing.assert_allclose(again[0], reference(a_tokens)[-1], atol=1e-4)
    np.testing.assert_allclose(again[1], reference(b_tokens + [5])[-1], atol=1e-4)
    alone = lm.forward([1], b, last_only=True)  # a row of the batch goes on alone, in its own row
    np.testing.assert_allclose(alone[0], reference(b_tokens + [5, 1])[-1], atol=1e-4)
    restored = lm.forward([a_tokens[7]], snapshot, last_only=True)  # a compact copy grows once
    np.testing.assert_allclose(restored[0], reference(a_tokens[:8])[-1], atol=1e-4)
    assert snapshot.past[0].shape[2] == MAX_LEN
