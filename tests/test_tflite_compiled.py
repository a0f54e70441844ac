"""TfliteCausalLM on LiteRT's CompiledModel (edgekit.device.tflite_compiled): same logits as the
Interpreter path, cache buffers that take turns without copying the cache per step, the XNNPACK
weight cache file (temp name, renamed after the load; reused; an unwritable folder loads without
it) and the fallbacks to the Interpreter (fast tier, fakes)."""

from __future__ import annotations

import logging
import platform

import numpy as np
import pytest

from edgekit.device import tflite_compiled, tflite_model
from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Sampler
from edgekit.device.tflite_model import TfliteCausalLM

from fakes import FakeLiteRT
from fakes_compiled import FakeCompiledApi, FakeCompiledModel

SIGNATURE = {"cache_length": FakeLiteRT.CACHE, "mask_value": -1e9}
SHA = "ab" * 32
MANIFEST = {"model": {"file": "model.tflite", "delegate": "xnnpack", "precision": "int8-dynamic"},
            "files": [{"path": "model.tflite", "sha256": SHA}]}


def _tables():
    rng = np.random.default_rng(0)
    return {"embed": rng.normal(size=(FakeLiteRT.VOCAB, FakeLiteRT.HIDDEN)).astype(np.float32),
            "cos": np.ones((FakeLiteRT.CACHE, 2), np.float32), "sin": np.zeros((FakeLiteRT.CACHE, 2), np.float32)}


def _compiled(stale: bool = False) -> TfliteCausalLM:
    return TfliteCausalLM(tflite_compiled.CompiledInterpreter(FakeCompiledModel(stale)), SIGNATURE, _tables())


def _public() -> TfliteCausalLM:
    return TfliteCausalLM(FakeLiteRT("real"), SIGNATURE, _tables(), zero_copy=False)


@pytest.fixture(autouse=True)
def fresh_warning_state():
    tflite_model._ZERO_COPY_WARNED.clear()
    yield
    tflite_model._ZERO_COPY_WARNED.clear()


def test_compiled_logits_and_greedy_tokens_equal_the_interpreter_path():
    lm, public = _compiled(), _public()
    assert lm.zero_copy == "on" and isinstance(lm._resident, tflite_compiled.CompiledCaches)
    ids = [1, 2, 3, 4, 0, 2]
    assert np.array_equal(lm.forward(ids, lm.new_cache()), public.forward(ids, public.new_cache()))
    a, b = (drain(generate(m, _Tok(), [1, 2], 5, Sampler(0.0))).token_ids for m in (lm, public))
    assert a == b and len(a) == 5


def test_a_decode_step_moves_no_cache_bytes():
    lm = _compiled()
    model, cache = lm.interpreter.model, lm.new_cache()
    lm.forward([1, 2, 3], cache)
    before = model.written_bytes + model.read_bytes
    lm.forward([4], cache)
    moved = model.written_bytes + model.read_bytes - before
    cache_bytes = 2 * FakeLiteRT.CACHE * FakeLiteRT.HIDDEN * 4
    assert 0 < moved < cache_bytes  # small inputs and logits only


def test_interleaved_requests_and_prefix_copies_match_the_interpreter_path():
    lm, public = _compiled(), _public()
    got, want = [], []
    for m, out in ((lm, got), (public, want)):
        a, b = m.new_cache(), m.new_cache()
        out.append(m.forward([1, 2], a))
        out.append(m.forward([3, 4, 0], b))
        out.append(m.forward([2], a))  # a's cache is parked and brought back
        prefix = m.cache_copy(b, 2)
        out.append(m.forward([1, 1], prefix))
        out.append(m.forward([4], b))
        out.append(np.stack([x[:, :, :3] for x in m.cache_arrays(a)]))  # its 3 rows (later slots are masked)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


class _CountingModel(FakeCompiledModel):
    """Counts the buffers created, by (signature, tensor name)."""

    def __init__(self):
        super().__init__()
        self.created: list = []

    def create_input_buffer_by_name(self, sig, name):
        self.created.append((sig, name))
        return super().create_input_buffer_by_name(sig, name)

    def create_output_buffer_by_name(self, sig, name):
        self.created.append((sig, name))
        return super().create_output_buffer_by_name(sig, name)


def test_the_decode_signature_built_at_load_is_the_one_used_later():
    model = _CountingModel()
    interpreter = tflite_compiled.CompiledInterpreter(model)
    key = object()
    caches = tflite_compiled.CompiledCaches(interpreter, {"p": "prefill", key: "decode"})
    created = len(model.created)
    sig = caches.sig(key)
    assert caches.sig(key) is sig and len(model.created) == created  # no second set of decode buffers
    assert sig.name == "decode" and sig.cache_names and sig.logits_name
    caches.sig("p")
    assert len(model.created) > created and {s for s, _ in model.created[created:]} == {"prefill"}


def test_a_buffer_mismatch_fails_the_self_check_and_uses_the_copying_path(caplog):
    with caplog.at_level(logging.WARNING, logger="edgekit.device"):
        lm = _compiled(stale=True)
    assert lm._resident is None and lm.zero_copy.startswith("off (self-check failed: logits differ")
    assert any("zero-copy" in r.getMessage() for r in caplog.records)


def test_weight_cache_is_written_under_a_temp_name_then_reused(tmp_path):
    api = FakeCompiledApi()
    _, first = tflite_compiled.load("m.tflite", 2, SHA, tmp_path, api)
    final = tmp_path / "xnnpack" / f"{SHA[:32]}-litert9.9.9-{platform.machine()}.xnn"
    assert first == {"file": str(final), "state": "written"}
    assert final.read_bytes() == b"packed weights" and api.calls[0][2] != str(final)
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no temp left behind
    _, second = tflite_compiled.load("m.tflite", 2, SHA, tmp_path, api)
    assert second["state"] == "reused" and api.calls[1] == ("m.tflite", 2, str(final))


