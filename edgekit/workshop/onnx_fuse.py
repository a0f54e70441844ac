"""Fuse an exported decoder's RMSNorm chains and rotary embedding into onnxruntime kernels.

After the GroupQueryAttention rewrite (edgekit/workshop/onnx_gqa.py) the traced graph still spells
each RMSNorm as Pow(x, 2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x) -> Mul(weight)
and the rotary embedding of q and k as Slice / Neg / Concat / Mul / Add around cos/sin tables
computed from position_ids; onnxruntime (ORT_ENABLE_ALL) fuses neither, so a decode step runs
hundreds of tiny kernels. This pass, matched by structure with its constants checked:
  - RMSNorm -> SimplifiedLayerNormalization(x, weight; epsilon, axis -1); where x is a residual
    Add of two graph tensors, the Add goes too: com.microsoft SkipSimplifiedLayerNormalization
    (input, skip, gamma) whose fourth output is the residual sum the rest of the graph reads.
  - rotary -> GroupQueryAttention's own (do_rotary 1, rotary_interleaved 0: HF's rotate_half),
    fed cos_cache / sin_cache [max_positions, head_dim/2] initializers evaluated from the graph's
    own cos/sin sub-graph (onnx's reference evaluator, so the same arithmetic) and position_ids.
    Skipped, saying why, when head_dim is not a multiple of 16 (onnxruntime's CPU kernel refuses it:
    "head_size shall be a multiple of 16", stories260k's 8) or the tables are not in HF's rotate_half layout.
  - q/k/v reaching the attention as Reshape(Reshape(x @ W, [b, s, -1, D]), [0, 0, -1]) read x @ W.
  - then MatMuls sharing their input are packed into one (edgekit/workshop/onnx_pack.py).
SmolLM2-135M int8, one decode step: 1,407 kernels before, 368 after (onnxruntime profile).
Graph interface unchanged (the runner needs to know nothing: GroupQueryAttention reads position_ids
itself). May import: stdlib, numpy, onnx, edgekit.workshop.onnx_gqa / onnx_pack.
"""

from __future__ import annotations

import numpy as np

from edgekit.workshop.onnx_gqa import attribute, index, prune
from edgekit.workshop.onnx_pack import pack_projections

ROTARY_HEAD_MULTIPLE = 16  # onnxruntime's GroupQueryAttention rotary needs head_size % 16 == 0
MS = "com.microsoft"


