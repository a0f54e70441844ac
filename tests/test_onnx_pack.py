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
