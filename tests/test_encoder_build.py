"""Full tier: the MiniLM student built for onnx-cpu and arm-cpu, served over HTTP (no torch in the
server process) as OpenAI-shaped /v1/embeddings, and compared with PyTorch."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from conftest import run_cli
from test_build_serve import serving

pytestmark = pytest.mark.full
SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def encoder_builds(shared_dir, tmp_path_factory) -> dict:
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("encoder")
    out = {}
    for target in ("onnx-cpu", "arm-cpu"):
        res = run_cli("build", "--target", target, "--recipe", "minilm-l6", "--max-steps", "10",
                      "--out", str(work / target), "--work-dir", str(work / ("w-" + target)), cwd=work)
        assert res.returncode == 0, res.stderr[-3000:]
        out[target] = work / target
    out["student"] = work / "w-onnx-cpu" / "01-distill" / "student"
    return out


def _torch_embeddings(student, sentences):
    import torch

    from edgekit.workshop.encoder import embed, load_encoder

    model, tok = load_encoder(student)
    return torch.nn.functional.normalize(embed(model, tok, sentences), dim=-1).numpy()


@pytest.mark.parametrize("target,fmt", [("onnx-cpu", "onnx"), ("arm-cpu", "tflite")])
def test_encoder_manifest_records_parity_quality_and_ops(encoder_builds, target, fmt):
    m = json.loads((encoder_builds[target] / "manifest.json").read_text())
    assert m["task"] == "feature-extraction" and m["model"]["format"] == fmt
    assert m["model"]["precision"] == "int8-dynamic" and "generation_file" not in m
    v = m["metrics"]["verify"]
    assert v["tokenizer_match"] and v["min_cosine"] >= 0.99 and m["gate"]["passed"]
    sts = v["sts_spearman"]
    assert sts["pairs"] == 1379 and 0.5 < sts["reference"] < 0.9 and sts["ratio"] >= 0.98
    quant = m["provenance"]["stages"][2]
    assert quant["metrics"]["bytes"] < 0.35 * quant["metrics"]["bytes_before"]
    ops = quant["metrics"]["ops"]
    assert ("MatMulNBits" in ops) if fmt == "onnx" else (ops["FULLY_CONNECTED"] == 3 * 6)  # q k v o up down x 3 layers
    assert quant["parameters"]["embedding_dtype"] == "int8"
    shown = run_cli("inspect", str(encoder_builds[target]), no_torch=True)
    assert shown.returncode == 0 and "STS-B Spearman" in shown.stdout and "cosine to PyTorch" in shown.stdout


@pytest.mark.parametrize("target", ["onnx-cpu", "arm-cpu"])
def test_openai_client_embeddings_match_pytorch(encoder_builds, target):
    openai = pytest.importorskip("openai")
    expected = _torch_embeddings(encoder_builds["student"], SENTENCES)
    with serving(encoder_builds[target]) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
        res = client.embeddings.create(model="minilm-l6", input=SENTENCES)  # the client asks for base64
        got = np.array([d.embedding for d in res.data], dtype=np.float32)
        assert got.shape == (3, 384) and res.usage.prompt_tokens > 10
        cos = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
        assert cos.min() >= 0.99, cos
        assert (got[0] @ got[1]) > (got[0] @ got[2])  # paraphrases closer than unrelated sentences
        r = httpx.post(base + "/v1/embeddings", json={"input": SENTENCES[0], "encoding_format": "float"}, timeout=30)
        assert r.status_code == 200 and np.allclose(r.json()["data"][0]["embedding"], got[0], atol=1e-5)
        for body, param in (({"input": ""}, "input"), ({"input": [[]]}, "input"), ({"input": ["a"] * 300}, "input"),
                            ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
                            ({"input": "a", "dimensions": 7}, "dimensions"), ({"input": "a", "foo": 1}, "foo")):
            bad = httpx.post(base + "/v1/embeddings", json=body, timeout=30)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (body, bad.text)
        wrong = httpx.post(base + "/v1/completions", json={"prompt": "hi"}, timeout=30)
        assert wrong.status_code == 400 and "/v1/embeddings" in wrong.json()["error"]["message"]
        assert httpx.get(base + "/props", timeout=10).json()["task"] == "feature-extraction"


def test_fp32_encoder_segments_equal_pytorch(encoder_builds, tmp_path):
    """Edge TPU encoder layout: linear segments + host LayerNorm/GELU/attention = the same function."""
    from edgekit.workshop.coral_segments import export_encoder_segments
    from edgekit.workshop.encoder import load_encoder
    from edgekit.device.segmented_model import open_segmented_encoder
    from edgekit.device.tokenizer import TextTokenizer

    model, _ = load_encoder(encoder_builds["student"])
    sig = export_encoder_segments(model, tmp_path / "model.tflite", 128)
    assert [s["role"] for s in sig["segments"]] == ["qkv", "o", "up", "down"] * 3
    enc = open_segmented_encoder(tmp_path / "model.tflite", {"signature": sig})
    tok = TextTokenizer.from_file(encoder_builds["student"] / "tokenizer.json", [])
    got = enc.embed([tok.encode(s) for s in SENTENCES])
    expected = _torch_embeddings(encoder_builds["student"], SENTENCES)
    assert (got * expected).sum(-1).min() > 0.9999


@pytest.mark.parametrize("target", ["onnx-cpu", "arm-cpu"])
def test_encoder_bundle_verifies_on_this_machine_with_torch_blocked(encoder_builds, target):
    res = run_cli("verify", str(encoder_builds[target]), "--json", no_torch=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    m = json.loads((encoder_builds[target] / "manifest.json").read_text())
    ws = m["metrics"]["verify"]["reference"]["workstation"]
    assert out["passed"] is True and out["figures"]["min_cosine"] == pytest.approx(ws["min_cosine"], abs=1e-5)
    cos = next(c for c in out["checks"] if c["name"] == "min_cosine")
    assert cos["limit"] == m["target"]["verify"]["min_cosine"] and cos["device"] >= cos["limit"]
