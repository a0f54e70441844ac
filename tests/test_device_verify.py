"""`edgekit verify` and `serve --verify` on fixture bundles with a toy runner (fast tier): a reference
that passes, one whose device logits are perturbed so it fails, a bundle without reference data and
one whose reference file was tampered with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from edgekit.core.bundle import load_bundle, staging_dir, write_bundle
from edgekit.device import quality
from edgekit.device.generate import drain, generate
from edgekit.device.reference import REFERENCE_FILE, Reference, bundle_reference, flatten, measure, read, save
from edgekit.device.reference_check import check_model
from edgekit.device.runtime import RUNNERS, open_model
from edgekit.device.sampling import Sampler
from edgekit.device.server import create_app
from edgekit.device.tokenizer import TextTokenizer
from edgekit.cli.verify import EXIT_NO_REFERENCE, verify, verify_before_serving

from conftest import run_cli
from fakes import WORDS, BigramModel, word_tokenizer_file

PROMPTS = ["the cat sat on", "a big red dog", "then the dog"]
LIMITS = {"greedy_tokens": 8, "min_greedy_agreement": 0.9, "max_logit_diff": 0.5, "max_perplexity_ratio": 1.05}
RUNTIME = "fake-bigram"


def _reference(model, tok, prompts=PROMPTS, greedy_tokens=8, windows=2) -> Reference:
    """What the build stores, with `model` standing in for PyTorch."""
    prompt_ids = [tok.encode(p) for p in prompts]
    new_ids = [drain(generate(model, tok, ids, greedy_tokens, Sampler(0.0))).token_ids for ids in prompt_ids]
    top_ids, top_vals = [], []
    for ids, new in zip(prompt_ids, new_ids):
        logits = model.forward(ids + new, model.new_cache())
        idx = np.argsort(-logits, axis=-1)[:, :10]
        top_ids.append(idx.astype(np.int32)), top_vals.append(np.take_along_axis(logits, idx, -1))
    rng = np.random.default_rng(7)
    wins = rng.integers(2, len(WORDS), (windows, 17)).astype(np.int32)
    nll = sum(quality.nll_sum(model.forward(w[:-1].tolist(), model.new_cache()), w[1:]) for w in wins)
    (fp, lp), (fn, ln) = flatten(prompt_ids), flatten(new_ids)
    arrays = {"prompt_ids": fp, "prompt_ids_lengths": lp, "continuation_ids": fn, "continuation_ids_lengths": ln,
              "topk_ids": np.concatenate(top_ids), "topk_logits": np.concatenate(top_vals), "window_ids": wins}
    meta = {"kind": "causal", "prompts": prompts, "top_k": 10, "greedy_tokens": greedy_tokens,
            "pytorch": {"perplexity": math.exp(nll / wins[:, 1:].size), "tokens": int(wins[:, 1:].size)}}
    return Reference(meta, arrays)


def _tokenizer(tmp_path: Path) -> TextTokenizer:
    word_tokenizer_file(tmp_path / "tok.json")
    return TextTokenizer.from_file(tmp_path / "tok.json", [1])


def _bundle(tmp_path: Path, noise: float = 0.0, reference: bool = True, name: str = "b") -> Path:
    """A bundle whose model file names the toy runner's noise (its 'kernels')."""
    st = staging_dir(tmp_path / name)
    (st / "model.json").write_text(json.dumps({"noise": noise}))
    word_tokenizer_file(st / "tokenizer.json")
    (st / "generation.json").write_text(json.dumps({"max_new_tokens": 8}))
    manifest = {"schema_version": 1, "edgekit_version": "test", "name": "toy", "task": "text-generation",
                "target": {"name": "fake-target", "verify": LIMITS},
                "model": {"file": "model.json", "format": "onnx", "precision": "int8", "runtime": RUNTIME,
                          "max_sequence_length": 64},
                "tokenizer": {"file": "tokenizer.json", "eos_token_ids": [1]}, "generation_file": "generation.json"}
    if reference:
        tok = TextTokenizer.from_file(st / "tokenizer.json", [1])
        ref = _reference(BigramModel(), tok)
        ref.meta["workstation"] = {"machine": "x86_64", "runtime": RUNTIME, "figures": measure(BigramModel(), tok, ref)}
        save(st / REFERENCE_FILE, ref)
        manifest["reference_file"] = REFERENCE_FILE
    write_bundle(st, manifest, tmp_path / name)
    return tmp_path / name


