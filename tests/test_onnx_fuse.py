"""Fast tier (with onnx installed): edgekit/workshop/onnx_fuse.py's RMSNorm matcher on small graphs built
here and run by onnxruntime: a residual Add + RMSNorm becomes SkipSimplifiedLayerNormalization whose
fourth output still feeds the later reader of the sum, with the same values; chains whose constants
are not an RMSNorm's (exponent 3, no weight) are left alone."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekit.workshop.onnx_fuse import fuse_rmsnorms  # noqa: E402

HIDDEN = 24
RNG = np.random.default_rng(1)


def _graph(exponent: float = 2.0, weighted: bool = True, divide: bool = False):
    """out = rmsnorm(a + b) * w (HF's spelling, or x / rms with `divide`), later = (a + b) * 3: the sum
    has a second reader."""
    f = TensorProto.FLOAT
    consts = {"two": np.array(exponent, np.float32), "axes": np.array([-1]), "eps": np.array(1e-5, np.float32),
              "w": RNG.normal(1, 0.3, HIDDEN).astype(np.float32), "three": np.array(3, np.float32)}
    nodes = [
        helper.make_node("Add", ["a", "b"], ["h"]),
        helper.make_node("Pow", ["h", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
        *([helper.make_node("Div", ["h", "rms"], ["normed"])] if divide else [
            helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["h", "inv"], ["normed"])]),
        helper.make_node("Mul", ["w", "normed"] if weighted else ["normed", "three"], ["out"]),
        helper.make_node("Mul", ["h", "three"], ["later"]),
    ]
    io = [helper.make_tensor_value_info(n, f, ["batch", "seq", HIDDEN]) for n in ("a", "b", "out", "later")]
    graph = helper.make_graph(nodes, "norm", io[:2], io[2:], [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _run(model, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("divide", [False, True])
def test_residual_rmsnorm_becomes_skip_simplified_layer_norm_with_the_same_values(divide):
    model = _graph(divide=divide)
    feeds = {n: RNG.normal(0, 2, (2, 3, HIDDEN)).astype(np.float32) for n in ("a", "b")}
    before = _run(model, feeds)
    counts = fuse_rmsnorms(model)
    assert counts == {"SimplifiedLayerNormalization": 0, "SkipSimplifiedLayerNormalization": 1}
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["SkipSimplifiedLayerNormalization", "Mul"]  # the sum's later reader reads output 3
    skip = model.graph.node[0]
    assert list(skip.input) == ["a", "b", "w"] and list(skip.output) == ["out", "", "", "h"]
    assert [a.f for a in skip.attribute if a.name == "epsilon"] == [pytest.approx(1e-5)]
    after = _run(model, feeds)
    h = (feeds["a"] + feeds["b"]).astype(np.float64)
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    want = [h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5) * weight, h * 3]
    for x, y, w in zip(before, after, want):
        np.testing.assert_allclose(y, x, atol=1e-5)
        np.testing.assert_allclose(y, w, atol=1e-4)


@pytest.mark.parametrize("exponent, weighted", [(3.0, True), (2.0, False)])
def test_chains_that_are_not_an_rmsnorm_stay(exponent, weighted):
    model = _graph(exponent, weighted)
    ops = [n.op_type for n in model.graph.node]
    assert fuse_rmsnorms(model) == {"SimplifiedLayerNormalization": 0, "SkipSimplifiedLayerNormalization": 0}
    assert [n.op_type for n in model.graph.node] == ops
