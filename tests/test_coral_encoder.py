"""Full tier: the MiniLM student built for coral in sentence form (every TPU segment a 1x1 CONV_2D over
[1, rows, 1, width], full int8), its predicted op mapping and per-sentence verdict, `coral check`, and
the embeddings service over real HTTP with the segments on the CPU (no Edge TPU here)."""

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
def coral_encoder(tmp_path_factory) -> dict:
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("coral-encoder")
    res = run_cli("build", "--target", "coral", "--recipe", "minilm-l6", "--max-steps", "10",
                  "--out", str(work / "coral"), "--work-dir", str(work / "w"), cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"bundle": work / "coral", "student": work / "w" / "01-distill" / "student"}


def test_sentence_form_segments_are_conv_only_and_all_predicted_on_the_tpu(coral_encoder):
    m = json.loads((coral_encoder["bundle"] / "manifest.json").read_text())
    sig = m["signature"]
    assert sig["segment_form"] == "sentence" and sig["rows"] == 32  # coral.toml's prefill_length
    assert [s["role"] for s in sig["segments"]] == ["qkv", "o", "up", "down"] * 3
    assert sig["segments"][0]["in_features"] == 384 and sig["segments"][0]["out_features"] == [384] * 3
    assert m["provenance"]["stages"][2]["metrics"]["ops"] == {"CONV_2D": 18}  # q k v o up down x 3 layers
    tpu = m["metrics"]["edgetpu"]
    for p in tpu["prediction"]:  # edgekit's rule check: every op mapped, nothing on the CPU
        assert p["totals"]["ops"] == p["totals"]["ops_mapped"] and p["totals"]["first_unmapped"] is None
    # MACs per token: 3 layers x (4 x 384^2 + 2 x 384 x 1536) on the TPU; attention over 32 tokens on the host
    assert tpu["macs_per_token"]["tpu"] == 3 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert tpu["macs_per_token"]["host_attention"] == 3 * 2 * 384 * 32
    assert tpu["mac_share_on_tpu"] == pytest.approx(5_308_416 / (5_308_416 + 73_728), abs=1e-4) and tpu["mac_share_on_tpu"] >= 0.9
    v = tpu["verdict"]
    assert v["unit"] == "sentence" and v["default"]["invokes_per_sentence"] == 12  # 12 segments x 1 call of 32 rows
    assert v["default"]["tpu_embeddings_per_second"] > 0 and v["default"]["cpu_embeddings_per_second"] > 0
    sts = m["metrics"]["verify"]["sts_spearman"]  # the int8 sentence-form files run on the CPU vs the fp32 student
    assert sts["pairs"] == 1379 and sts["ratio"] >= 0.9
    shown = run_cli("inspect", str(coral_encoder["bundle"]), no_torch=True)
    assert shown.returncode == 0 and "per 32-token sentence: Edge TPU" in shown.stdout


def test_coral_check_prints_embeddings_per_second_for_tpu_and_cpu(coral_encoder):
    res = run_cli("coral", "check", str(coral_encoder["bundle"]), "--board", "rpi5", "--link", "usb3", no_torch=True)
    assert res.returncode == 0, res.stderr
    assert "per sentence: 12 invokes (12 segments x 1 call(s) of 32 rows)" in res.stdout
    assert "embeddings/s predicted" in res.stdout and "rpi5 CPU (arm-cpu bundle, same student" in res.stdout
    out = json.loads(run_cli("coral", "check", str(coral_encoder["bundle"]), "--board", "rpi5", "--json",
                             no_torch=True).stdout)
    m = json.loads((coral_encoder["bundle"] / "manifest.json").read_text())
    recorded = m["metrics"]["edgetpu"]["verdict"]["default"]
    assert out["tpu"]["embeddings_per_second"] == pytest.approx(recorded["tpu_embeddings_per_second"], rel=1e-3)


def test_embeddings_service_runs_the_segments_on_the_cpu_when_allowed(coral_encoder):
    bundle = coral_encoder["bundle"]
    refused = run_cli("serve", str(bundle), "--port", "1", no_torch=True, timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr and "--allow-cpu-fallback" in refused.stderr
    import torch

    from edgekit.workshop.encoder import embed, load_encoder

    model, tok = load_encoder(coral_encoder["student"])
    expected = torch.nn.functional.normalize(embed(model, tok, SENTENCES), dim=-1).numpy()
    with serving(bundle, "--allow-cpu-fallback") as base:
        props = httpx.get(base + "/props", timeout=10).json()
        assert props["task"] == "feature-extraction" and props["delegate_requested"] == "edgetpu"
        assert props["delegation"]["cpu_fallback"] is True and props["accelerator"].startswith("cpu")
        r = httpx.post(base + "/v1/embeddings", json={"input": SENTENCES, "encoding_format": "float"}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        assert got.shape == (3, 384) and r.json()["usage"]["prompt_tokens"] > 10
        cos = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1)
        m = json.loads((bundle / "manifest.json").read_text())
        assert cos.min() >= m["target"]["verify"]["min_cosine"], cos  # the coral gate's limit
        # one sentence alone (its own rows) gives the vector it got packed with the others
        one = httpx.post(base + "/v1/embeddings", json={"input": SENTENCES[2], "encoding_format": "float"}, timeout=60)
        assert np.allclose(one.json()["data"][0]["embedding"], got[2], atol=2e-3)
