"""Predict which ops of a .tflite model the Edge TPU compiler maps, and say why, from the rules in
edgekit/device/coral_rules.py.

The flatbuffer is read with the schema module shipped in ai-edge-litert (lazy access, no weight
copies). For each subgraph (a signature), every op in execution order gets a status in the
compiler's own words plus a plain-language reason; then totals: ops mapped, share of
multiply-accumulates (MACs) on the TPU, and parameter bytes of mapped ops vs the ~8 MB on-chip
cache. Predictions only: `edgetpu_compiler` has the last word (see edgekit/workshop/coral_compile.py).
May import: stdlib, numpy, edgekit.device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.device import coral_rules as R
from edgekit.device.tflite_inspect import enum_names, load_model, op_name, schema_module


@dataclass
class OpPrediction:
    index: int
    op: str
    status: str
    reason: str = ""
    macs: int = 0
    parameter_bytes: int = 0

    @property
    def mapped(self) -> bool:
        return self.status == R.MAPPED


@dataclass
class SubgraphPrediction:
    name: str
    ops: list[OpPrediction] = field(default_factory=list)

    def totals(self) -> dict:
        macs = sum(o.macs for o in self.ops)
        tpu_macs = sum(o.macs for o in self.ops if o.mapped)
        params = sum(o.parameter_bytes for o in self.ops if o.mapped)
        first = next((o for o in self.ops if not o.mapped), None)
        return {
            "ops": len(self.ops), "ops_mapped": sum(o.mapped for o in self.ops),
            "macs": macs, "macs_on_tpu": tpu_macs, "mac_share_on_tpu": round(tpu_macs / macs, 4) if macs else 0.0,
            "parameter_bytes_on_tpu": params, "on_chip_cache_bytes": R.ON_CHIP_PARAMETER_BYTES,
            "parameters_fit_on_chip": params <= R.ON_CHIP_PARAMETER_BYTES,
            "first_unmapped": None if first is None else {"index": first.index, "op": first.op, "status": first.status},
        }

    def to_dict(self) -> dict:
        return {"name": self.name, "totals": self.totals(), "ops": [asdict(o) for o in self.ops]}


class _Graph:
    """Tensor facts of one subgraph: dtype name, shape, dynamic dims, constant data."""

    def __init__(self, model, sg):
        schema = schema_module()
        self.model, self.sg = model, sg
        self.dtypes = enum_names(schema.TensorType)

    def tensor(self, i: int):
        return self.sg.Tensors(i)

    def dtype(self, i: int) -> str:
        return self.dtypes.get(self.tensor(i).Type(), "?")

    def shape(self, i: int) -> list[int]:
        t = self.tensor(i)
        return [int(x) for x in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def dynamic(self, i: int) -> bool:
        t = self.tensor(i)
        return t.ShapeSignatureLength() > 0 and bool((t.ShapeSignatureAsNumpy() < 0).any())

    def name(self, i: int) -> str:
        return (self.tensor(i).Name() or b"").decode(errors="replace")

    def const_bytes(self, i: int) -> int:
        b = self.tensor(i).Buffer()
        if b == 0:
            return 0
        buf = self.model.Buffers(b)
        return int(buf.DataLength()) or int(buf.Size() or 0)

    def const_values(self, i: int) -> np.ndarray | None:
        b = self.tensor(i).Buffer()
        if b == 0 or self.model.Buffers(b).DataLength() == 0:
            return None
        raw = self.model.Buffers(b).DataAsNumpy()
        dt = {"INT32": np.int32, "INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8}.get(self.dtype(i))
        return None if dt is None else np.frombuffer(raw.tobytes(), dt)


def _options(op, cls_name: str):
    table = op.BuiltinOptions()
    if table is None:
        return None
    opts = getattr(schema_module(), cls_name)()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _inputs(op) -> list[int]:
    return [int(i) for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else []


def _outputs(op) -> list[int]:
    return [int(i) for i in op.OutputsAsNumpy() if i >= 0] if op.OutputsLength() else []


def _non_unit(shape: list[int]) -> int:
    return sum(1 for d in shape if d != 1)


def _fc_one_dimensional_output(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    shape = g.shape(outs[0])
    if _non_unit(shape) > 1:
        return f"output shape {shape}: FullyConnected maps only with a one-dimensional output (one token per call)"
    return None


def _softmax_1d(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    shape = g.shape(ins[0])
    if _non_unit(shape) > 1:
        return f"input shape {shape}: Softmax maps only 1-D inputs"
    if int(np.prod(shape or [1])) > R.SOFTMAX_MAX_ELEMENTS:
        return f"input has {int(np.prod(shape))} elements; Softmax maps at most {R.SOFTMAX_MAX_ELEMENTS:,}"
    return None


def _unit_strides(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    strides = g.const_values(ins[3]) if len(ins) > 3 else None
    opts = _options(op, "StridedSliceOptions")
    if strides is None or (strides != 1).any():
        return f"strides {None if strides is None else strides.tolist()}: StridedSlice maps only with all strides 1"
    if opts is not None and (opts.EllipsisMask() or opts.NewAxisMask()):
        return "StridedSlice with an ellipsis or new-axis mask"
    return None


def _axes_limit(check: str, g: _Graph, ins: list[int]) -> str | None:
    """reduce_not_batch / z_reduction_multiple_of_4 / pad_not_batch: the axes an op acts on."""
    shape = g.shape(ins[0])
    rank = len(shape)
    vals = g.const_values(ins[1])
    if vals is None:
        return "axes are not a compile-time constant"
    if check == "pad_not_batch":
        pads = vals.reshape(rank, 2)
        axes = [a for a in range(rank) if pads[a].any()]
    else:
        axes = sorted({int(a) % rank for a in vals})
    if check == "z_reduction_multiple_of_4":
        if rank - 1 in axes and shape[-1] % 4:
            return f"reduces the innermost (z) dimension of size {shape[-1]}, not a multiple of 4"
    elif rank == 4 and 0 in axes:  # NHWC: axis 0 is the batch
        return f"acts on the batch dimension (axes {axes} of shape {shape})"
    return None


def _squeeze_leading_ones(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    shape = g.shape(ins[0])
    first = next((k for k, d in enumerate(shape) if d != 1), len(shape))
    if any(d == 1 for d in shape[first:]):  # a size-1 dim after real data needs a relayout
        return f"input shape {shape}: Squeeze maps only leading 1s (no relayout)"
    return None


def _same_dilation(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    for cls in ("Conv2DOptions", "DepthwiseConv2DOptions"):
        opts = _options(op, cls)
        if opts is not None and opts.DilationHFactor() != opts.DilationWFactor():
            return "different dilation in x and y"
        break
    return None


def _pack_not_batch(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    opts = _options(op, "PackOptions")
    if opts is not None and opts.Axis() == 0:
        return "packs along the batch dimension (axis 0)"
    return None


def _no_fused_activation(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    for cls in ("Pool2DOptions", "ConcatenationOptions"):
        try:
            opts = _options(op, cls)
            if opts is not None and opts.FusedActivationFunction() != 0:
                return "has a fused activation function"
        except Exception:  # not this op's options table
            continue
    return None


def _constant_inputs_zero_pad(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    consts = [i for i in ins if g.tensor(i).Buffer() and g.const_values(i) is not None]
    if consts and (len(ins) != 2 or any(g.const_values(i).any() for i in consts)):
        return "a constant input that is not an all-zero padding of exactly two inputs"
    return None


def _io_3d(g: _Graph, op, ins: list[int], outs: list[int]) -> str | None:
    if any(len(g.shape(t)) > 4 or _non_unit(g.shape(t)) > 3 for t in ins[:1] + outs):
        return "input/output must be 3-dimensional"
    return None


# limit name (coral_rules.OPS) -> check(graph, op, input tensor ids, output tensor ids): reason or None
_LIMIT_CHECKS = {
    "fc_one_dimensional_output": _fc_one_dimensional_output,
    "softmax_1d": _softmax_1d,
    "unit_strides": _unit_strides,
    **{name: (lambda g, op, ins, outs, name=name: _axes_limit(name, g, ins))
       for name in ("reduce_not_batch", "z_reduction_multiple_of_4", "pad_not_batch")},
    "squeeze_leading_ones": _squeeze_leading_ones,
    "same_dilation": _same_dilation,
    "pack_not_batch": _pack_not_batch,
    "no_fused_activation": _no_fused_activation,
    "constant_inputs_zero_pad": _constant_inputs_zero_pad,
    "io_3d": _io_3d,
}


def _limit_failure(check: str, g: _Graph, op) -> str | None:
    """Plain-language reason the op breaks limit `check`, or None when it passes (or is unknown)."""
    ins, outs = _inputs(op), _outputs(op)
    found = _LIMIT_CHECKS.get(check)
    return found(g, op, ins, outs) if found is not None else None


def _macs(name: str, g: _Graph, op) -> int:
    ins, outs = _inputs(op), _outputs(op)
    out = int(np.prod(g.shape(outs[0]) or [1])) if outs else 0
    if name == "FULLY_CONNECTED":
        return out * g.shape(ins[1])[-1]
    if name == "CONV_2D":
        w = g.shape(ins[1])
        return out * w[1] * w[2] * w[3]
    if name == "DEPTHWISE_CONV_2D":
        w = g.shape(ins[1])
        return out * w[1] * w[2]
    if name == "BATCH_MATMUL":
        lhs = g.shape(ins[0])
        opts = _options(op, "BatchMatMulOptions")
        k = lhs[-2] if opts is not None and opts.AdjX() else lhs[-1]
        return out * k
    if name == "TRANSPOSE_CONV":
        w = g.shape(ins[1])
        return int(np.prod(g.shape(ins[2]))) * w[0] * w[1] * w[2]
    return 0


def _own_status(name: str, g: _Graph, op) -> tuple[str, str]:
    if name not in R.OPS:
        return R.NOT_SUPPORTED, R.WHY[R.NOT_SUPPORTED].format(op=name)
    ins, outs = _inputs(op), _outputs(op)
    for t in ins + outs:
        const = g.tensor(t).Buffer() != 0 and g.const_bytes(t) > 0
        ok = R.CONSTANT_DTYPES if const else R.ACTIVATION_DTYPES
        if g.dtype(t) not in ok:
            return R.BAD_DTYPE, R.WHY[R.BAD_DTYPE].format(tensor=g.name(t), dtype=g.dtype(t).lower())
    filters = set(ins[1:2]) if name in R.FILTER_OPS else set()
    for t in ins + outs:
        if g.dynamic(t):
            return R.DYNAMIC, R.WHY[R.DYNAMIC].format(tensor=g.name(t))
        shape = g.shape(t)
        if t not in filters and len(shape) > 3 and any(d != 1 for d in shape[:-3]):
            return R.BAD_RANK, R.WHY[R.BAD_RANK].format(tensor=g.name(t), shape=shape)
    for check in R.OPS[name][0]:
        why = _limit_failure(check, g, op)
        if why:
            return R.LIMITATION, why
    return R.MAPPED, ""


def predict(path: Path) -> list[SubgraphPrediction]:
    """Predictions for every subgraph of the .tflite at `path`."""
    model, _ = load_model(path)
    out = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        g = _Graph(model, sg)
        pred = SubgraphPrediction((sg.Name() or b"").decode() or f"subgraph {s}")
        first_cpu = None
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            name = op_name(model, op.OpcodeIndex())
            status, reason = _own_status(name, g, op)
            if status == R.MAPPED and first_cpu is not None:
                status, reason = R.AFTER_PARTITION, R.WHY[R.AFTER_PARTITION].format(first=first_cpu)
            elif status != R.MAPPED and first_cpu is None:
                first_cpu = f"#{i} {name}"
            params = sum(g.const_bytes(t) for t in _inputs(op) if g.tensor(t).Buffer() != 0)
            pred.ops.append(OpPrediction(i, name, status, reason, _macs(name, g, op), params))
        out.append(pred)
    return out


def report(preds: list[SubgraphPrediction]) -> str:
    """Human-readable table per subgraph, then its totals."""
    lines = []
    for p in preds:
        t = p.totals()
        lines.append(f"subgraph {p.name}: {t['ops_mapped']}/{t['ops']} ops predicted on the Edge TPU, "
                     f"{100 * t['mac_share_on_tpu']:.1f}% of {t['macs']:,} MACs")
        for o in p.ops:
            lines.append(f"  {o.index:4d}  {o.op:<22} {o.status}" + (f"\n        why: {o.reason}" if o.reason else ""))
        mib = t["parameter_bytes_on_tpu"] / 2**20
        fit = "fits in" if t["parameters_fit_on_chip"] else "exceeds"
        lines.append(f"  parameters on the TPU: {mib:.2f} MiB ({fit} the ~8 MiB on-chip cache"
                     + ("" if t["parameters_fit_on_chip"] else "; the rest streams from host memory every call") + ")")
        if t["first_unmapped"]:
            f = t["first_unmapped"]
            lines.append(f"  first op on the CPU: #{f['index']} {f['op']} ({f['status']})")
    return "\n".join(lines)
