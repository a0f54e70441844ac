"""Fast tier: tied embedding / LM head stored once in int8 TFLite bundles (edgekit.device.tflite_tied,
edgekit.workshop.tflite_quantize.share_tied_embedding), on small flatbuffers written here with the schema
module shipped in ai-edge-litert (weights only, no ops: nothing here runs an interpreter)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from edgekit.core.errors import BundleError
from edgekit.device.tflite_model import load_host_tables
from edgekit.device.tflite_tied import shared_embedding

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
HEAD = "model/lm_head;"
VOCAB, HIDDEN = 12, 8
SIG = {"host_file": "host_tables.npz"}


def _table(seed=0):
    return np.random.default_rng(seed).normal(0, 0.05, (VOCAB, HIDDEN)).astype(np.float32)


def _per_row_int8(table):
    scale = np.maximum(np.abs(table).max(axis=1), 1e-12) / 127.0
    return np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8), scale.astype(np.float32)


def _tensor(name, buffer, dtype, scales=None, zero_points=None, axis=0):
    t = schema.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), [VOCAB, HIDDEN], dtype, buffer
    if scales is not None:
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint, q.quantizedDimension = list(map(float, scales)), list(zero_points), axis
        t.quantization = q
    return t


def write_model(path, codes, scales, zero_points=None, axis=0, name=HEAD, subgraphs=2):
    """A .tflite holding `codes` as an int8 [VOCAB, HIDDEN] weight named `name` in every subgraph (one
    shared buffer, as litert_torch writes two signatures), plus an activation of the same shape."""
    import flatbuffers

    empty, weights = schema.BufferT(), schema.BufferT()
    weights.data = list(np.asarray(codes, np.int8).view(np.uint8).ravel())
    zps = [0] * VOCAB if zero_points is None else zero_points
    model = schema.ModelT()
    model.version, model.buffers, model.subgraphs = 3, [empty, weights], []
    for s in range(subgraphs):
        sg = schema.SubGraphT()
        sg.tensors = [_tensor(f"activation{s}", 0, schema.TensorType.INT8),
                      _tensor(name if s == 0 else f"{name}{s}", 1, schema.TensorType.INT8, scales, zps, axis)]
        sg.inputs, sg.outputs, sg.operators = [], [], []
        model.subgraphs.append(sg)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


def _host(folder, **tables):
    tables.setdefault("cos", np.ones((4, 2), np.float32))
    tables.setdefault("sin", np.zeros((4, 2), np.float32))
    np.savez(folder / "host_tables.npz", **tables)
    return folder / "host_tables.npz"


def test_rows_are_a_read_only_view_of_the_model_file_with_the_head_scales(tmp_path):
    codes, scales = _per_row_int8(_table())
    model = write_model(tmp_path / "model.tflite", codes, scales)
    rows, got_scales = shared_embedding(model, {"tensor": HEAD, "shape": [VOCAB, HIDDEN]})
    assert rows.dtype == np.int8 and np.array_equal(rows, codes) and np.array_equal(got_scales, scales)
    assert not rows.flags.writeable and not rows.flags.owndata  # a view of the mapped file, not a copy
    root = rows
    while isinstance(root, np.ndarray):
        root = root.base
    root = root.obj if isinstance(root, memoryview) else root
    assert isinstance(root, mmap.mmap)  # the rows live in a memory map of the file ...
    offset = model.read_bytes().find(codes.tobytes())
    assert offset > 0 and rows.ctypes.data == np.frombuffer(root, np.uint8).ctypes.data + offset  # ... at the buffer


def test_host_tables_take_the_rows_from_the_model_only_when_the_npz_has_none(tmp_path):
    table = _table()
    codes, scales = _per_row_int8(table)
    model = write_model(tmp_path / "model.tflite", codes, scales)
    sig = dict(SIG, embed_from_model={"tensor": HEAD, "shape": [VOCAB, HIDDEN]})
    _host(tmp_path)
    shared = load_host_tables(model, sig)
    assert np.array_equal(shared["embed"], codes) and np.array_equal(shared["embed_scale"], scales)
    _host(tmp_path, embed=table)  # an older bundle: its own npz rows win, the model is not read
    assert np.array_equal(load_host_tables(model, sig)["embed"], table)
    assert "embed_scale" not in load_host_tables(model, SIG)


@pytest.mark.parametrize("change,message", [
    ({"axis": 1}, "along dimension 1, not the vocabulary axis"),
    ({"zero_points": [0] * (VOCAB - 1) + [3]}, "asymmetric"),
    ({"name": "other"}, "has no int8 [12, 8] tensor 'model/lm_head;'"),
])
def test_a_head_that_cannot_serve_as_rows_is_a_clear_bundle_error(tmp_path, change, message):
    codes, scales = _per_row_int8(_table())
    model = write_model(tmp_path / "model.tflite", codes, scales, **change)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        shared_embedding(model, {"tensor": HEAD, "shape": [VOCAB, HIDDEN]})


def test_build_drops_the_npz_table_when_the_head_is_the_same_table(tmp_path):
    from edgekit.workshop.tflite_quantize import share_tied_embedding

    table = _table()
    codes, scales = _per_row_int8(table)
    (tmp_path / "fp32").mkdir()
    fp32 = _host(tmp_path / "fp32", embed=table)
    host = _host(tmp_path, embed=codes, embed_scale=scales)
    size = host.stat().st_size
    model = write_model(tmp_path / "model.tflite", codes, scales)
    record = share_tied_embedding(model, host, fp32)
    assert record["shared"] and record["tensor"] == HEAD and record["shape"] == [VOCAB, HIDDEN]
    assert record["max_abs_diff_vs_host_rows"] == 0.0 and record["max_quantization_steps_from_fp32"] <= 0.5
    assert record["bytes_saved"] == size - host.stat().st_size >= codes.nbytes + scales.nbytes
    with np.load(host) as z:
        assert set(z.files) == {"cos", "sin"}


@pytest.mark.parametrize("case,reason", [
    ("untied", "does not tie them"), ("per-tensor", "1 scales, not one per vocabulary row"),
    ("no-head", "no int8 [12, 8] weight tensor"),
])
def test_build_keeps_the_npz_table_and_says_why_when_it_cannot_share(tmp_path, case, reason):
    from edgekit.workshop.tflite_quantize import share_tied_embedding

    table = _table()
    codes, scales = _per_row_int8(table)
    (tmp_path / "fp32").mkdir()
    fp32 = _host(tmp_path / "fp32", embed=_table(seed=1) if case == "untied" else table)
    host = _host(tmp_path, embed=codes, embed_scale=scales)
    before = host.read_bytes()
    if case == "no-head":
        model = write_model(tmp_path / "model.tflite", codes, scales, subgraphs=0)
    elif case == "per-tensor":
        model = write_model(tmp_path / "model.tflite", codes, scales[:1], zero_points=[0])
    else:
        model = write_model(tmp_path / "model.tflite", codes, scales)
    record = share_tied_embedding(model, host, fp32)
    assert record["shared"] is False and reason in record["reason"]
    assert host.read_bytes() == before
