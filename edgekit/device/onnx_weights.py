"""Bytes of weights an ONNX model reads per decoded token, from the file alone (no `onnx` package).

Walks the protobuf wire format of ModelProto -> graph (field 7) -> nodes (1) and initializers (5): each
initializer's stored bytes (raw_data, packed numeric fields, or the `length` of external data). An
initializer read only by `Gather` nodes is a lookup table (one row per token), so it is left out; one read
by any other op (MatMulNBits, GatherBlockQuantized sharing the LM head's weights, ...) counts once, however
many nodes read it. The same rule as bench/compare.py's roofline (which uses `onnx`).
Units: bytes. May import: stdlib, edgekit.core.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from edgekit.core.errors import BundleError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def fields(buf, start: int = 0, end: int | None = None):
    """(field number, wire type, value) of a protobuf message in buf[start:end]; a length-delimited
    value is the (start, end) of its bytes, so nothing is copied."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _I64:
            value, pos = None, pos + 8
        elif wire == _I32:
            value, pos = None, pos + 4
        elif wire == _LEN:
            n, pos = _varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        else:
            raise BundleError(f"not an ONNX model (protobuf wire type {wire} at byte {pos})")
        yield number, wire, value


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _tensor(buf, span) -> tuple[str, int]:
    """(name, stored bytes) of a TensorProto."""
    name, size, external = "", 0, 0
    for number, wire, value in fields(buf, *span):
        if number == 8 and wire == _LEN:
            name = _text(buf, value)
        elif number in (4, 5, 6, 7, 9, 10, 11) and wire == _LEN:  # raw_data and packed numeric data
            size += value[1] - value[0]
        elif number == 13 and wire == _LEN:  # external_data entry {key, value}
            kv = {n: _text(buf, v) for n, w, v in fields(buf, *value) if w == _LEN}
            if kv.get(1) == "length":
                external += int(kv.get(2, "0"))
    return name, size + external


def _node(buf, span) -> tuple[str, list[str]]:
    """(op_type, inputs) of a NodeProto."""
    op, inputs = "", []
    for number, wire, value in fields(buf, *span):
        if number == 1 and wire == _LEN:
            inputs.append(_text(buf, value))
        elif number == 4 and wire == _LEN:
            op = _text(buf, value)
    return op, inputs


def graph_weights(buf) -> tuple[dict[str, int], list[tuple[str, list[str]]]]:
    """({initializer name: bytes}, [(op_type, inputs)]) of the model's main graph."""
    graph = next((v for n, w, v in fields(buf) if n == 7 and w == _LEN), None)
    if graph is None:
        raise BundleError("not an ONNX model (no graph)")
    inits, nodes = {}, []
    for number, wire, value in fields(buf, *graph):
        if number == 5 and wire == _LEN:
            name, size = _tensor(buf, value)
            inits[name] = size
        elif number == 1 and wire == _LEN:
            nodes.append(_node(buf, value))
    return inits, nodes


def decode_weight_bytes(path: str | Path) -> int:
    """Bytes of initializers a decode step reads: all but tables read only by Gather (lookups)."""
    with open(path, "rb") as fh:
        try:  # the map closes when collected (views of it may live on in a traceback)
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            raise BundleError(f"{Path(path).name}: not an ONNX model (empty file)") from None
    try:
        inits, nodes = graph_weights(memoryview(data))
    except (IndexError, ValueError):
        raise BundleError(f"{Path(path).name}: not an ONNX model (truncated protobuf)") from None
    gathered = {n[1][0] for n in nodes if n[0] == "Gather" and n[1]}
    elsewhere = {i for op, ins in nodes if op != "Gather" for i in ins}
    lookup = gathered - elsewhere
    return sum(size for name, size in inits.items() if name not in lookup)
