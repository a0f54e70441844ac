"""Full tier: build the real stories260k model into an onnx-cpu bundle, then serve it over real
HTTP from a process where torch/tensorflow cannot be imported, and compare with PyTorch."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import NO_TORCH, run_cli

pytestmark = pytest.mark.full
PROMPT = "Once upon a time"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`edgekit serve BUNDLE` (torch blocked) on a free port, once /health answers 200."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(NO_TORCH), "serve", str(bundle), "--port", str(port),
                             "--log-level", "warning", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1][-3000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not become healthy in 60 s")
        time.sleep(0.1)


@contextlib.contextmanager
def serving(bundle: Path, *extra: str):
    proc, base = start_server(bundle, *extra)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_manifest_records_stages_files_and_metrics(stories_bundle):
    m = json.loads((stories_bundle / "manifest.json").read_text())
    assert m["target"]["name"] == "onnx-cpu" and m["task"] == "text-generation"
    assert m["model"]["precision"] == "int8-dynamic" and m["model"]["parameters"] == 169_152  # 3 of 5 layers
    assert {f["path"] for f in m["files"]} == {"model.onnx", "tokenizer.json", "generation.json", "reference.npz"}
    stages = [s["name"] for s in m["provenance"]["stages"]]
    assert stages == ["distill", "export", "quantize", "verify", "package"]
    fused = m["provenance"]["stages"][1]["metrics"]["fused"]  # edgekit/workshop/onnx_fuse.py, 3 layers
    assert fused["SimplifiedLayerNormalization"] == 1 and fused["SkipSimplifiedLayerNormalization"] == 2 * 3
    assert fused["rotary_in_attention"] == 0 and "multiple of 16" in fused["rotary_kept_because"]  # head_dim 8
    quant = m["provenance"]["stages"][2]
    assert quant["inputs"][0]["role"] == "model" and len(quant["outputs"][0]["sha256"]) == 64
    assert quant["metrics"]["bytes"] < quant["metrics"]["bytes_before"]
    # per layer q/k/v packed in one (edgekit/workshop/onnx_pack.py), o, gate/up packed, down; + the LM head
    assert quant["metrics"]["ops"]["MatMulNBits"] == 3 * 4 + 1
    assert quant["metrics"]["ops"]["SkipSimplifiedLayerNormalization"] == 2 * 3 and "Pow" not in quant["metrics"]["ops"]
    v = m["metrics"]["verify"]
    assert v["tokenizer_match"] is True and v["greedy_agreement"] >= 0.9
    d = m["provenance"]["stages"][0]["metrics"]["distill"]
    assert d["keep_layers"] == [0, 2, 4] and d["steps"] == 150
    ppl = d["perplexity"]["tinystories_v1_validation_head.txt"]
    assert ppl["student"] < d["curve"][0]["perplexity"] / 3  # healing worked: far below the untrained student
    assert 0.98 <= v["perplexity"]["ratio"] <= 1.02  # int8 may land a hair below fp32 and v["perplexity"]["eval_tokens"] > 500
    assert m["gate"]["passed"] is True
    assert m["signature"]["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}
    assert stories_bundle.with_name("int8.tar").is_file()
    assert run_cli("inspect", str(stories_bundle.with_name("int8.tar"))).returncode == 0


def _torch_greedy(model_dir: Path, prompt: str, n: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    full = tok.decode(out[0], skip_special_tokens=True)
    return full[len(tok.decode(ids[0], skip_special_tokens=True)):]


def test_second_build_reuses_the_finished_distillation(stories_build):
    assert "resuming from step 150" in stories_build["fp32_log"]
    m = json.loads((stories_build["fp32"] / "manifest.json").read_text())
    assert m["model"]["precision"] == "fp32" and m["metrics"]["verify"]["greedy_agreement"] == 1.0


def test_served_greedy_equals_pytorch_greedy(stories_build):
    expected = _torch_greedy(stories_build["student"], PROMPT, 24)
    assert expected.startswith(", there was")
    with serving(stories_build["fp32"]) as base:
        r = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 24, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] == expected
        assert body["usage"]["prompt_tokens"] == 5
        # seeded sampling is reproducible; stop strings cut the text
        req = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0.9, "top_p": 0.9, "seed": 42}
        a = httpx.post(base + "/v1/completions", json=req, timeout=60).json()["choices"][0]["text"]
        b = httpx.post(base + "/v1/completions", json=req, timeout=60).json()["choices"][0]["text"]
        assert a == b
        cut = expected.split()[3]
        s = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 24, "stop": [cut]},
                       timeout=60).json()["choices"][0]
        assert s["text"] == expected[: expected.index(cut)] and s["finish_reason"] == "stop"
        bad = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": -1}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"


def test_served_int8_matches_its_build_time_verification(stories_bundle):
    """The server and the verify stage run the same device code: same greedy text for each prompt."""
    verify = json.loads((stories_bundle / "manifest.json").read_text())["metrics"]["verify"]
    with serving(stories_bundle) as base:
        for p in verify["prompts"]:
            r = httpx.post(base + "/v1/completions", json={"prompt": p["prompt"], "max_tokens": verify["greedy_tokens"],
                                                           "temperature": 0}, timeout=60)
            assert r.json()["choices"][0]["text"] == p["exported"]


def test_openai_client_works_unchanged(stories_bundle):
    openai = pytest.importorskip("openai")
    with serving(stories_bundle) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
        res = client.completions.create(model="stories260k", prompt=PROMPT, max_tokens=8, temperature=0)
        assert res.choices[0].text and res.usage.completion_tokens == 8
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="stories260k", prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
        assert streamed == res.choices[0].text
        chat = client.chat.completions.create(model="stories260k", max_tokens=8, temperature=0,
                                              messages=[{"role": "user", "content": "Tell me a story."}])
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 8
        chunks = list(client.chat.completions.create(model="stories260k", max_tokens=8, temperature=0, stream=True,
                                                     messages=[{"role": "user", "content": "Tell me a story."}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
        # logprobs (issue 16): the client's own types parse them; greedy picks each token's best alternative
        lp = client.completions.create(model="stories260k", prompt=PROMPT, max_tokens=6, temperature=0,
                                       logprobs=3).choices[0].logprobs
        assert len(lp.tokens) == 6 and all(x <= 0 for x in lp.token_logprobs)
        assert all(max(top.values()) == pytest.approx(x) for top, x in zip(lp.top_logprobs, lp.token_logprobs))
        chat_lp = client.chat.completions.create(model="stories260k", max_tokens=6, temperature=0, logprobs=True,
                                                 top_logprobs=2, messages=[{"role": "user", "content": "Hi."}])
        content = chat_lp.choices[0].logprobs.content
        assert len(content) == 6 and all(c.top_logprobs[0].logprob == pytest.approx(c.logprob) for c in content)
        assert bytes(b for c in content for b in c.bytes).decode() == chat_lp.choices[0].message.content


def test_sigterm_finishes_cleanly_and_the_request_log_is_whole(stories_bundle, tmp_path):
    import signal

    log = tmp_path / "requests.jsonl"
    proc, base = start_server(stories_bundle, "--request-log", str(log))
    for _ in range(3):
        assert httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=30).status_code == 200
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "on http://127.0.0.1:" in err  # bound to loopback unless --host says otherwise
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["status"] for r in recs] == [200, 200, 200] and all(r["completion_tokens"] == 4 for r in recs)


def test_tampered_bundle_is_refused_by_serve_and_inspect(stories_bundle, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(stories_bundle, copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    for cmd in (["serve", str(copy), "--port", str(_free_port())], ["inspect", str(copy)]):
        res = run_cli(*cmd, no_torch=True, timeout=60)
        assert res.returncode == 1, res.stderr
        assert "file 'model.onnx' fails its sha256 check" in res.stderr and "Traceback" not in res.stderr


def test_missing_teacher_path_is_one_clear_line(tmp_path):
    res = run_cli("build", "--recipe", "stories260k", "--teacher", str(tmp_path / "nope"), cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"error: teacher model path does not exist: {tmp_path / 'nope'}"
    assert not (tmp_path / "dist").exists()


def test_failed_gate_leaves_previous_bundle_untouched(stories_build, stories_bundle, tmp_path, shared_dir):
    """A limit full-int8 cannot meet (fp32 perplexity) fails the build with both numbers; nothing is replaced."""
    out = tmp_path / "b"
    shutil.copytree(stories_bundle, out)
    before = (out / "manifest.json").read_text()
    strict = tmp_path / "strict.toml"
    text = (Path(__file__).resolve().parent.parent / "targets" / "coral.toml").read_text()
    strict.write_text(text.replace('name = "coral"', 'name = "strict"').replace(
        "max_perplexity_ratio = 1.15", "max_perplexity_ratio = 1.0"))
    work = ["--work-dir", str(stories_build["stages"])]  # reuse the finished distillation
    res = run_cli("build", "--target", str(strict), "--recipe", "stories260k", "--out", str(out), *work, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    line = [x for x in res.stderr.splitlines() if "quality gate failed" in x][0]
    m = re.search(r"perplexity (\d+\.\d+) vs fp32 (\d+\.\d+) = (\d+\.\d+)x > allowed 1\.0000x", line)
    assert m, line
    exported, reference, ratio = map(float, m.groups())
    assert 5 < reference < 20 and ratio == pytest.approx(exported / reference, abs=1e-3)
    assert "--no-gate" in line
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b")) == []
    # --no-gate packages anyway and says so in the manifest
    res = run_cli("build", "--target", str(strict), "--recipe", "stories260k", "--out", str(tmp_path / "forced"),
                  *work, "--no-gate", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    gate = json.loads((tmp_path / "forced" / "manifest.json").read_text())["gate"]
    assert gate["passed"] is False and gate["enforced"] is False and "perplexity" in gate["failures"][0]


def test_served_energy_power_log_and_report(stories_bundle, tmp_path):
    """Real server, estimate source (this CI box has no power sensor): every response carries
    energy marked measured: false, the power log fills, and `edgekit report` reads both logs."""
    import signal

    req_log, power_log = tmp_path / "requests.jsonl", tmp_path / "power.jsonl"
    proc, base = start_server(stories_bundle, "--request-log", str(req_log), "--power", "estimate", "--board",
                              "rpi5", "--power-log", str(power_log), "--power-hz", "20", "--subtract-idle",
                              "--country", "FRA")
    usages = [httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 16}, timeout=30).json()["usage"]
              for _ in range(3)]
    props = httpx.get(base + "/props").json()
    metrics = httpx.get(base + "/metrics").text
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "power: using estimate (ESTIMATE, not measured)" in err and "idle baseline" in err
    for u in usages:
        e = u["energy"]
        assert e["source"] == "estimate" and e["measured"] is False
        assert e["joules"] >= 0 and e["idle_watts_subtracted"] is not None
        assert e["grid_g_per_kwh"] == 60
    assert props["power"]["source"] == "estimate" and props["power"]["measured"] is False
    assert 'edgekit_energy_joules_total{measured="false",source="estimate"}' in metrics
    samples = [json.loads(x) for x in power_log.read_text().splitlines()]
    assert len(samples) >= 20 and all(s["measured"] is False and 2.7 <= s["watts"] <= 7.0 for s in samples)

    out = tmp_path / "report"
    r = run_cli("report", str(req_log), str(power_log), "--out", str(out), no_torch=True)
    assert r.returncode == 0, r.stderr
    assert "ESTIMATE" in r.stdout and (out / "report.json").is_file() and (out / "report.html").is_file()
    summary = json.loads((out / "report.json").read_text())
    assert summary["requests"]["total"] == 3
