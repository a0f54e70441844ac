"""Pack the projections that read one tensor into one MatMul (attention q/k/v, MLP gate/up).

After the attention rewrite and fusions (edgekit/workshop/onnx_gqa.py, onnx_fuse.py) a decoder
layer still runs seven MatMuls a token, three of them (q, k, v) on the same normed input and two
(gate, up) on another. At decode (one row) each is a small matrix-vector product whose thread
dispatch costs about as much as its arithmetic, so this pass concatenates the weights of every group
of MatMuls that share their input and have constant 2-D weights of the same K rows into one
[K, N1+N2+...] weight, and:
  - where the group is exactly a GroupQueryAttention's query/key/value, the attention reads the
    packed [B, S, (H + 2 KV) * D] tensor itself (its packed-QKV form: key and value left empty);
  - otherwise one Split on the last axis gives back the original tensors, under their old names.
Blockwise weight quantization (MatMulNBits, blocks along K) quantizes each column alone, so the
packed weight quantizes to exactly the separate weights' codes and scales: results are unchanged.
SmolLM2-135M: 211 MatMuls a decode step -> 121. May import: stdlib, numpy, onnx, edgekit.workshop.onnx_gqa.
"""

from __future__ import annotations

import numpy as np

from edgekit.workshop.onnx_gqa import index, prune


def _groups(graph, inits: dict) -> list[list]:
    """MatMul nodes grouped by their input tensor, where 2+ read it with constant 2-D float weights of equal K
    (`inits`: the graph's initializers by name)."""
    by_input: dict[str, list] = {}
    for n in graph.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and not n.domain else None
        if w is not None and len(w.dims) == 2 and w.data_type == 1:  # FLOAT
            by_input.setdefault(n.input[0], []).append(n)
    return [g for g in by_input.values() if len(g) > 1 and len({tuple(inits[n.input[1]].dims)[0] for n in g}) == 1]


def _attention_order(group: list, consumers, graph_outputs: set) -> tuple[object, list] | None:
    """(attention, group ordered q, k, v) when the group's outputs are exactly one
    GroupQueryAttention's query, key and value, and none is also a graph output; else None."""
    users = {id(c): c for n in group for c in consumers.get(n.output[0], [])}
    if len(group) != 3 or len(users) != 1 or any(n.output[0] in graph_outputs for n in group):
        return None
    gqa = next(iter(users.values()))
    if gqa.op_type != "GroupQueryAttention" or len(gqa.input) < 3:
        return None
    by_output = {n.output[0]: n for n in group}
    if any(len(consumers.get(n.output[0], [])) != 1 for n in group) or set(gqa.input[:3]) != set(by_output):
        return None
    return gqa, [by_output[name] for name in gqa.input[:3]]


def _free_prefix(graph) -> str:
    """"packed", or "packed1", "packed2"... : a prefix no node, initializer or tensor name starts with."""
    names = {n.name for n in graph.node} | {t.name for t in graph.initializer}
    names |= {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    prefix, i = "packed", 0
    while any(name.startswith(prefix + "_") for name in names):
        i += 1
        prefix = f"packed{i}"
    return prefix


def _packed_nodes(graph, inits: dict, group: list, packed: str, attention) -> list:
    """The nodes replacing `group`: one MatMul on the concatenated weights (+ a Split giving back the
    group's outputs, unless `attention` reads the packed tensor); adds the initializers."""
    from onnx import helper, numpy_helper

    weights = [numpy_helper.to_array(inits[n.input[1]]) for n in group]
    graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{packed}_weight"))
    new = [helper.make_node("MatMul", [group[0].input[0], f"{packed}_weight"], [packed], name=f"{packed}_matmul")]
    if attention is not None:
        attention.input[0], attention.input[1], attention.input[2] = packed, "", ""
        return new
    sizes = numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{packed}_sizes")
    graph.initializer.append(sizes)
    return new + [helper.make_node("Split", [packed, sizes.name], [n.output[0] for n in group], axis=-1,
                                   name=f"{packed}_split")]


def pack_projections(model) -> dict:
    """Pack `model`'s shared-input MatMuls in place; {"packed_matmuls": groups packed, "matmuls_saved": n}."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}  # built once: the passes below only add to it
    groups, prefix = _groups(graph, inits), _free_prefix(graph)
    _, consumers = index(graph)
    graph_outputs = {o.name for o in graph.output}
    at_first: dict[int, list] = {}  # id of a group's first node in graph order -> its replacement
    drop: set[int] = set()
    for k, group in enumerate(groups):
        ordered = _attention_order(group, consumers, graph_outputs)
        at_first[id(group[0])] = _packed_nodes(graph, inits, ordered[1] if ordered else group, f"{prefix}_{k}",
                                               ordered[0] if ordered else None)
        drop.update(id(n) for n in group)
    nodes = []  # one rebuild: the container copies messages, so ids hold only until it changes
    for n in graph.node:
        nodes.extend(at_first.get(id(n), []))
        if id(n) not in drop:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    prune(graph)
    return {"packed_matmuls": len(groups), "matmuls_saved": sum(len(g) - 1 for g in groups)}
