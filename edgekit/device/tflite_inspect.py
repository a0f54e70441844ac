"""Read a .tflite flatbuffer (schema module shipped with ai-edge-litert): ops, tensor dtypes, sizes.

Lazy flatbuffer access (no weight copies), so it is cheap on 100 MB models.
May import: stdlib, ai_edge_litert.schema_py_generated (or tflite_runtime's fallback: none, so
callers get a clear ImportError).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def schema_module():
    """The flatbuffer schema module shipped with ai-edge-litert (imported on first use)."""
    from ai_edge_litert import schema_py_generated as schema

    return schema


def enum_names(enum_cls) -> dict[int, str]:
    """{value: name} of a schema enum class such as schema.TensorType or schema.BuiltinOperator."""
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def load_model(path: Path):
    schema = schema_module()
    buf = Path(path).read_bytes()
    return schema.Model.GetRootAs(buf, 0), buf


def op_name(model, opcode_index: int) -> str:
    schema = schema_module()
    code = model.OperatorCodes(opcode_index)
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        return "CUSTOM:" + (code.CustomCode() or b"").decode()
    return enum_names(schema.BuiltinOperator).get(builtin, str(builtin))


def summary(path: Path) -> dict:
    """{'ops': {name: count}, 'tensor_dtypes': {dtype: count}, 'subgraphs': [...]} over all subgraphs."""
    schema = schema_module()
    model, _ = load_model(path)
    dtypes = enum_names(schema.TensorType)
    ops: Counter = Counter()
    types: Counter = Counter()
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.OperatorsLength()):
            ops[op_name(model, sg.Operators(i).OpcodeIndex())] += 1
        for t in range(sg.TensorsLength()):
            types[dtypes.get(sg.Tensors(t).Type(), "?")] += 1
        subgraphs.append({"name": (sg.Name() or b"").decode(), "operators": sg.OperatorsLength(),
                          "tensors": sg.TensorsLength()})
    return {"ops": dict(sorted(ops.items())), "tensor_dtypes": dict(sorted(types.items())), "subgraphs": subgraphs}


def op_counts(path: Path) -> dict[str, int]:
    return summary(path)["ops"]


def edgetpu_files(folder: Path, manifest: dict) -> tuple[int, int] | None:
    """(files holding an edgetpu-custom-op, files) among those the Edge TPU delegate would open for a
    bundle (each segment, or the model; its `_edgetpu.tflite` build when the bundle has one), or None
    when this is not an Edge TPU bundle or the flatbuffers cannot be read here."""
    model = manifest.get("model", {})
    if model.get("delegate") != "edgetpu" or model.get("format") != "tflite":
        return None
    names = [s["file"] for s in manifest.get("signature", {}).get("segments", [])] or [model["file"]]
    compiled = set(model.get("accelerated_files") or [])
    opened = [n.replace(".tflite", "_edgetpu.tflite") if n.replace(".tflite", "_edgetpu.tflite") in compiled else n
              for n in names]
    try:
        return sum("CUSTOM:edgetpu-custom-op" in op_counts(Path(folder) / n) for n in opened), len(opened)
    except (ImportError, OSError):
        return None
