"""Rewrite an exported decoder's attention into onnxruntime's GroupQueryAttention (KV cache in place).

The exporter's graph (edgekit/workshop/onnx_export.py) concatenates each layer's past and new
keys/values into a fresh present every step (a copy that grows with the sequence), repeats the KV
heads for grouped-query attention (Expand + Reshape) and transposes the keys, ~25 small ops a
layer. This pass replaces, per layer, the two Concats and the attention between them and the
output projection with one com.microsoft GroupQueryAttention node (onnxruntime CPU EP). The
rotary embedding stays in the graph (from position_ids, as before).

Graph interface after the rewrite (edgekit/device/onnx_model.py detects it by `seqlens_k`):
  inputs  input_ids [B,S] int64, position_ids [B,S] int64, logits_rows [R] int64,
          seqlens_k [B] int32 (each row's cached + new tokens, minus 1),
          total_sequence_length [] int32 (the longest row's cached + new tokens),
          past_key_i, past_value_i [B, kv_heads, capacity, head_dim] float32
  outputs logits [B,R,vocab], present_key_i, present_value_i [B, kv_heads, capacity, head_dim]
Rows are right-padded: row b's tokens sit at 0..seqlens_k[b]; the new ones are written at
seqlens_k[b] - S + 1 onwards. Bound to the same buffer as its past (IOBinding), a present is
written in place: onnxruntime's past_present_share_buffer mode. `attention_mask` is gone.
May import: stdlib, numpy, onnx.
"""

from __future__ import annotations

import numpy as np

GQA_INPUTS = ("seqlens_k", "total_sequence_length")


def attribute(node, name: str, default=None):
    """The value of `node`'s attribute `name` (ints/floats/lists as Python values), or `default`."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def index(graph):
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _first_after(start: str, consumers, want) -> object:
    """The first node (breadth-first along consumers from tensor `start`) for which want(node)."""
    queue, seen = [start], set()
    while queue:
        name = queue.pop(0)
        for n in consumers.get(name, []):
            if id(n) in seen:
                continue
            seen.add(id(n))
            if want(n):
                return n
            queue.extend(n.output)
    raise ValueError(f"no attention node found after {start}")


def _perm(node) -> list[int]:
    return list(attribute(node, "perm")) if node.op_type == "Transpose" else []


def _layer(graph, i: int, producer, consumers, heads: tuple[int, int]) -> tuple[list, list, str]:
    """(new nodes, old nodes to drop, attention output name) of layer `i`."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    ck, cv = producer[f"present_key_{i}"], producer[f"present_value_{i}"]
    if ck.op_type != "Concat" or cv.op_type != "Concat":
        raise ValueError(f"layer {i}: present is not a Concat of past and new")
    k_new, v_new = ck.input[1], cv.input[1]
    scores = _first_after(ck.output[0], consumers, lambda n: n.op_type == "MatMul")
    q_scaled = producer[scores.input[0]]
    if q_scaled.op_type != "Mul" or q_scaled.input[1] not in inits:
        raise ValueError(f"layer {i}: the query is not scaled by a constant")
    q_new, scale = q_scaled.input[0], float(numpy_helper.to_array(inits[q_scaled.input[1]])) ** 2
    out_t = _first_after(cv.output[0], consumers, lambda n: _perm(n) == [0, 2, 1, 3])
    out_reshape = consumers[out_t.output[0]][0]
    nodes = []

    def flat(name: str, tag: str) -> str:  # [B,N,S,D] -> [B,S,N*D]
        src = producer.get(name)
        if src is not None and _perm(src) == [0, 2, 1, 3]:
            bsnd = src.input[0]
        else:
            bsnd = f"gqa{i}_{tag}_bsnd"
            nodes.append(helper.make_node("Transpose", [name], [bsnd], perm=[0, 2, 1, 3], name=f"gqa{i}_{tag}_t"))
        nodes.append(helper.make_node("Reshape", [bsnd, "gqa_flat_shape"], [f"gqa{i}_{tag}"], name=f"gqa{i}_{tag}_r"))
        return f"gqa{i}_{tag}"

    q, k, v = flat(q_new, "q"), flat(k_new, "k"), flat(v_new, "v")
    nodes.append(helper.make_node(
        "GroupQueryAttention",
        [q, k, v, f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length"],
        [out_reshape.output[0], f"present_key_{i}", f"present_value_{i}"],
        name=f"gqa{i}", domain="com.microsoft", num_heads=heads[0], kv_num_heads=heads[1], scale=scale))
    return nodes, [ck, cv, out_reshape], out_reshape.output[0]


def prune(graph) -> None:
    """Drop nodes, initializers and inputs nothing reaches the outputs through."""
    producer, _ = index(graph)
    live, stack = set(), [o.name for o in graph.output]
    keep = set()
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(x for x in node.input if x)
    nodes = [n for n in graph.node if id(n) in keep]
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [x for x in graph.input if x.name in live]
    del graph.input[:]
    graph.input.extend(inputs)


def to_gqa(model, num_heads: int, kv_heads: int):
    """`model` (an onnx ModelProto from onnx_export) with GroupQueryAttention; modified in place."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    layers = sum(1 for o in graph.output if o.name.startswith("present_key_"))
    producer, consumers = index(graph)
    new, old = [], set()
    for i in range(layers):
        nodes, dropped, _ = _layer(graph, i, producer, consumers, (num_heads, kv_heads))
        new += nodes
        old |= {id(n) for n in dropped}
    kept = [n for n in graph.node if id(n) not in old]
    # GroupQueryAttention's outputs must come after the projections it reads: append at the end
    # and sort topologically (onnxruntime requires it)
    del graph.node[:]
    graph.node.extend(_toposort(kept + new, {x.name for x in graph.input} | {t.name for t in graph.initializer}
                                | {"gqa_flat_shape", *GQA_INPUTS}))
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "gqa_flat_shape"))
    graph.input.extend([helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
                        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])])
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_", "present_")):
            value.type.tensor_type.shape.dim[2].ClearField("dim_value")
            value.type.tensor_type.shape.dim[2].dim_param = "capacity"
    prune(graph)
    del graph.value_info[:]
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _toposort(nodes: list, available: set) -> list:
    ready, out, pending = set(available), [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all((not x) or x in ready for x in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return out
