"""Full tier: stories260k built for arm-cpu with int4-dynamic (block-32 4-bit weights, dynamic int8
activations): the 4-bit weights are in the model, the LM head stays int8 and still holds the tied
table once, the gate's figures are recorded, and the bundle decodes sane text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.full


def test_int4_dynamic_bundle(stories_build):
    from edgekit.device.tflite_model import open_tflite
    from edgekit.device.tokenizer import TextTokenizer

    work = stories_build["stages"].parent
    out = work / "arm-cpu-int4"
    # --no-gate: on this 3-layer, 64-wide student the 1.02x perplexity gate is not met (1.06x measured),
    # so the build must still package and record the gate; SmolLM2 figures are in docs/benchmarks.md.
    res = run_cli("build", "--target", "arm-cpu", "--precision", "int4-dynamic", "--recipe", "stories260k",
                  "--no-gate", "--out", str(out), "--work-dir", str(stories_build["stages"]), cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["precision"] == "int4-dynamic"
    quant = m["provenance"]["stages"][2]
    dtypes, params = quant["metrics"]["tensor_dtypes"], quant["parameters"]
    # per layer q, k, v, o, gate, up are 4-bit (input 64); down (input 172) and the LM head stay int8
    assert params["weight_blocks"] == {"block_size": 32, "int4_fully_connected": 2 * 3 * 6,
                                       "int8_fully_connected": {"not_blockable": 2 * 3, "lm_head": 2}}
    assert dtypes["INT4"] == 2 * 3 * 6 and dtypes["INT8"] == 2 * (3 + 1)
    assert "DEQUANTIZE" not in quant["metrics"]["ops"]  # dynamic: the FC kernels take the 4-bit weights
    assert params["embedding_shared"]["shared"] and m["signature"]["embed_from_model"]
    with np.load(out / "host_tables.npz") as z:
        assert "embed" not in z.files
    # 0.28x the fp32 export measured (int8-dynamic: 0.35x; the int8 head and down_proj weigh in)
    assert quant["metrics"]["bytes"] < 0.32 * quant["metrics"]["bytes_before"]
    v, gate = m["metrics"]["verify"], m["gate"]
    ratio = v["perplexity"]["ratio"]
    assert 1.0 - 0.02 < ratio < 1.15, ratio  # 4-bit costs quality, but not a collapse (per-channel int4 is)
    assert gate["passed"] == (ratio <= m["target"]["verify"]["max_perplexity_ratio"]
                              and v["greedy_agreement"] >= m["target"]["verify"]["min_greedy_agreement"]
                              and v["max_logit_diff"] <= m["target"]["verify"]["max_logit_diff"])
    assert v["greedy_agreement"] >= 0.5 and v["tokenizer_match"]
    lm = open_tflite(out / "model.tflite", m)
    tok = TextTokenizer.from_file(out / "tokenizer.json", [])
    ids, cache = tok.encode("Once upon a time"), lm.new_cache()
    logits = lm.forward(ids, cache, last_only=True)
    for _ in range(12):
        assert np.all(np.isfinite(logits[-1]))
        ids.append(int(np.argmax(logits[-1])))
        logits = lm.forward(ids[-1:], cache)
    words = tok.decode(ids).split()
    assert len(words) >= 8 and len(set(words)) >= 5, words  # English-like text, not one repeated token
