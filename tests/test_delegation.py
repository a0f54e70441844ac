"""What a GPU / Edge TPU delegate really took (fast tier): node counting on LiteRT-like graphs, the
injected interpreter module's three cases (library missing, loaded but useless, taking nodes), segment
totals, the refusal / --allow-cpu-fallback rule, and serve/verify/props on a toy bundle."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from edgekit.core.bundle import load_bundle, staging_dir, write_bundle
from edgekit.device import delegation
from edgekit.device.delegation import Delegation, DelegateUnusable, combine, count_nodes, settle
from edgekit.device.runtime import RUNNERS, open_model
from edgekit.device.server import create_app
from edgekit.device.tflite_model import make_interpreter

from fakes import BigramModel, word_tokenizer_file


class FakeGraph:
    """LiteRT's interpreter wrapper as count_nodes reads it: (name, inputs, outputs) per node, in
    LiteRT's order (original nodes first, DELEGATE nodes appended; replaced nodes stay listed)."""

    def __init__(self, nodes):
        self.nodes = nodes

    def NumNodes(self):
        return len(self.nodes)

    def NodeName(self, i):
        return self.nodes[i][0]

    def NodeInputs(self, i):
        return self.nodes[i][1]

    def NodeOutputs(self, i):
        return self.nodes[i][2]


# tensors: 0 input, 10 weight, 1..5 activations; a chain of 5 nodes; 6 = graph output
CHAIN = [("FULLY_CONNECTED", [0, 10], [1]), ("MUL", [1, 1], [2]), ("ADD", [2, 1], [3]),
         ("RESHAPE", [3], [4]), ("DYNAMIC_UPDATE_SLICE", [4, 0], [5])]


def _interp(nodes, delegation_facts=None):
    return SimpleNamespace(_interpreter=FakeGraph(nodes), delegation=delegation_facts)


def test_count_nodes_walks_each_delegate_partition_back_to_its_inputs():
    assert count_nodes(_interp(CHAIN)) == (0, 5)
    # one partition took FC, MUL, ADD (inputs 0 and the weight, output 3); RESHAPE and DUS stay on the CPU
    assert count_nodes(_interp(CHAIN + [("DELEGATE", [0, 10], [3])])) == (3, 2)
    # two partitions: FC alone, and RESHAPE alone
    assert count_nodes(_interp(CHAIN + [("DELEGATE", [0, 10], [1]), ("DELEGATE", [3], [4])])) == (2, 3)
    assert "does not expose" in count_nodes(SimpleNamespace())


class FakeLite:
    """The interpreter module make_interpreter uses: load_delegate and Interpreter, with the graph the
    delegate leaves behind (`nodes`), or `error` raised by load_delegate."""

    def __init__(self, nodes=CHAIN, error=None):
        self.nodes, self.error, self.opened = nodes, error, []

    def load_delegate(self, library, options):
        if self.error:
            raise self.error
        return ("delegate", library, options)

    def Interpreter(self, model_path, experimental_delegates=(), num_threads=None):
        self.opened.append((model_path, list(experimental_delegates)))
        return _interp(self.nodes if experimental_delegates else CHAIN)


def test_missing_library_is_not_loaded_and_says_why(tmp_path, caplog):
    lite = FakeLite(error=ValueError("Failed to load delegate from libgone.so\nmore"))
    with caplog.at_level(logging.WARNING, logger="edgekit.device"):
        _, d = make_interpreter(tmp_path / "m.tflite", 2, "gpu", "libgone.so", lite=lite)
    assert caplog.records == []  # no "running on CPU" log: open_model refuses or warns once
    assert not d.loaded and d.useless and d.nodes_delegated is None
    assert d.reason == "library 'libgone.so' could not be loaded (Failed to load delegate from libgone.so)"
    assert d.accelerator == "cpu (xnnpack)" and lite.opened == [(str(tmp_path / "m.tflite"), [])]
    assert d.line() == f"delegate gpu: not loaded, {d.reason} (all on CPU)"


