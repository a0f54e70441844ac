"""Fast tier (with onnx installed): the int8 ONNX embedding read from the LM head's MatMulNBits weights
(edgekit.workshop.onnx_tied) on a small graph built here and run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
VOCAB, HIDDEN, BLOCK = 40, 64, 32


def _blocks(table):
    """MatMulNBits 8-bit symmetric layout: uint8 [N, K/32, 32] (128 = zero), scales [N, K/32]."""
    b = table.reshape(VOCAB, HIDDEN // BLOCK, BLOCK)
    scale = np.abs(b).max(axis=2) / 127.0
    q = np.clip(np.round(b / scale[..., None]), -127, 127)
    return (q + 128).astype(np.uint8), scale.astype(np.float32)


def write_model(path, gather_table, head_table):
    """input_ids -> Gather(per-tensor uint8 table) -> DequantizeLinear -> `embedding`, and
    x -> MatMulNBits(head) -> `logits`: the shape quantize_dynamic + MatMulNBitsQuantizer leave."""
    from onnx import TensorProto, helper, numpy_helper

    lo, hi = float(min(gather_table.min(), 0)), float(max(gather_table.max(), 0))
    scale = (hi - lo) / 255.0
    zero = int(round(-lo / scale))
    q = np.clip(np.round(gather_table / scale) + zero, 0, 255).astype(np.uint8)
    b, s = _blocks(head_table)
    inits = [numpy_helper.from_array(q, "embed_q"), numpy_helper.from_array(np.float32(scale), "embed_scale"),
             numpy_helper.from_array(np.uint8(zero), "embed_zero"), numpy_helper.from_array(b, "head_B"),
             numpy_helper.from_array(s, "head_scales")]
    nodes = [helper.make_node("Gather", ["embed_q", "input_ids"], ["rows_q"], axis=0),
             helper.make_node("DequantizeLinear", ["rows_q", "embed_scale", "embed_zero"], ["embedding"]),
             helper.make_node("MatMulNBits", ["x", "head_B", "head_scales"], ["logits"], domain="com.microsoft",
                              K=HIDDEN, N=VOCAB, bits=8, block_size=BLOCK, accuracy_level=4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "t"]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HIDDEN])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, "t", HIDDEN]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, VOCAB])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def _run(path, ids, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["embedding", "logits"], {"input_ids": np.array([ids], np.int64), "x": x})


def test_tied_head_serves_the_embedding_rows(tmp_path):
    from edgekit.workshop.onnx_tied import share_tied_head

    table = np.random.default_rng(0).normal(0, 0.05, (VOCAB, HIDDEN)).astype(np.float32)
    path = write_model(tmp_path / "model.onnx", table, table)
    ids, x = [3, 0, 39, 3], np.random.default_rng(1).normal(size=(1, 1, HIDDEN)).astype(np.float32)
    _, logits_before = _run(path, ids, x)
    size = path.stat().st_size
    record = share_tied_head(path)
    assert record["shared"] and record["tensor"] == "head_B" and record["shape"] == [VOCAB, HIDDEN]
    # the uint8 table is gone; three nodes and two shape constants take a few hundred bytes
    assert record["bytes_saved"] == size - path.stat().st_size > VOCAB * HIDDEN - 300
    graph = onnx.load(str(path)).graph
    assert "Gather" not in {n.op_type for n in graph.node} and "embed_q" not in {t.name for t in graph.initializer}
    embedding, logits = _run(path, ids, x)
    b, s = _blocks(table)
    rows = ((b.astype(np.float32) - 128) * s[..., None]).reshape(VOCAB, HIDDEN)
    assert np.array_equal(embedding[0], rows[ids])  # the head's block-32 rows, exactly
    assert np.array_equal(logits, logits_before)  # the head itself is untouched
    assert np.abs(embedding[0] - table[ids]).max() <= s.max() / 2 + 1e-7  # finer than the per-tensor table


def test_untied_head_keeps_the_gather_table_and_says_why(tmp_path):
    from edgekit.workshop.onnx_tied import share_tied_head

    rng = np.random.default_rng(0)
    path = write_model(tmp_path / "model.onnx", rng.normal(0, 0.05, (VOCAB, HIDDEN)).astype(np.float32),
                       rng.normal(0, 0.05, (VOCAB, HIDDEN)).astype(np.float32))
    before = path.read_bytes()
    record = share_tied_head(path)
    assert record["shared"] is False and "does not tie them" in record["reason"]
    assert path.read_bytes() == before


def _tied_lm(path, table, inner, output="logits"):
    """input_ids -> Gather(table) -> MatMul(inner) -> MatMul(table^T) -> `output`: a tied toy LM."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(table, "embed"), numpy_helper.from_array(inner, "inner"),
             numpy_helper.from_array(np.ascontiguousarray(table.T), "head")]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h0"], axis=0),
             helper.make_node("MatMul", ["h0", "inner"], ["h1"], name="inner_mm"),
             helper.make_node("MatMul", ["h1", "head"], [output], name="head_mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "t"])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, "t", VOCAB])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def test_int4_keeps_the_lm_head_8_bit_and_serves_the_embedding_from_it(tmp_path):
    from edgekit.workshop.onnx_quantize import quantize_onnx

    rng = np.random.default_rng(2)
    table = rng.normal(0, 0.05, (VOCAB, HIDDEN)).astype(np.float32)
    inner = rng.normal(0, 0.2, (HIDDEN, HIDDEN)).astype(np.float32)
    src = _tied_lm(tmp_path / "fp32.onnx", table, inner)
    params = quantize_onnx(src, tmp_path / "q4.onnx", "int4-weight-only")
    graph = onnx.load(str(tmp_path / "q4.onnx")).graph
    bits = {n.name.split("_Q")[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits == {"inner_mm": 4, "head_mm": 8}, bits
    assert params["embedding_shared"]["shared"] and "head_mm" in params["lm_head"]
    ops = {n.op_type for n in graph.node}
    assert "GatherBlockQuantized" in ops and "Gather" not in ops
    ids = np.array([[1, 7, 39, 0]], np.int64)
    want = table[ids[0]] @ inner @ table.T
    got = ort.InferenceSession(str(tmp_path / "q4.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input_ids": ids})[0][0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()  # a 4-bit rounding, not another model


def test_int4_says_when_it_finds_no_lm_head_to_keep_8_bit(tmp_path):
    from edgekit.workshop.onnx_quantize import quantize_onnx

    rng = np.random.default_rng(2)
    src = _tied_lm(tmp_path / "fp32.onnx", rng.normal(0, 0.05, (VOCAB, HIDDEN)).astype(np.float32),
                   rng.normal(0, 0.2, (HIDDEN, HIDDEN)).astype(np.float32), output="scores")
    params = quantize_onnx(src, tmp_path / "q4.onnx", "int4-weight-only")
    assert params["lm_head"].startswith("4-bit like the other MatMuls") and "no output named 'logits'" in params["lm_head"]
    graph = onnx.load(str(tmp_path / "q4.onnx")).graph
    assert {next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"} == {4}
    assert params["embedding_shared"]["shared"] is False  # a 4-bit head cannot serve the int8 rows
