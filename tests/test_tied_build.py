"""Full tier: real stories260k bundles (tied embedding and LM head) keep the table once at int8.
TFLite: no `embed` in the host npz, rows read from the model equal the per-row int8 rows the npz used
to hold, and greedy decoding gives the same tokens and logits either way. ONNX: the embedding comes
from the LM head's MatMulNBits weights through GatherBlockQuantized, no Gather table left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.full


def old_host_tables(student: Path, bundle: Path, tmp: Path) -> dict:
    """The host tables an int8 bundle held before tables were shared: the student's fp32 embedding
    quantized per row by the build's own code, with the bundle's rotary tables."""
    from safetensors.numpy import load_file

    from edgekit.workshop.tflite_quantize import quantize_host_tables

    table = load_file(str(student / "model.safetensors"))["model.embed_tokens.weight"]
    with np.load(bundle / "host_tables.npz") as z:
        np.savez(tmp / "fp32.npz", embed=table, **{k: z[k] for k in z.files})
    quantize_host_tables(tmp / "fp32.npz", tmp / "int8.npz", "int8-dynamic")
    with np.load(tmp / "int8.npz") as z:
        return {k: z[k] for k in z.files}


def greedy(lm, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    cache, ids, rows = lm.new_cache(), list(prompt), []
    logits = lm.forward(ids, cache, last_only=True)
    for _ in range(n):
        rows.append(logits[-1])
        ids.append(int(np.argmax(logits[-1])))
        logits = lm.forward(ids[-1:], cache)
    return ids[len(prompt):], np.stack(rows)


def check_shared_bundle(bundle: Path, student: Path, tmp: Path) -> dict:
    """Asserts the int8 bundle reads its embedding from the model and decodes exactly as with the old
    npz rows; returns the figures (also run by hand on SmolLM2 builds, see docs/benchmarks.md)."""
    from edgekit.device.tflite_model import TfliteCausalLM, load_host_tables, make_interpreter, open_tflite

    m = json.loads((bundle / "manifest.json").read_text())
    sig, record = m["signature"], m["provenance"]["stages"][2]["parameters"]["embedding_shared"]
    with np.load(bundle / "host_tables.npz") as z:
        assert "embed" not in z.files and "embed_scale" not in z.files
    assert record["shared"] and sig["embed_from_model"]["tensor"] == record["tensor"]
    vocab, hidden = sig["embed_from_model"]["shape"]
    assert sig["embed_from_model"]["bytes_saved"] >= vocab * hidden  # at least the int8 table itself
    old = old_host_tables(student, bundle, tmp)
    shared = load_host_tables(bundle / "model.tflite", sig)
    assert np.array_equal(shared["embed"], old["embed"]) and np.array_equal(shared["embed_scale"], old["embed_scale"])
    new_lm = open_tflite(bundle / "model.tflite", m)
    old_lm = TfliteCausalLM(make_interpreter(bundle / "model.tflite")[0], sig, old)
    prompt = [1, 403, 407, 261, 378]
    new_ids, new_logits = greedy(new_lm, prompt, 24)
    old_ids, old_logits = greedy(old_lm, prompt, 24)
    assert new_ids == old_ids and np.array_equal(new_logits, old_logits)
    return {"bytes_saved": record["bytes_saved"], "tokens": new_ids}


@pytest.mark.parametrize("variant", ["arm-cpu", "arm-cpu-weight-only", "coral-single"])
def test_int8_bundle_keeps_the_tied_table_once_and_decodes_the_same(tflite_builds, stories_build, tmp_path, variant):
    check_shared_bundle(tflite_builds[variant], stories_build["student"], tmp_path)


@pytest.mark.parametrize("variant", ["arm-cpu-fp32", "mobile-gpu"])
def test_float_bundles_keep_their_npz_table(tflite_builds, variant):
    m = json.loads((tflite_builds[variant] / "manifest.json").read_text())
    assert "embed_from_model" not in m["signature"]
    with np.load(tflite_builds[variant] / "host_tables.npz") as z:
        assert z["embed"].dtype == (np.float16 if variant == "mobile-gpu" else np.float32)


def test_onnx_int8_bundle_reads_embedding_rows_from_the_lm_head(stories_bundle):
    import onnx

    m = json.loads((stories_bundle / "manifest.json").read_text())
    record = m["provenance"]["stages"][2]["parameters"]["embedding_shared"]
    assert record["shared"] and record["bytes_saved"] >= 512 * 64  # at least the uint8 table
    graph = onnx.load(str(stories_bundle / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "Gather" not in ops and ops.count("GatherBlockQuantized") == 1
    gbq = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == gbq.input[0])
    assert head.input[1] == record["tensor"]