@pytest.fixture
def toy_runtime(monkeypatch):
    """Registers the toy runner for RUNTIME in the runtime registry, as a real runtime would be."""
    def open_toy(model_path, manifest, threads=0, session=None, *, allow_cpu_fallback=True):
        return BigramModel(noise=json.loads(Path(model_path).read_text())["noise"])

    monkeypatch.setitem(RUNNERS["text-generation"], RUNTIME, open_toy)


def test_reference_round_trips_and_the_same_kernels_pass_with_zero_difference(tmp_path):
    tok = _tokenizer(tmp_path)
    ref = _reference(BigramModel(), tok)
    save(tmp_path / "r.npz", ref)
    back = read(tmp_path / "r.npz")
    assert back.ragged("prompt_ids") == [tok.encode(p) for p in PROMPTS]
    assert all(len(c) == 8 for c in back.ragged("continuation_ids"))
    res = check_model(BigramModel(), tok, back, LIMITS)
    assert res["passed"] is True and res["figures"]["max_logit_diff"] == 0.0
    assert res["figures"]["greedy_agreement"] == 1.0 and res["figures"]["greedy_prefix"] == 1.0
    assert res["figures"]["perplexity"] == pytest.approx(ref.meta["pytorch"]["perplexity"], rel=1e-4)
    assert [c["name"] for c in res["checks"]] == ["tokenizer_match", "max_logit_diff", "greedy_agreement",
                                                  "perplexity_ratio", "greedy_prefix"]


def test_perturbed_device_logits_fail_and_each_line_names_both_numbers(tmp_path):
    tok = _tokenizer(tmp_path)
    ref = _reference(BigramModel(), tok)
    res = check_model(BigramModel(noise=1.5), tok, ref, LIMITS)
    assert res["passed"] is False
    diff = next(c for c in res["checks"] if c["name"] == "max_logit_diff")
    assert diff["passed"] is False and diff["device"] > 0.5
    assert f"max |logit diff| {diff['device']:.4f}" in diff["text"] and "<= 0.5: FAIL" in diff["text"]
    ppl = next(c for c in res["checks"] if c["name"] == "perplexity_ratio")
    assert f"device {ppl['device']:.4f} vs PyTorch {ref.meta['pytorch']['perplexity']:.4f}" in ppl["text"]


def test_verify_cli_pass_fail_and_json(tmp_path, toy_runtime):
    good, bad = _bundle(tmp_path, 0.0, name="good"), _bundle(tmp_path, 1.5, name="bad")
    res = CliRunner().invoke(verify, [str(good)])
    assert res.exit_code == 0, res.output
    assert "max |logit diff| 0.0000 (device vs PyTorch on its top-10 tokens; workstation export 0.0000) <= 0.5: pass" \
        in res.output and res.output.rstrip().splitlines()[-1].startswith("passed on ")
    res = CliRunner().invoke(verify, [str(bad), "--threads", "2"])
    assert res.exit_code == 1
    line = next(ln for ln in res.output.splitlines() if "max |logit diff|" in ln)
    assert line.endswith("<= 0.5: FAIL") and "workstation export 0.0000" in line
    assert res.output.rstrip().splitlines()[-1].startswith("FAILED on ")
    res = CliRunner().invoke(verify, [str(bad), "--json"])
    out = json.loads(res.output)
    assert res.exit_code == 1 and out["passed"] is False
    assert {c["name"]: c["passed"] for c in out["checks"]}["max_logit_diff"] is False