def test_loaded_delegate_taking_nothing_is_useless_and_not_reported_as_the_accelerator(tmp_path):
    _, d = make_interpreter(tmp_path / "m.tflite", 0, "gpu", "libgpu.so", lite=FakeLite(nodes=CHAIN))
    assert d.loaded and d.useless and (d.nodes_delegated, d.nodes_cpu) == (0, 5)
    assert d.accelerator == "cpu (xnnpack)"
    assert d.line() == "delegate gpu: 0 of 5 nodes delegated (all on CPU)"
    assert d.reason == "the delegate loaded but took none of the 5 nodes"


def test_delegate_taking_nodes_is_the_accelerator_and_opens_the_compiled_file(tmp_path):
    lite = FakeLite(nodes=CHAIN + [("DELEGATE", [0, 10], [3])])
    _, d = make_interpreter(tmp_path / "m.tflite", 0, "edgetpu", "libedgetpu.so.1", {"device": "usb"},
                            accelerated_path=tmp_path / "m_edgetpu.tflite", lite=lite)
    assert not d.useless and (d.nodes_delegated, d.nodes_cpu) == (3, 2)
    assert d.accelerator == "edgetpu (libedgetpu.so.1)" and d.line() == "delegate edgetpu: 3 of 5 nodes delegated"
    assert lite.opened == [(str(tmp_path / "m_edgetpu.tflite"), [("delegate", "libedgetpu.so.1", {"device": "usb"})])]
    assert d.edgetpu_custom_ops is None  # the file does not exist here: unknown, not 0


def test_cpu_targets_and_unconfigured_libraries():
    _, d = make_interpreter("m.tflite", 0, "xnnpack", "", lite=FakeLite())
    assert not d.hardware and not d.useless and d.accelerator == "cpu (xnnpack)"
    _, d = make_interpreter("m.tflite", 0, "gpu", "", lite=FakeLite())
    assert d.useless and d.reason == "no delegate library configured"


def _seg(taken: int, cpu: int, custom=None) -> Delegation:
    return Delegation("edgetpu", "libedgetpu.so.1", True, taken, cpu, edgetpu_custom_ops=custom)


def test_segments_combine_into_one_record():
    d = combine([_seg(1, 0, 1), _seg(0, 1, 0), _seg(1, 0, 1)])
    assert (d.segments_delegated, d.segments_total, d.nodes_delegated, d.nodes_cpu) == (2, 3, 2, 1)
    assert not d.useless and d.edgetpu_custom_ops == 2
    assert d.line() == "delegate edgetpu: 2 of 3 segments, 2 of 3 nodes delegated"
    none = combine([_seg(0, 1, 0), _seg(0, 1, 0)])
    assert none.useless and "not compiled for the Edge TPU" in none.reason
    assert none.line() == "delegate edgetpu: 0 of 2 segments, 0 of 2 nodes delegated (all on CPU)"
    unknown = combine([_seg(1, 0), Delegation("edgetpu", "x", True, reason="this LiteRT build does not expose")])
    assert unknown.segments_delegated is None and unknown.nodes_delegated is None and not unknown.useless
    missing = combine([delegation.not_loaded("edgetpu", "x", "gone")] * 2)
    assert missing.useless and missing.reason == "gone"


def test_settle_refuses_unless_fallback_is_allowed():
    useless = Delegation("gpu", "libgpu.so", True, 0, 7, reason="the delegate loaded but took none of the 7 nodes")
    with pytest.raises(DelegateUnusable) as e:
        settle(useless, "mobile-gpu", False)
    assert str(e.value) == ("target mobile-gpu requests the gpu delegate but it takes no work: the delegate loaded "
                            "but took none of the 7 nodes; pass --allow-cpu-fallback to run on the CPU anyway")
    assert not useless.cpu_fallback
    line = settle(useless, "mobile-gpu", True)
    assert useless.cpu_fallback
    assert line == "WARNING: delegate gpu: 0 of 7 nodes delegated (all on CPU); continuing on the CPU (--allow-cpu-fallback)"
    assert settle(delegation.no_delegate("xnnpack"), "arm-cpu", False) is None
    assert settle(Delegation("gpu", "l", True, 3, 4), "mobile-gpu", False) is None
    assert settle(None, "x", False) is None


RUNTIME = "fake-delegated"


