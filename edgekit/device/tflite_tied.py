"""The token-embedding table read from the LM head's int8 weights inside a .tflite (tied weights stored once).

A model that ties its token embedding and its LM head (SmolLM2, stories260k) needs one [vocab, hidden]
table in two places: the LM head inside the graph, the embedding rows on the host. AI Edge Quantizer
stores the LM head as symmetric int8 with one scale per output channel (quantized dimension 0, zero
point 0): one scale per vocabulary row, exactly the layout of per-row int8 host rows. An int8 bundle
therefore keeps the table once, in the model file, and the signature names the tensor
(`embed_from_model`); the host reads rows from a read-only memory map of the file (a zero-copy numpy
view at the weight buffer's offset, found through the flatbuffer) and takes the tensor's per-channel
scales as `embed_scale`. Older bundles, with `embed` in the host npz, load as before.
Units: none (int8 codes; float32 scales, one per row; sizes in bytes).
May import: stdlib, numpy, edgekit.core, edgekit.device.tflite_inspect (ai-edge-litert's schema module).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import BundleError


@dataclass(frozen=True)
class RowTensor:
    """A constant int8 [rows, cols] weight tensor of the model: where it is and how it is quantized."""

    subgraph: int
    index: int
    name: str
    buffer: int
    problem: str | None  # why its quantization is not per-row symmetric int8 (None: it is)


def _scheme_problem(tensor, rows: int) -> str | None:
    """None when `tensor` is symmetric int8 with one scale per row (quantized dimension 0, zero point 0)."""
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return "the LM head has no quantization parameters"
    if q.ScaleLength() != rows:
        return f"the LM head has {q.ScaleLength()} scales, not one per vocabulary row ({rows})"
    if q.QuantizedDimension() != 0:
        return f"the LM head is quantized along dimension {q.QuantizedDimension()}, not the vocabulary axis (0)"
    if q.ZeroPointLength() and np.any(q.ZeroPointAsNumpy() != 0):
        return "the LM head is asymmetric (non-zero zero points)"
    return None


def row_tensors(model, shape: tuple[int, int]) -> list[RowTensor]:
    """Every int8 tensor of `shape` that holds constant data, over all subgraphs (the signatures of one
    model share weights, so several entries may name the same buffer)."""
    from edgekit.device.tflite_inspect import schema_module

    int8 = schema_module().TensorType.INT8
    found = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            if t.Type() != int8 or tuple(int(d) for d in t.ShapeAsNumpy()) != tuple(shape):
                continue
            b = model.Buffers(t.Buffer())
            if b.DataLength() == 0 and b.Offset() <= 1:  # an activation, not a weight
                continue
            found.append(RowTensor(s, i, (t.Name() or b"").decode(), t.Buffer(), _scheme_problem(t, shape[0])))
    return found


def buffer_rows(data, model, buffer: int, shape: tuple[int, int]) -> np.ndarray:
    """A zero-copy int8 [rows, cols] view of weight buffer `buffer` inside `data` (the file's bytes or a
    memory map of it): inline in the flatbuffer, or at the file offset a large model's buffer records."""
    b = model.Buffers(buffer)
    count = shape[0] * shape[1]
    if b.DataLength():
        if b.DataLength() != count:
            raise BundleError(f"weight buffer {buffer} holds {b.DataLength()} bytes, expected {count}")
        view = b.DataAsNumpy()  # np.frombuffer over `data`: no copy
        if not np.may_share_memory(view, np.frombuffer(data, np.uint8)):
            raise BundleError("the flatbuffer reader copied the weight buffer (expected a view)")
        return view.view(np.int8).reshape(shape)
    if b.Size() != count:
        raise BundleError(f"weight buffer {buffer} holds {b.Size()} bytes, expected {count}")
    return np.frombuffer(data, np.int8, count, int(b.Offset())).reshape(shape)


def shared_embedding(model_path, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(int8 rows [vocab, hidden] viewing the model file, float32 scales [vocab]) for the signature's
    `embed_from_model` record ({"tensor": name, "shape": [vocab, hidden]}); the file stays mapped for as
    long as the rows are referenced. Raises BundleError when the tensor is missing or not per-row int8."""
    from edgekit.device.tflite_inspect import schema_module

    try:
        schema_module()
    except ImportError as e:  # tflite_runtime ships no schema module
        raise BundleError("this bundle keeps its embedding rows in the model file (tied weights stored once); "
                          f"reading them needs ai-edge-litert's flatbuffer schema ({e})") from None
    shape = tuple(int(d) for d in record["shape"])
    with open(model_path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    model = schema_module().Model.GetRootAs(data, 0)
    match = [t for t in row_tensors(model, shape) if t.name == record["tensor"]]
    if not match:
        raise BundleError(f"{Path(model_path).name} has no int8 {list(shape)} tensor '{record['tensor']}' "
                          f"to read the embedding rows from (the manifest's signature.embed_from_model)")
    if match[0].problem:
        raise BundleError(f"{Path(model_path).name}: embedding rows cannot come from '{record['tensor']}': "
                          f"{match[0].problem}")
    tensor = model.Subgraphs(match[0].subgraph).Tensors(match[0].index)
    scales = tensor.Quantization().ScaleAsNumpy().astype(np.float32)
    return buffer_rows(data, model, match[0].buffer, shape), scales
