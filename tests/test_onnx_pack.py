"""Fast tier (with onnx installed): edgekit/workshop/onnx_pack.py on a small graph built here. Two MatMuls
with constant weights that read one tensor become one MatMul + Split with the same values; a MatMul whose
weight is not a constant stays; blockwise 4-bit quantization of the packed weight gives exactly the
separate weights' codes and scales, one after the other."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekit.workshop.onnx_pack import pack_projections  # noqa: E402

K, N_GATE, N_UP = 64, 40, 24
RNG = np.random.default_rng(7)


def _model():
    """gate = x @ Wg, up = x @ Wu (constants), free = x @ w (w a graph input), other = gate * 2."""
    f, rng = TensorProto.FLOAT, np.random.default_rng(7)  # the same weights on every call
    inits = [numpy_helper.from_array(rng.normal(0, 1, (K, N_GATE)).astype(np.float32), "wg"),
             numpy_helper.from_array(rng.normal(0, 1, (K, N_UP)).astype(np.float32), "wu"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["gate"], name="g"),
             helper.make_node("MatMul", ["x", "w"], ["free"], name="f"),
             helper.make_node("MatMul", ["x", "wu"], ["up"], name="u"),
             helper.make_node("Mul", ["gate", "two"], ["other"], name="m")]
    inputs = [helper.make_tensor_value_info("x", f, ["b", "s", K]), helper.make_tensor_value_info("w", f, [K, 8])]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("gate", "up", "free", "other")]
    graph = helper.make_graph(nodes, "pack", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_shared_input_matmuls_become_one_matmul_and_a_split_with_the_same_values():
    model = _model()
    feeds = {"x": RNG.normal(0, 1, (2, 3, K)).astype(np.float32), "w": RNG.normal(0, 1, (K, 8)).astype(np.float32)}
    before = _run(model, feeds)
    assert pack_projections(model) == {"packed_matmuls": 1, "matmuls_saved": 1}
    ops = [(n.op_type, list(n.input)) for n in model.graph.node]
    assert ops[0] == ("MatMul", ["x", "packed_0_weight"]) and ops[1][0] == "Split"
    assert ("MatMul", ["x", "w"]) in ops and len(ops) == 4  # the non-constant weight stays apart
    assert {t.name for t in model.graph.initializer} == {"packed_0_weight", "packed_0_sizes", "two"}
    for x, y in zip(before, _run(model, feeds)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)


def test_packed_weight_quantizes_to_the_separate_weights_codes(tmp_path):
    from edgekit.workshop.onnx_quantize import quantize_onnx

    plain, packed = _model(), _model()
    pack_projections(packed)
    tensors = {}
    for name, model in (("plain", plain), ("packed", packed)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        quantize_onnx(tmp_path / f"{name}.onnx", tmp_path / f"{name}-q.onnx", "int4-weight-only")
        q = onnx.load(str(tmp_path / f"{name}-q.onnx"))
        nbits = {n.input[0] + ":" + n.output[0]: n for n in q.graph.node if n.op_type == "MatMulNBits"}
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        tensors[name] = {key: [inits[i] for i in n.input[1:3]] for key, n in nbits.items()}
    separate = [tensors["plain"]["x:gate"], tensors["plain"]["x:up"]]
    (joined,) = [v for k, v in tensors["packed"].items() if k.endswith("packed_0")]
    for part in range(2):  # blob [N, blocks, bytes], scales [N * blocks]: gate's rows, then up's
        assert np.array_equal(joined[part], np.concatenate([s[part] for s in separate]))


def _attention_model(q_is_output: bool = False, weight_type=np.float32):
    """q/k/v = x @ Wq/Wk/Wv in the graph order v, k, q, read by one GroupQueryAttention as (q, k, v)."""
    f, rng = TensorProto.FLOAT, np.random.default_rng(3)
    weights = {w: rng.normal(0, 1, (K, n)).astype(weight_type) for w, n in (("wq", 32), ("wk", 16), ("wv", 16))}
    nodes = [helper.make_node("MatMul", ["x", f"w{t}"], [t], name=t) for t in ("v", "k", "q")]
    nodes.append(helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens_k", "total"],
                                  ["attn", "present_key", "present_value"], domain="com.microsoft",
                                  num_heads=2, kv_num_heads=1))
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("attn", *(["q"] if q_is_output else []))]
    inputs = [helper.make_tensor_value_info(n, f, None) for n in ("x", "pk", "pv", "seqlens_k", "total")]
    graph = helper.make_graph(nodes, "qkv", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph), weights


def test_qkv_become_the_attentions_packed_input_in_its_slot_order():
    model, w = _attention_model()
    assert pack_projections(model) == {"packed_matmuls": 1, "matmuls_saved": 2}
    matmul, gqa = model.graph.node
    assert list(gqa.input[:3]) == [matmul.output[0], "", ""]  # key and value empty: packed QKV
    packed = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == matmul.input[1]))
    assert np.array_equal(packed, np.concatenate([w["wq"], w["wk"], w["wv"]], axis=1))  # q, k, v: slot order


def test_qkv_that_is_also_a_graph_output_is_split_back_and_non_float_weights_stay():
    model, _ = _attention_model(q_is_output=True)
    pack_projections(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMul", "Split", "GroupQueryAttention"]
    assert list(model.graph.node[2].input[:3]) == ["q", "k", "v"] and "q" in model.graph.node[1].output
    model, _ = _attention_model(weight_type=np.float16)
    assert pack_projections(model) == {"packed_matmuls": 0, "matmuls_saved": 0}
    assert [n.op_type for n in model.graph.node] == ["MatMul"] * 3 + ["GroupQueryAttention"]


def test_names_already_taken_get_another_prefix():
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "packed_0_weight"))
    pack_projections(model)  # (the extra initializer is unused: pruned)
    assert model.graph.node[0].input[1] == "packed1_0_weight"
