"""A real stories260k arm-cpu bundle runs the same on LiteRT's CompiledModel (XNNPACK weight cache
written, then reused) as on the Interpreter: every logit of prefill chunks, decode steps and two
requests taking turns, and the greedy tokens (full tier)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.full


def _run(lm) -> list[np.ndarray]:
    a, b = lm.new_cache(), lm.new_cache()
    seq = [lm.forward(list(range(3, 40)), a), lm.forward(list(range(50, 60)), b)]
    seq += [lm.forward([t], a) for t in (7, 8, 9)] + [lm.forward([11], b), lm.forward([12, 13, 14], a)]
    greedy = lm.new_cache()
    row = lm.forward([1, 5, 9, 20], greedy, last_only=True)[-1]
    tokens = []
    for _ in range(20):
        tokens.append(int(np.argmax(row)))
        row = lm.forward(tokens[-1:], greedy)[-1]
    return seq + [np.stack(lm.cache_arrays(a))[:, :, :, : a.length], np.array(tokens)]


def test_compiled_model_gives_the_interpreters_logits_and_reuses_its_weight_cache(tflite_builds, tmp_path, monkeypatch):
    from edgekit.device.tflite_model import open_tflite

    bundle = tflite_builds["arm-cpu"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    path = bundle / manifest["model"]["file"]
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEKIT_LITERT_COMPILED", "0")
    interpreter = open_tflite(path, manifest, threads=1)
    assert interpreter.litert_api == "Interpreter (EDGEKIT_LITERT_COMPILED=0)"
    want = _run(interpreter)
    monkeypatch.setenv("EDGEKIT_LITERT_COMPILED", "1")
    for state in ("written", "reused"):
        lm = open_tflite(path, manifest, threads=1)
        assert lm.litert_api.startswith(f"CompiledModel (XNNPACK weight cache {state}: {tmp_path}")
        assert lm.zero_copy == "on"
        got = _run(lm)
        for x, y in zip(got, want):
            assert x.shape == y.shape and np.array_equal(x, y)
    files = list((tmp_path / "xnnpack").iterdir())
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_a_gpu_bundle_whose_delegate_is_missing_runs_on_compiled_model_with_the_same_logits(tflite_builds, tmp_path,
                                                                                             monkeypatch):
    """mobile-gpu without a usable GPU delegate: the CPU fallback is a CompiledModel, and the Delegation
    still says the delegate is useless (serve refuses it without --allow-cpu-fallback); a caller that
    will refuse it gets the Interpreter, and no CompiledModel is built."""
    from edgekit.device.tflite_model import open_tflite

    bundle = tflite_builds["mobile-gpu"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    path = bundle / manifest["model"]["file"]
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    lm = open_tflite(path, manifest, threads=1)
    if not lm.delegation.useless:
        pytest.skip("this machine has a working GPU delegate")
    assert lm.litert_api.startswith("CompiledModel (XNNPACK weight cache written") and lm.accelerator == "cpu (xnnpack)"
    refused = open_tflite(path, manifest, threads=1, allow_cpu_fallback=False)  # serve will refuse it: no CPU model
    assert refused.litert_api == "Interpreter (delegate gpu)" and refused.delegation.useless
    monkeypatch.setenv("EDGEKIT_LITERT_COMPILED", "0")
    interpreter = open_tflite(path, manifest, threads=1)
    assert interpreter.litert_api == "Interpreter (EDGEKIT_LITERT_COMPILED=0)"
    for x, y in zip(_run(lm), _run(interpreter)):
        assert x.shape == y.shape and np.array_equal(x, y)


def test_loading_keeps_litert_chatter_off_stderr(tflite_builds, tmp_path, monkeypatch, capfd):
    """LiteRT logs its environment, accelerator and plugin search at the load and at the first buffer
    write: none of those lines reaches stderr, and the model still runs."""
    from edgekit.device.tflite_model import open_tflite

    bundle = tflite_builds["arm-cpu"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    capfd.readouterr()
    lm = open_tflite(bundle / manifest["model"]["file"], manifest, threads=1)
    assert lm.litert_api.startswith("CompiledModel") and lm.zero_copy == "on"
    err = capfd.readouterr().err
    assert "LiteRT environment" not in err and "NPU accelerator" not in err and "XNNPACK" not in err, err
    assert lm.forward([1, 2, 3], lm.new_cache()).shape[0] == 3
