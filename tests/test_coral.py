"""Full tier: the Edge TPU predictor on small real .tflite models, and the coral build with and
without a compiler (a stand-in script that prints a log in the documented format)."""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import run_cli
from test_build_serve import serving

pytestmark = pytest.mark.full
LOG = Path(__file__).parent / "data" / "edgetpu_compiler_s.log"


def _tflite(module, sample, path: Path, int8: bool) -> Path:
    import litert_torch
    import torch

    from edgekit.workshop.tflite_quantize import quantize_tflite

    fp32 = path.with_suffix(".fp32.tflite")
    with torch.no_grad():
        litert_torch.convert(module.eval(), (sample,)).export(str(fp32))
    if not int8:
        return fp32
    rng = np.random.default_rng(0)
    feeds = [{"args_0": rng.standard_normal(tuple(sample.shape)).astype(np.float32)} for _ in range(8)]
    quantize_tflite(fp32, path, "int8-full", {"serving_default": feeds})
    return path


def _statuses(path: Path) -> list[tuple[str, str, str]]:
    from edgekit.device.coral_check import predict

    (sg,) = predict(path)
    return [(o.op, o.status, o.reason) for o in sg.ops]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("coral")
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    gelu = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))

    class Affine4d(torch.nn.Module):
        def forward(self, x):
            return x * 0.5 + 1.0

    x = torch.zeros(1, 16)
    return {"listed": _tflite(mlp, x, d / "listed.tflite", True),
            "gelu": _tflite(gelu, x, d / "gelu.tflite", True),
            "float": _tflite(mlp, x, d / "float.tflite", False),
            "rank": _tflite(Affine4d(), torch.zeros(2, 3, 4, 8), d / "rank.tflite", True)}


def test_only_listed_int8_ops_all_map(tiny_models):
    ops = _statuses(tiny_models["listed"])
    assert ops and all(s == "Mapped to Edge TPU" for _, s, _ in ops), ops
    assert {"FULLY_CONNECTED"} <= {o for o, _, _ in ops}
    res = run_cli("coral", "check", str(tiny_models["listed"]), "--json", no_torch=True)
    totals = json.loads(res.stdout)["subgraphs"][0]["totals"]
    assert totals["mac_share_on_tpu"] == 1.0 and totals["macs"] == 16 * 32 + 32 * 8
    assert totals["parameters_fit_on_chip"] and totals["first_unmapped"] is None


def test_gelu_splits_the_model_after_a_mapped_prefix(tiny_models):
    ops = _statuses(tiny_models["gelu"])
    names = [o for o, _, _ in ops]
    g = names.index("GELU")
    assert g > 0 and all(s == "Mapped to Edge TPU" for _, s, _ in ops[:g])
    assert ops[g][1] == "Operation not supported" and "no kernel for GELU" in ops[g][2]
    after = ops[g + 1:]
    assert after and all(s == "More than one subgraph is not supported" for _, s, _ in after)
    assert all("#%d GELU" % g in why for _, _, why in after)


def test_float_model_is_an_unsupported_data_type(tiny_models):
    op, status, why = _statuses(tiny_models["float"])[0]
    assert status == "Operation is working on an unsupported data type" and "float32" in why


def test_two_non_unit_outer_dims_are_rejected_with_the_rank_reason(tiny_models):
    ops = _statuses(tiny_models["rank"])
    first = next(o for o in ops if o[1] != "Mapped to Edge TPU")
    assert first[1] == "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"
    assert "[2, 3, 4, 8]" in first[2]


