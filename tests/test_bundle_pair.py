"""A teacher bundle with its student as a draft (edgekit.core.bundle_pair), opened for speculative
decoding, and served: /props, usage, /metrics (fast tier, fake models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle, load_bundle, staging_dir, write_bundle
from edgekit.core.bundle_pair import pair_bundles
from edgekit.core.errors import BundleError
from edgekit.device.runtime import LoadedModel, check_draft, open_model
from edgekit.device.server import create_app
from edgekit.device.speculative import Speculation

from conftest import run_cli
from fakes import VOCAB, BigramModel, FakeOrtSession, FakeTokenizer, word_tokenizer_file


def _bundle(tmp_path: Path, name: str, layers: int, tokenizer: str | None = None, runtime="onnxruntime") -> Bundle:
    out = tmp_path / name
    st = staging_dir(out)
    (st / "model.onnx").write_bytes(name.encode() * 100)
    word_tokenizer_file(st / "tokenizer.json")
    if tokenizer is not None:
        (st / "tokenizer.json").write_text(tokenizer)
    manifest = {"edgekit_version": "0.1.0", "name": name, "target": {"name": "onnx-cpu"}, "task": "text-generation",
                "model": {"file": "model.onnx", "format": "onnx", "precision": "int8-dynamic", "runtime": runtime,
                          "delegate": "none", "max_sequence_length": 32,
                          "architecture": {"layers": layers, "vocab_size": VOCAB}},
                "tokenizer": {"file": "tokenizer.json", "eos_token_ids": [1]},
                "metrics": {"verify": {"greedy_agreement": 1.0}}, "gate": {"passed": True}}
    write_bundle(st, manifest, out)
    return load_bundle(out)


def test_pair_lists_and_checks_the_draft_files(tmp_path):
    pair = pair_bundles(_bundle(tmp_path, "teacher", 5), _bundle(tmp_path, "student", 3), tmp_path / "pair",
                        provenance={"made_by": "test"})
    loaded = load_bundle(pair.root)
    d = loaded.manifest["draft"]
    assert d["file"] == "draft/model.onnx" and d["name"] == "student" and d["architecture"]["layers"] == 3
    assert d["tokenizer"] == "shared" and d["provenance"] == {"made_by": "test"}
    assert {f["path"] for f in loaded.manifest["files"]} == {"model.onnx", "tokenizer.json", "draft/model.onnx"}
    assert (pair.root / "draft" / "model.onnx").read_bytes() == b"student" * 100
    assert loaded.manifest["model"]["architecture"]["layers"] == 5  # the teacher is the model served
    (pair.root / "draft" / "model.onnx").write_bytes(b"x" * 700)  # same size, other bytes
    with pytest.raises(BundleError, match="draft/model.onnx"):
        load_bundle(pair.root)


def test_pair_refuses_another_tokenizer_and_a_second_draft(tmp_path):
    teacher = _bundle(tmp_path, "teacher", 5)
    with pytest.raises(BundleError, match="tokenizer differs"):
        pair_bundles(teacher, _bundle(tmp_path, "other", 3, tokenizer='{"v": 2}'), tmp_path / "pair")
    pair = pair_bundles(teacher, _bundle(tmp_path, "student", 3), tmp_path / "pair")
    with pytest.raises(BundleError, match="already carries a draft"):
        pair_bundles(pair, _bundle(tmp_path, "student2", 3), tmp_path / "pair2")
    assert not (tmp_path / "pair2").exists()


def test_open_model_uses_the_draft_by_default_and_not_when_told(tmp_path):
    pair = pair_bundles(_bundle(tmp_path, "teacher", 5), _bundle(tmp_path, "student", 3), tmp_path / "pair")
    loaded = open_model(pair, session=FakeOrtSession(rows=True), draft_session=FakeOrtSession(rows=True),
                        draft_tokens=3)
    spec = loaded.speculation
    assert spec is not None and spec.k == 3 and spec.layers == 3 and spec.name == "student"
    assert loaded.props()["speculative"]["acceptance_rate"] is None  # nothing drafted yet
    plain = open_model(pair, session=FakeOrtSession(rows=True), draft=False)
    assert plain.speculation is None and plain.props()["speculative"] is None
    with pytest.raises(BundleError, match="no draft"):
        open_model(_bundle(tmp_path, "lone", 5), session=FakeOrtSession(rows=True), draft=True)


def test_a_runtime_that_cannot_rewind_is_refused_with_the_way_out(tmp_path):
    pair = pair_bundles(_bundle(tmp_path, "teacher", 5, runtime="litert"), _bundle(tmp_path, "student", 3),
                        tmp_path / "pair")
    with pytest.raises(BundleError, match="--no-draft"):
        check_draft(pair)
    assert check_draft(_bundle(tmp_path, "lone", 5)) is False


def test_serve_draft_on_a_bundle_without_one_is_a_one_line_error(tmp_path):
    b = _bundle(tmp_path, "lone", 5)
    r = run_cli("serve", str(b.root), "--draft", "--port", "0")
    assert r.returncode != 0 and "has no draft model" in r.stderr and "Traceback" not in r.stderr


def _client(speculation) -> TestClient:
    manifest = {"name": "pair", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    model = BigramModel(vocab=VOCAB, seed=4, max_sequence_length=64)
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=model, tokenizer=FakeTokenizer(),
                         generation={"max_new_tokens": 20, "temperature": 0.0}, speculation=speculation)
    return TestClient(create_app(loaded))


def test_served_greedy_text_is_the_same_and_usage_props_metrics_count_the_drafts():
    spec = Speculation(BigramModel(vocab=VOCAB, seed=4, noise=3.0, max_sequence_length=64), k=3, name="student")
    fast, plain = _client(spec), _client(None)
    for prompt in ("ab", "cde", "j"):
        a = fast.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20}).json()
        b = plain.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20}).json()
        assert a["choices"][0]["text"] == b["choices"][0]["text"]
        assert "speculative" not in b["usage"]
    u = a["usage"]["speculative"]
    assert u["drafted_tokens"] >= u["accepted_tokens"] and u["verify_passes"] > 0
    props = fast.get("/props").json()["speculative"]
    assert props["drafted_tokens"] == spec.drafted > 0 and props["draft"] == "student" and props["draft_tokens"] == 3
    assert props["acceptance_rate"] == round(spec.accepted / spec.drafted, 4)
    metrics = fast.get("/metrics").text
    assert f'edgekit_draft_tokens_total{{kind="drafted"}} {float(spec.drafted)}' in metrics
    assert f'edgekit_draft_tokens_total{{kind="accepted"}} {float(spec.accepted)}' in metrics
    stream = fast.post("/v1/completions", json={"prompt": "ab", "max_tokens": 20, "stream": True}).text
    chunks = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
        plain.post("/v1/completions", json={"prompt": "ab", "max_tokens": 20}).json()["choices"][0]["text"]


def test_pair_build_recipes_teacher_and_depth():
    from edgekit.core.recipes import load_recipe
    from edgekit.workshop.pair_build import teacher_recipe, with_auto_layers

    rcp = load_recipe("smollm2-135m")
    t = teacher_recipe(rcp)
    assert t.student["mode"] == "teacher" and rcp.student["mode"] == "layer-drop" and t.name == rcp.name
    shallow = with_auto_layers(rcp, 6)
    assert shallow.student["auto_layers"] == 6 and shallow.student["keep_layers"] == ()
    assert rcp.student["auto_layers"] == 0 and len(rcp.student["keep_layers"]) == 28  # the recipe itself is unchanged


def test_build_draft_bundle_needs_with_draft(tmp_path):
    r = run_cli("build", "--recipe", "stories260k", "--draft-bundle", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "--draft-bundle needs --with-draft" in r.stderr and "Traceback" not in r.stderr