def test_bundle_without_reference_data_says_so_with_its_own_exit_code(tmp_path):
    old = _bundle(tmp_path, reference=False)
    assert bundle_reference(load_bundle(old)) is None
    res = run_cli("verify", str(old), no_torch=True)
    assert res.returncode == EXIT_NO_REFERENCE == 3
    assert "carries no reference data" in res.stdout and "rebuild" in res.stdout
    res = CliRunner().invoke(verify, [str(old), "--json"])
    assert res.exit_code == 3 and json.loads(res.output)["passed"] is None


def test_tampered_reference_file_is_refused(tmp_path):
    b = _bundle(tmp_path)
    data = bytearray((b / REFERENCE_FILE).read_bytes())
    data[-30] ^= 0xFF
    (b / REFERENCE_FILE).write_bytes(bytes(data))
    res = run_cli("verify", str(b), no_torch=True)
    assert res.returncode == 1 and "reference.npz' fails its sha256 check" in res.stderr


def test_reference_file_outside_the_checked_files_is_refused(tmp_path):
    b = _bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["files"] = [f for f in m["files"] if f["path"] != REFERENCE_FILE]
    (b / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(verify, [str(b)])
    assert res.exit_code == 1 and "not among the manifest's checked files" in str(res.exception)


def test_serve_verify_refuses_a_failing_bundle_before_listening(tmp_path, toy_runtime):
    from edgekit.cli.serve import serve

    bad = _bundle(tmp_path, 1.5, name="bad")
    res = CliRunner().invoke(serve, [str(bad), "--verify", "--power", "none", "--port", "0",
                                     "--request-log", str(tmp_path / "req.jsonl")])
    assert res.exit_code == 1
    assert "edgekit serve:   max |logit diff|" in res.output and "<= 0.5: FAIL" in res.output
    assert " on http://" not in res.output  # never got as far as listening


def test_serve_verify_result_shows_in_props(tmp_path, toy_runtime):
    lines = []
    loaded = open_model(load_bundle(_bundle(tmp_path)))
    assert verify_before_serving(loaded, lines.append) == 0
    assert lines[0].startswith("edgekit verify: toy (fake-target, int8, fake-bigram on cpu)")
    props = TestClient(create_app(loaded)).get("/props").json()
    dv = props["device_verify"]
    assert dv["passed"] is True and dv["machine"] and dv["workstation"]["machine"] == "x86_64"
    assert {c["name"] for c in dv["checks"]} >= {"max_logit_diff", "greedy_agreement", "perplexity_ratio"}


def test_encoder_reference_cosine_against_min_cosine():
    class Encoder:
        def __init__(self, noise):
            self.table = np.random.default_rng(0).normal(size=(len(WORDS), 8)).astype(np.float32)
            self.noise = noise * np.random.default_rng(1).normal(size=(len(WORDS), 8)).astype(np.float32)

        def embed(self, batch):
            return np.stack([(self.table + self.noise)[ids].mean(0) for ids in batch])

    class Tok:
        def encode(self, text):
            return [WORDS.index(w) for w in text.split()]

    sentences = ["the cat sat", "a red dog ran", "then the dog slept"]
    ids = [Tok().encode(s) for s in sentences]
    emb = Encoder(0.0).embed(ids)
    flat, lengths = flatten(ids)
    ref = Reference({"kind": "encoder", "sentences": sentences, "max_length": 16},
                    {"input_ids": flat, "input_ids_lengths": lengths,
                     "embeddings": emb / np.linalg.norm(emb, axis=-1, keepdims=True)})
    limits = {"min_cosine": 0.99}
    ok = check_model(Encoder(0.0), Tok(), ref, limits)
    assert ok["passed"] is True and ok["figures"]["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    bad = check_model(Encoder(1.0), Tok(), ref, limits)
    cos = next(c for c in bad["checks"] if c["name"] == "min_cosine")
    assert bad["passed"] is False and cos["device"] < 0.99
    assert f"min cosine to PyTorch {cos['device']:.5f}" in cos["text"] and cos["text"].endswith(">= 0.99: FAIL")