def _fake_compiler(tmp_path: Path) -> Path:
    """Stands in for edgetpu_compiler: copies each model to <stem>_edgetpu.tflite and prints the log for each."""
    script = tmp_path / "edgetpu_compiler"
    script.write_text(f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-o") + 1])
for model in map(Path, args[args.index("-o") + 2:]):  # co-compile: every model, one log section each
    shutil.copyfile(model, out / (model.stem + "_edgetpu.tflite"))
    print(Path({str(LOG)!r}).read_text())
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_coral_bundle_records_prediction_and_pending_compile(tflite_builds, tmp_path):
    bundle = tflite_builds["coral"]
    m = json.loads((bundle / "manifest.json").read_text())
    tpu = m["metrics"]["edgetpu"]
    segments = [s["file"] for s in m["signature"]["segments"]]
    assert sorted(p["file"] for p in tpu["prediction"]) == sorted(segments)
    assert tpu["compiler"]["pending"] is True and m["model"]["accelerated_files"] == []
    shown = run_cli("inspect", str(bundle), no_torch=True).stdout
    assert "compile step PENDING" in shown and f"edgekit coral compile {bundle}" in shown
    # the build records the predicted verdict (rpi5 over USB 3.0 first, every board x link after it)
    verdict = tpu["verdict"]
    assert verdict["predicted"] and (verdict["default"]["board"], verdict["default"]["link"]) == ("rpi5", "usb3")
    assert f"verdict      {verdict['default']['verdict']} (predicted)" in shown
    assert tpu["compiler"]["command"] == "cd BUNDLE && edgetpu_compiler -s -o . " + " ".join(segments)
    # read from the files: no segment holds an edgetpu-custom-op until compiled
    assert f"delegate     0 of {len(segments)} file(s) the Edge TPU delegate opens hold an edgetpu-custom-op" in shown

    copy = tmp_path / "coral"
    shutil.copytree(bundle, copy)
    res = run_cli("coral", "compile", str(copy), "--compiler", str(_fake_compiler(tmp_path)), no_torch=True)
    assert res.returncode == 0, res.stderr
    m2 = json.loads((copy / "manifest.json").read_text())
    comp = m2["metrics"]["edgetpu"]["compiler"]
    compiled = sorted(f.replace(".tflite", "_edgetpu.tflite") for f in segments)
    assert comp["compiled"] and comp["ops_on_tpu"] == 7 * len(segments)  # the recorded log, once per file
    assert sorted(m2["model"]["accelerated_files"]) == compiled
    # the recorded log does not describe this model: every difference is reported, none hidden
    assert comp["disagreements"] and all(d["predicted"] != d["compiler"] for d in comp["disagreements"])
    assert "disagreements with the prediction" in res.stdout
    assert set(compiled) <= {f["path"] for f in m2["files"]}
    # no Edge TPU here: the server says so and runs the CPU model
    with serving(copy, "--allow-cpu-fallback") as base:
        props = httpx.get(base + "/props", timeout=10).json()
        assert props["accelerator"] == "cpu (xnnpack)" and props["delegate_requested"] == "edgetpu"
        d = props["delegation"]
        assert d["cpu_fallback"] is True and d["loaded"] is False and d["segments_total"] == len(segments)
        r = httpx.post(base + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 8}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8


def test_coral_compile_without_a_compiler_is_one_clear_line(tflite_builds, tmp_path):
    res = run_cli("coral", "compile", str(tflite_builds["coral"]), "--compiler", str(tmp_path / "nope"), no_torch=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"error: Edge TPU compiler not found at {tmp_path / 'nope'}"
    wrong = run_cli("coral", "compile", str(tflite_builds["arm-cpu"]), no_torch=True)
    assert wrong.returncode == 1 and "only full-int8 TFLite bundles" in wrong.stderr


def test_fp32_segments_with_host_attention_equal_pytorch(stories_build, tmp_path):
    """The segmented layout is the same function as the model: fp32 segments + numpy attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.workshop.coral_segments import export_segments
    from edgekit.device.segmented_model import open_segmented

    model = AutoModelForCausalLM.from_pretrained(stories_build["student"]).eval()
    sig = export_segments(model, tmp_path / "model.tflite", 64)
    lm = open_segmented(tmp_path / "model.tflite", {"signature": sig})
    ids = [1, 403, 407, 261, 378, 9, 30, 56, 200, 100, 23, 11]
    cache = lm.new_cache()
    got = np.concatenate([lm.forward(ids[:7], cache), lm.forward(ids[7:], cache)])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - ref).max() < 1e-3


def test_check_with_board_prints_predicted_tpu_and_cpu_figures_and_the_verdict(tiny_models):
    from edgekit.core.accelerators import load_accelerator
    from edgekit.core.boards import load_board
    from edgekit.device.coral_latency import predict

    res = run_cli("coral", "check", str(tiny_models["listed"]), "--board", "rpi5", "--link", "usb3", no_torch=True)
    assert res.returncode == 0, res.stderr
    block = res.stdout[res.stdout.index("== verdict"):].splitlines()
    acc = load_accelerator()
    # the listed MLP: 16x32 + 32x8 int8 weights (768 bytes, 768 MACs) + 32 + 8 int32 biases (160 bytes),
    # one segment, cached on chip
    want = predict([{"file": "m", "parameter_bytes": 928, "macs": 768}], load_board("rpi5"), acc.link("usb3"), acc)
    assert want["tpu"]["breakdown"]["streamed_bytes"] == 0
    assert f"{want['tpu']['tokens_per_second']:.3g} tokens/s predicted" in block[1]
    assert f"{want['cpu']['tokens_per_second']:.3g} tokens/s predicted" in block[3]
    assert all("predicted" in line for line in block[:2] + block[3:])
    assert block[4].strip() == want["verdict"]
    as_json = json.loads(run_cli("coral", "check", str(tiny_models["listed"]), "--board", "rpi5", "--json",
                                 no_torch=True).stdout)
    assert as_json["predicted"] and as_json["verdict"] == want["verdict"] and as_json["link"] == "usb3"
