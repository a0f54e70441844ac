"""Tied embedding / LM head stored once in int8 and int4-weight-only ONNX models (issue 17; both keep the head 8-bit).

The exporter unties a tied LM head so MatMulNBits can quantize it (edgekit/workshop/onnx_export.py);
quantize_dynamic then stores the embedding Gather's table a second time, as per-tensor uint8 (one scale
for the whole table). When the LM head's 8-bit MatMulNBits weights (block 32, symmetric: no zero-point
input, so 128 is zero) are a rounding of the same table, the Gather + DequantizeLinear pair becomes
com.microsoft GatherBlockQuantized (bits 8, gather axis 0, quantize axis 2) reading the head's
[vocab, blocks, 32] uint8 initializer, its scales through a Reshape to [vocab, blocks, 1] (MatMulNBits
wants [vocab, blocks]; ONNX Runtime folds the Reshape once at load), then a Reshape to [.., hidden].
The rows change from per-tensor uint8 to block-32 int8: finer, so not bit-identical to before.
Units: bytes; scales are float32 multipliers.
May import: stdlib, numpy, onnx, edgekit.workshop.onnx_gqa.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.workshop.onnx_gqa import attribute


def _find(graph) -> tuple | str:
    """(gather, dequantize, head) nodes of the shareable pattern, or the reason it is not there."""
    inits = {t.name: t for t in graph.initializer}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits]
    deq = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    pairs = [(g, deq[g.output[0]]) for g in gathers if g.output[0] in deq and len(inits[g.input[0]].dims) == 2]
    if len(pairs) != 1:
        return f"{len(pairs)} int8 embedding Gather tables (expected 1)"
    gather, dq = pairs[0]
    rows, cols = inits[gather.input[0]].dims
    heads = [n for n in graph.node if n.op_type == "MatMulNBits" and attribute(n, "N") == rows
             and attribute(n, "K") == cols]
    if len(heads) != 1:
        return f"{len(heads)} MatMulNBits with N={rows}, K={cols} (the LM head; expected 1)"
    bits = attribute(heads[0], "bits")
    if bits != 8 or (len(heads[0].input) > 3 and heads[0].input[3]):
        return f"the LM head is {bits}-bit{' with zero points' if len(heads[0].input) > 3 else ''}, not symmetric 8-bit"
    return gather, dq, heads[0]


def _same_table(inits, gather, dq, head) -> tuple[bool, float]:
    """Whether the head's rows and the Gather's rows round the same table: they differ by no more
    than both rounding errors together; also the largest difference."""
    import numpy as np
    from onnx import numpy_helper

    old_q = numpy_helper.to_array(inits[gather.input[0]]).astype(np.float32)
    scale = float(numpy_helper.to_array(inits[dq.input[1]]))
    zero = float(numpy_helper.to_array(inits[dq.input[2]])) if len(dq.input) > 2 and dq.input[2] else 0.0
    b = numpy_helper.to_array(inits[head.input[1]]).astype(np.float32) - 128.0
    s = numpy_helper.to_array(inits[head.input[2]]).reshape(b.shape[0], b.shape[1], 1)
    diff = np.abs((b * s).reshape(old_q.shape) - (old_q - zero) * scale)
    bound = np.broadcast_to(np.abs(s), b.shape).reshape(old_q.shape) * 1.01 + abs(scale) * 0.51
    return bool(np.all(diff <= bound)), float(diff.max())


def share_tied_head(model_path: Path) -> dict:
    """Rewrite the int8 model at `model_path` so the embedding rows come from the LM head's weights;
    returns {"shared": True, tensor, bytes_saved, max_abs_diff_vs_old_rows} or {"shared": False, reason}."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    g = model.graph
    found = _find(g)
    if isinstance(found, str):
        return {"shared": False, "reason": found}
    gather, dq, head = found
    inits = {t.name: t for t in g.initializer}
    same, worst = _same_table(inits, gather, dq, head)
    if not same:
        return {"shared": False, "reason": f"the LM head is not the embedding table (rows differ by up to {worst:.3g}): "
                                           "the model does not tie them"}
    n, blocks, size = inits[head.input[1]].dims
    g.initializer.extend([numpy_helper.from_array(np.array([n, blocks, 1], np.int64), "embed_scales_shape"),
                          numpy_helper.from_array(np.array([0, 0, blocks * size], np.int64), "embed_rows_shape")])
    new = [helper.make_node("Reshape", [head.input[2], "embed_scales_shape"], ["embed_scales"], name="embed_scales"),
           helper.make_node("GatherBlockQuantized", [head.input[1], gather.input[1], "embed_scales"], ["embed_blocks"],
                            domain="com.microsoft", name="embed_from_lm_head", gather_axis=0, quantize_axis=2,
                            block_size=size, bits=8),
           helper.make_node("Reshape", ["embed_blocks", "embed_rows_shape"], [dq.output[0]], name="embed_rows")]
    at = list(g.node).index(gather)
    for node in (gather, dq):
        g.node.remove(node)
    for node in reversed(new):
        g.node.insert(at, node)
    for name in {gather.input[0], *dq.input[1:]} - {""}:
        g.initializer.remove(inits[name])
    before = model_path.stat().st_size
    onnx.save(model, str(model_path))
    return {"shared": True, "tensor": head.input[1], "shape": [n, blocks * size],
            "bytes_saved": before - model_path.stat().st_size, "max_abs_diff_vs_old_rows": round(worst, 6)}