def test_without_a_sha256_the_model_loads_without_a_cache(tmp_path):
    api = FakeCompiledApi()
    model, cache = tflite_compiled.load("m.tflite", 2, "", tmp_path, api)
    assert model is not None and cache == {"file": None, "state": "off (the manifest has no sha256 for the model file)"}
    assert api.calls == [("m.tflite", 2, "")] and not (tmp_path / "xnnpack").exists()


def test_an_unwritable_cache_folder_loads_without_a_cache(tmp_path, caplog):
    home = tmp_path / "home"
    home.write_text("a file where the folder should be")
    api = FakeCompiledApi()
    with caplog.at_level(logging.WARNING, logger="edgekit.device"):
        model, cache = tflite_compiled.load("m.tflite", 2, SHA, home, api)
    assert model is not None and cache["state"].startswith("off (cannot write") and api.calls[0][2] == ""
    assert len([r for r in caplog.records if "weight cache off" in r.getMessage()]) == 1


def test_a_failed_load_leaves_no_cache_file_and_open_session_falls_back(tmp_path, caplog):
    api = FakeCompiledApi(fail=True)
    with caplog.at_level(logging.WARNING, logger="edgekit.device"):
        session, how = tflite_compiled.open_session(tmp_path / "model.tflite", MANIFEST, 2, tmp_path, api)
    assert session is None and how == "Interpreter (CompiledModel failed to load: CompiledModel error: code=3)"
    assert list((tmp_path / "xnnpack").iterdir()) == []
    assert any("failed to load" in r.getMessage() for r in caplog.records)


def test_open_session_uses_compiled_model_for_float_cpu_graphs_only(tmp_path, monkeypatch):
    api = FakeCompiledApi()
    session, how = tflite_compiled.open_session(tmp_path / "model.tflite", MANIFEST, 2, tmp_path, api)
    assert isinstance(session, tflite_compiled.CompiledInterpreter) and how.startswith("CompiledModel (XNNPACK weight cache written")
    for model, want in (({"delegate": "edgetpu"}, "Interpreter (delegate edgetpu)"),
                        ({"precision": "int8-full"}, "Interpreter (int8 inputs/outputs)")):
        manifest = dict(MANIFEST, model=dict(MANIFEST["model"], **model))
        assert tflite_compiled.open_session("m.tflite", manifest, 2, tmp_path, api) == (None, want)
    monkeypatch.setenv(tflite_compiled.ENV_SWITCH, "0")
    assert tflite_compiled.open_session("m.tflite", MANIFEST, 2, tmp_path, api) == (None, "Interpreter (EDGEKIT_LITERT_COMPILED=0)")
    assert len(api.calls) == 1


# What ai-edge-litert 2.3.0 printed on stderr while `edgekit serve` loaded a stories260k arm-cpu bundle
# (paths shortened), with a few lines of others: the chatter goes, the rest stays.
LITERT_LOAD = """\
INFO: [environment.cc:36] Creating LiteRT environment with options
INFO: [accelerator_registry.cc:54] RegisterAccelerator: ptr=0x7ff2fc0991a0, name=NpuAccelerator
INFO: [npu_registry.cc:30] NPU accelerator registered.
INFO: [gpu_registry.cc:130] Attempting to load GPU accelerator(/v/ai_edge_litert/libLiteRtGpuAccelerator.so).
INFO:     Started server process [12768]
WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded and registered: kLiteRtStatusErrorNotFound.
INFO: [gpu_registry.cc:138] Dynamically loaded GPU accelerator(libLiteRtWebGpuAccelerator.so) registered.
INFO: [cpu_registry.cc:75] XNNPACK CPU accelerator registered.
INFO: [compiler_plugin.cc:308] Attempting to load plugin at: /v/ai_edge_litert/vendors/intel_openvino/compiler/\
libLiteRtCompilerPlugin_IntelOpenvino.so
WARNING: [compiler_plugin.cc:312] Failed to load plugin at: /v/ai_edge_litert/vendors/intel_openvino/compiler/\
libLiteRtCompilerPlugin_IntelOpenvino.so with error: ERROR: [litert/compiler/plugin/compiler_plugin.cc:259]
\u2514 Could not load shared library /v/ai_edge_litert/vendors/intel_openvino/compiler/\
libLiteRtCompilerPlugin_IntelOpenvino.so: libopenvino.so.2631: cannot open shared object file: No such file or directory.
INFO: [compiled_model.cc:829] Flatbuffer model initialized directly from incoming litert model.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
ERROR: [compiled_model.cc:900] Failed to build the model.
\u2514 its cause
WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded and registered: kLiteRtStatusErrorRuntimeFailure.
edgekit serve: stories260k ready
"""


def test_litert_chatter_is_dropped_and_errors_and_other_lines_are_kept():
    from edgekit.device.native_log import LineFilter

    keep = LineFilter(tflite_compiled.LITERT_CHATTER, tflite_compiled.LITERT_CONTINUED)
    kept = [line for line in LITERT_LOAD.splitlines() if keep.passes(line.encode())]
    assert kept == ["INFO:     Started server process [12768]", "ERROR: [compiled_model.cc:900] Failed to build the model.",
                    "\u2514 its cause", "WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded and "
                    "registered: kLiteRtStatusErrorRuntimeFailure.", "edgekit serve: stories260k ready"]
    assert keep.dropped == 12


class _Tok:
    eos_token_ids = frozenset()

    def decode(self, ids):
        return "".join("abcde"[i] for i in ids)