class _Index:
    """Producers, consumers and constants of a graph (rebuilt after each rewrite)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer, self.consumers = index(graph)
        self.inits = {t.name: t for t in graph.initializer}
        self._to_array = numpy_helper.to_array
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str):
        """The value of initializer or Constant node output `name`, else None."""
        if name in self.inits:
            return self._to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._to_array(a.t)
        return None

    def only_user(self, name: str, op: str | None = None):
        """The single consumer of `name` (of type `op`), or None (several, none, or a graph output)."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs or (op and users[0].op_type != op):
            return None
        return users[0]

    def source(self, name: str, op: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None


def _is_scalar(value, want: float) -> bool:
    return value is not None and value.size == 1 and float(value.ravel()[0]) == want


def _other(node, name: str) -> str:
    """The other input of a two-input node one of whose inputs is `name`."""
    return node.input[1] if node.input[0] == name else node.input[0]


def _rms_tail(ix: _Index, sqrt, x: str):
    """From Sqrt(mean + eps) to the unweighted x * rsqrt: (nodes, output) or None.
    Forms: Reciprocal -> Mul(x, r); Div(x, sqrt); Div(1, sqrt) -> Mul(x, r)."""
    user = ix.only_user(sqrt.output[0])
    if user is None:
        return None
    if user.op_type == "Div" and list(user.input) == [x, sqrt.output[0]]:
        return [user], user.output[0]
    if user.op_type == "Reciprocal" or (user.op_type == "Div" and user.input[1] == sqrt.output[0]
                                        and _is_scalar(ix.const(user.input[0]), 1.0)):
        mul = ix.only_user(user.output[0], "Mul")
        if mul is not None and _other(mul, user.output[0]) == x:
            return [user, mul], mul.output[0]
    return None


def _match_rmsnorm(ix: _Index, pow_node):
    """{x, eps, weight, nodes, out} of the RMSNorm starting at `pow_node`, or None."""
    x = pow_node.input[0]
    if not _is_scalar(ix.const(pow_node.input[1]), 2.0):
        return None
    mean = ix.only_user(pow_node.output[0], "ReduceMean")
    if mean is None or attribute(mean, "keepdims", 1) != 1:
        return None
    axes = attribute(mean, "axes") if len(mean.input) < 2 else ix.const(mean.input[1])
    if axes is None or list(np.ravel(axes)) != [-1]:
        return None
    add = ix.only_user(mean.output[0], "Add")
    eps = add is not None and ix.const(_other(add, mean.output[0]))
    if add is None or eps is None or eps.size != 1 or not 0 < float(eps.ravel()[0]) < 1e-2:
        return None
    sqrt = ix.only_user(add.output[0], "Sqrt")
    tail = sqrt is not None and _rms_tail(ix, sqrt, x)
    if not tail:
        return None
    scale = ix.only_user(tail[1], "Mul")
    weight = scale is not None and _other(scale, tail[1])
    if scale is None or weight not in ix.inits or ix.const(weight).ndim != 1 or ix.const(weight).size < 2:
        return None
    return {"x": x, "eps": float(eps.ravel()[0]), "weight": weight, "out": scale.output[0],
            "nodes": [pow_node, mean, add, sqrt, *tail[0], scale]}


def _norm_node(ix: _Index, m: dict, k: int):
    """The fused node for RMSNorm match `m` (Skip form when x is a residual Add) and nodes it replaces."""
    from onnx import helper

    residual = ix.source(m["x"], "Add")
    if residual is not None and all(ix.const(i) is None for i in residual.input) and m["x"] not in ix.outputs:
        rest = [u for u in ix.consumers.get(m["x"], []) if all(u is not n for n in m["nodes"])]
        sum_out = m["x"] if rest else ""
        node = helper.make_node("SkipSimplifiedLayerNormalization", [*residual.input, m["weight"]],
                                [m["out"], "", "", sum_out], name=f"fused_skip_norm_{k}", domain=MS,
                                epsilon=m["eps"])
        return node, m["nodes"] + [residual]
    node = helper.make_node("SimplifiedLayerNormalization", [m["x"], m["weight"]], [m["out"]],
                            name=f"fused_norm_{k}", epsilon=m["eps"], axis=-1)
    return node, m["nodes"]


def fuse_rmsnorms(model) -> dict:
    """Every RMSNorm chain of `model` (in place) -> (Skip)SimplifiedLayerNormalization; counts."""
    graph = model.graph
    ix = _Index(graph)
    matches = [m for n in graph.node if n.op_type == "Pow" and (m := _match_rmsnorm(ix, n))]
    position = {id(n): i for i, n in enumerate(graph.node)}
    replaced: dict[int, object] = {}
    counts = {"SimplifiedLayerNormalization": 0, "SkipSimplifiedLayerNormalization": 0}
    for k, m in enumerate(matches):
        node, old = _norm_node(ix, m, k)
        if any(id(n) in replaced for n in old):  # shares a node with a chain already fused: left as it is
            continue
        for n in old:
            replaced[id(n)] = None
        # at the first replaced node's place: its inputs (x, or the residual Add's) exist there
        replaced[id(min(old, key=lambda n: position[id(n)]))] = node
        counts[node.op_type] += 1
    nodes = [replaced.get(id(n), n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None)
    prune(graph)  # the chains' constants (exponent, axes, epsilon)
    return counts


def _slice_range(ix: _Index, node, x: str):
    """(start, end) of a Slice of `x` along the last axis (step 1), else None."""
    if node is None or node.op_type != "Slice" or node.input[0] != x or len(node.input) < 4:
        return None
    values = [ix.const(i) for i in node.input[1:]]
    if any(v is None or v.size != 1 for v in values):
        return None
    start, end, axis = (int(v.ravel()[0]) for v in values[:3])
    step = int(values[3].ravel()[0]) if len(values) > 3 else 1
    return (start, end) if axis in (-1, 3) and step == 1 else None


def _rotate_half_of(ix: _Index, name: str, x: str, half: int) -> list | None:
    """Nodes of Concat(-x[..., half:], x[..., :half]) producing `name`, else None."""
    cat = ix.source(name, "Concat")
    if cat is None or attribute(cat, "axis") not in (-1, 3) or len(cat.input) != 2:
        return None
    neg, first = ix.source(cat.input[0], "Neg"), ix.producer.get(cat.input[1])
    second = neg and ix.producer.get(neg.input[0])
    if neg is None or _slice_range(ix, first, x) != (0, half):
        return None
    tail = _slice_range(ix, second, x)
    return [cat, neg, first, second] if tail and tail[0] == half and tail[1] >= 2 * half else None


def _match_rotary(ix: _Index, name: str, head_dim: int):
    """{x, cos, sin} of `name` = x * cos + rotate_half(x) * sin (HF Llama, non-interleaved), else None."""
    add = ix.source(name, "Add")
    muls = [ix.source(i, "Mul") for i in add.input] if add is not None else [None]
    if None in muls:
        return None
    for plain, rotated in (muls, muls[::-1]):
        for x, cos in ((plain.input[0], plain.input[1]), (plain.input[1], plain.input[0])):
            for half_out, sin in ((rotated.input[0], rotated.input[1]), (rotated.input[1], rotated.input[0])):
                if _rotate_half_of(ix, half_out, x, head_dim // 2):
                    return {"x": x, "cos": cos, "sin": sin}
    return None


def _tables(model, ix: _Index, cos: str, sin: str, positions: int, head_dim: int):
    """cos/sin caches [positions, head_dim/2] from the graph's own sub-graph of position_ids, or a reason."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    nodes, inits, stack, seen = [], [], [cos, sin], set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in ix.inits:
            inits.append(ix.inits[name])
        elif name in ix.producer:
            nodes.append(ix.producer[name])
            stack.extend(ix.producer[name].input)
        elif name != "position_ids":
            return f"the rotary tables depend on graph input {name}, not only position_ids"
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    pid = helper.make_tensor_value_info("position_ids", 7, [1, positions])
    outs = [helper.make_tensor_value_info(n, 1, None) for n in (cos, sin)]
    sub = helper.make_model(helper.make_graph(nodes, "rotary_tables", [pid], outs, inits),
                            opset_imports=list(model.opset_import))
    c, s = ReferenceEvaluator(sub).run(None, {"position_ids": np.arange(positions, dtype=np.int64)[None]})
    c, s = (np.asarray(t, dtype=np.float32).reshape(-1, head_dim) for t in (c, s))
    half = head_dim // 2
    if len(c) != positions or not (np.array_equal(c[:, :half], c[:, half:]) and np.array_equal(s[:, :half], s[:, half:])):
        return "the rotary tables are not in rotate_half layout (both halves equal)"
    return c[:, :half].copy(), s[:, :half].copy()


def _gqa_operand(ix: _Index, gqa, slot: int):
    """(Reshape, Transpose) feeding GroupQueryAttention input `slot` (onnx_gqa's flat(): BNSD -> BSND -> [B,S,N*D])."""
    reshape = ix.source(gqa.input[slot], "Reshape")
    t = reshape and ix.source(reshape.input[0], "Transpose")
    return (reshape, t) if t is not None and attribute(t, "perm") == [0, 2, 1, 3] else None


def _head_dim(graph) -> int:
    past = next(v for v in graph.input if v.name == "past_key_0")
    return int(past.type.tensor_type.shape.dim[3].dim_value)


def _plan_rotary(ix: _Index, gqas: list, head_dim: int):
    """[(gqa, [((reshape, transpose), match) for q, k])], or the reason the rotary stays in the graph."""
    if head_dim % ROTARY_HEAD_MULTIPLE:
        return (f"head_dim {head_dim} is not a multiple of {ROTARY_HEAD_MULTIPLE} (onnxruntime's "
                "GroupQueryAttention rotary refuses it)")
    plans = []
    for gqa in gqas:
        pair = []
        for slot, what in ((0, "query"), (1, "key")):
            operand = _gqa_operand(ix, gqa, slot)
            match = operand and _match_rotary(ix, operand[1].input[0], head_dim)
            if not match:
                return f"{gqa.name}: the {what} is not HF rotate_half rotary feeding the attention"
            pair.append((operand, match))
        if pair[0][1]["cos"] != pair[1][1]["cos"] or pair[0][1]["sin"] != pair[1][1]["sin"]:
            return f"{gqa.name}: query and key read different rotary tables"
        plans.append((gqa, pair))
    return plans


def _rewire(ix: _Index, gqa, pair, tables: tuple[str, str]) -> None:
    """Feed the un-rotated q/k to `gqa` and let it rotate them (position_ids as the positions)."""
    from onnx import helper

    for (reshape, transpose), match in pair:
        source = ix.source(match["x"], "Transpose")
        if source is not None and attribute(source, "perm") == [0, 2, 1, 3]:
            reshape.input[0] = source.input[0]  # [B,S,N,D] before the BNSD transpose: no transposes
        else:
            transpose.input[0] = match["x"]
    inputs = list(gqa.input) + [""] * (7 - len(gqa.input))
    del gqa.input[:]
    gqa.input.extend(inputs[:7] + [*tables, "position_ids"])
    gqa.attribute.extend([helper.make_attribute("do_rotary", 1), helper.make_attribute("rotary_interleaved", 0)])


def fuse_rotary(model, max_positions: int) -> dict:
    """Move q/k rotary into each GroupQueryAttention of `model` (in place); {count, kept: reason|None}."""
    from onnx import numpy_helper

    graph = model.graph
    ix = _Index(graph)
    gqas = [n for n in graph.node if n.op_type == "GroupQueryAttention" and n.domain == MS
            and not attribute(n, "do_rotary", 0)]
    if not gqas:
        return {"count": 0, "kept": "no GroupQueryAttention without rotary in the graph"}
    head_dim = _head_dim(graph)
    plans = _plan_rotary(ix, gqas, head_dim)
    if isinstance(plans, str):
        return {"count": 0, "kept": plans}
    names: dict[tuple[str, str], tuple[str, str]] = {}
    for _, pair in plans:
        key = (pair[0][1]["cos"], pair[0][1]["sin"])
        if key not in names:
            tables = _tables(model, ix, *key, max_positions, head_dim)
            if isinstance(tables, str):
                return {"count": 0, "kept": tables}
            names[key] = (f"rotary_cos_cache_{len(names)}", f"rotary_sin_cache_{len(names)}")
            graph.initializer.extend(numpy_helper.from_array(t, n) for t, n in zip(tables, names[key]))
    for gqa, pair in plans:
        _rewire(ix, gqa, pair, names[(pair[0][1]["cos"], pair[0][1]["sin"])])
    prune(graph)
    return {"count": len(plans), "kept": None}


def _projection_of(ix: _Index, name: str, head_dim: int) -> str | None:
    """The [B,S,N*D] projection `name` = Reshape(Reshape(projection, [b, s, -1, D]), [0, 0, -1]) undoes, or None."""
    flat = ix.source(name, "Reshape")
    if flat is None or list(np.ravel(ix.const(flat.input[1]) if len(flat.input) > 1 else [])) != [0, 0, -1]:
        return None
    split = ix.source(flat.input[0], "Reshape")
    dims = split and ix.source(split.input[1], "Concat")
    matmul = split and ix.source(split.input[0], "MatMul")
    if dims is None or matmul is None or len(dims.input) != 4:
        return None
    tail = [ix.const(i) for i in dims.input[2:]]
    weight = ix.const(matmul.input[1])
    if any(t is None or t.size != 1 for t in tail) or weight is None or weight.ndim != 2:
        return None
    return matmul.output[0] if [int(t.ravel()[0]) for t in tail] == [-1, head_dim] else None


def drop_reshape_pairs(model) -> int:
    """GroupQueryAttention q/k/v read as Reshape(Reshape(x @ W)) back to x @ W's own shape: read x @ W."""
    ix = _Index(model.graph)
    head_dim, count = _head_dim(model.graph), 0
    for gqa in (n for n in model.graph.node if n.op_type == "GroupQueryAttention"):
        for slot in range(3):
            projection = _projection_of(ix, gqa.input[slot], head_dim)
            if projection is not None:
                gqa.input[slot] = projection
                count += 1
    prune(model.graph)
    return count


def fuse(model, max_positions: int) -> dict:
    """The passes on `model` (in place); what was fused, for the export stage's record."""
    norms = fuse_rmsnorms(model)
    rotary = fuse_rotary(model, max_positions)
    dropped = drop_reshape_pairs(model)
    return {**norms, "rotary_in_attention": rotary["count"], "rotary_kept_because": rotary["kept"],
            "reshape_pairs_dropped": dropped, **pack_projections(model)}