@pytest.fixture
def delegated_runtime(monkeypatch):
    """A toy runner whose model file states the delegate facts its 'interpreter' found."""
    def open_toy(model_path, manifest, threads=0, session=None, *, allow_cpu_fallback=True):
        model = BigramModel()
        model.delegation = Delegation(**json.loads(Path(model_path).read_text()))
        model.accelerator = model.delegation.accelerator
        model.opened_with = {"allow_cpu_fallback": allow_cpu_fallback, "manifest_keys": set(manifest)}
        return model

    monkeypatch.setitem(RUNNERS["text-generation"], RUNTIME, open_toy)


def _bundle(tmp_path: Path, facts: dict, name: str = "b") -> Path:
    st = staging_dir(tmp_path / name)
    (st / "model.json").write_text(json.dumps(facts))
    word_tokenizer_file(st / "tokenizer.json")
    manifest = {"schema_version": 1, "edgekit_version": "test", "name": "toy", "task": "text-generation",
                "target": {"name": "mobile-gpu"},
                "model": {"file": "model.json", "format": "tflite", "precision": "fp16", "runtime": RUNTIME,
                          "delegate": facts["delegate"], "max_sequence_length": 64},
                "tokenizer": {"file": "tokenizer.json", "eos_token_ids": [1]}}
    write_bundle(st, manifest, tmp_path / name)
    return tmp_path / name


USELESS = {"delegate": "gpu", "library": "libgpu.so", "loaded": True, "nodes_delegated": 0, "nodes_cpu": 412,
           "reason": "the delegate loaded but took none of the 412 nodes"}


def test_serve_refuses_a_useless_delegate_before_listening(tmp_path, delegated_runtime):
    from edgekit.cli.serve import serve

    res = CliRunner().invoke(serve, [str(_bundle(tmp_path, USELESS)), "--power", "none", "--port", "0",
                                     "--request-log", str(tmp_path / "req.jsonl")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "Error: target mobile-gpu requests the gpu delegate but it takes no work" in res.output
    assert "--allow-cpu-fallback" in res.output and " on http://" not in res.output


def test_open_model_refuses_and_props_show_the_fallback(tmp_path, delegated_runtime):
    b = _bundle(tmp_path, USELESS)
    with pytest.raises(DelegateUnusable):
        open_model(load_bundle(b))
    loaded = open_model(load_bundle(b), allow_cpu_fallback=True)
    assert loaded.fallback_warning.startswith("WARNING: delegate gpu: 0 of 412 nodes delegated (all on CPU);")
    props = TestClient(create_app(loaded)).get("/props").json()
    assert props["accelerator"] == "cpu (xnnpack)" and props["delegate_requested"] == "gpu"
    assert props["delegation"] == dict(USELESS, cpu_fallback=True, segments_delegated=None, segments_total=None,
                                       edgetpu_custom_ops=None)


def test_the_runner_is_told_whether_a_cpu_fallback_would_be_refused(tmp_path, delegated_runtime):
    """A runner that knows the caller will refuse its useless delegate can skip building a CPU model;
    the rule travels as the runner's keyword, not as a key added to the manifest it reads."""
    facts = dict(USELESS, nodes_delegated=400, nodes_cpu=12, reason="400 of 412 nodes delegated")
    b = load_bundle(_bundle(tmp_path, facts))
    refused, allowed = open_model(b).model, open_model(b, allow_cpu_fallback=True).model
    assert refused.opened_with["allow_cpu_fallback"] is False and allowed.opened_with["allow_cpu_fallback"] is True
    assert refused.opened_with["manifest_keys"] == set(b.manifest)


def test_a_delegate_that_takes_nodes_serves_without_the_flag(tmp_path, delegated_runtime):
    facts = dict(USELESS, nodes_delegated=400, nodes_cpu=12, reason="400 of 412 nodes delegated")
    loaded = open_model(load_bundle(_bundle(tmp_path, facts)))
    assert loaded.fallback_warning is None and loaded.accelerator == "gpu (libgpu.so)"
    props = TestClient(create_app(loaded)).get("/props").json()
    assert props["delegation"]["nodes_delegated"] == 400 and props["delegation"]["cpu_fallback"] is False
