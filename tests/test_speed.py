"""Fast tier: predicted speed on a board (edgekit/device/speed.py, onnx_weights.py) against worked examples,
`edgekit inspect --board` on small bundles, the unknown-board error, and bench/compare.py's predicted column.

Worked examples (by hand):
  decode   100 MB per token, 10 GB/s, efficiency 0.5: 1e8 / (1e10 x 0.5) = 0.02 s -> 50 tokens/s
           with a 1 ms fixed cost on the reference machine and a board at half its speed: 0.02 + 0.002 s
           -> 45.4545 tokens/s
  prefill  80M MACs per prompt token, 3.2e11 MAC/s int8 peak, efficiency 0.25: 0.25 x 3.2e11 / 8e7 = 1000 tokens/s
  MACs     parameters 113,274,432 - vocab 49,152 x hidden 576 = 84,962,880 per prompt token (SmolLM2 student)
  ONNX     initializers: W 6,000 bytes (MatMul), T 4,000 (Gather only: a lookup), H 2,500 (Gather and MatMul:
           read in full once) -> 8,500 bytes per token
  bundle   a 1,000,000-byte model.tflite, rpi5 (7.4e9 bytes/s, 3.072e11 MAC/s), tflite int8-dynamic (decode 0.88,
           prefill 0.64), 900,000 parameters, vocab 1,000 x hidden 100 -> 800,000 MACs per prompt token:
           decode 1e6 / (7.4e9 x 0.88) = 0.153563 ms + fixed 0.2 ms / 0.45 (rpi5 host speed) = 0.444444 ms
           -> 0.598007 ms = 1672.22 tokens/s (roofline 7400), prefill 0.64 x 3.072e11 / 8e5 = 245,760 tokens/s
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from edgekit.core.boards import Board, load_board
from edgekit.core.bundle import staging_dir, write_bundle
from edgekit.device import coral_latency, speed
from edgekit.device.onnx_weights import decode_weight_bytes

BOARD = Board("testboard", "test", 2.0, 6.0, "worked example", memory_bandwidth_bytes_per_second=1e10, cpu_cores=4,
              host_speed_vs_reference=0.5, int8_macs_per_second=3.2e11)


def test_decode_worked_example_and_fixed_cost():
    rec = speed.cpu_seconds_per_token(100_000_000, BOARD, 0.5)
    assert rec["seconds"] == pytest.approx(0.02) and 1 / rec["seconds"] == pytest.approx(50.0)
    with_fixed = speed.cpu_seconds_per_token(100_000_000, BOARD, 0.5, overhead_seconds=1e-3)
    assert with_fixed["fixed_seconds"] == pytest.approx(2e-3)
    assert 1 / with_fixed["seconds"] == pytest.approx(45.4545, rel=1e-5)


def test_prefill_and_macs_worked_examples():
    assert speed.prefill_tokens_per_second(80_000_000, BOARD, 0.25) == pytest.approx(1000.0)
    m = {"model": {"parameters": 113_274_432, "architecture": {"vocab_size": 49152, "hidden_size": 576}}}
    assert speed.macs_per_prompt_token(m) == 84_962_880
    assert speed.macs_per_prompt_token({"model": {}}) is None


def test_coral_verdict_uses_the_same_decode_function_and_efficiency_record():
    arm = speed.runtime_efficiency("tflite", "int8-dynamic")
    assert coral_latency.CPU_EFFICIENCY == arm["decode_efficiency"] == 0.88
    assert coral_latency.CPU_OVERHEAD_SECONDS_PER_TOKEN == arm["decode_fixed_seconds_per_token"] == 2.0e-4
    got = coral_latency.cpu_seconds_per_token(10_485_760, BOARD)
    assert got == speed.cpu_seconds_per_token(10_485_760, BOARD, 0.88, coral_latency.CPU_OVERHEAD_SECONDS_PER_TOKEN)
    assert got["seconds"] == pytest.approx(1.591564e-3, rel=1e-6)  # test_coral_latency's worked example


def test_every_efficiency_and_reference_point_says_where_it_comes_from():
    data = speed.speed_data()
    assert data["runtime"] and data["reference"]
    for r in data["runtime"]:
        assert 0 < r["decode_efficiency"] <= 1 and "commit" in r["decode_source"] and "20" in r["decode_source"]
        if "prefill_efficiency" in r:
            assert 0 < r["prefill_efficiency"] <= 1 and "commit" in r["prefill_source"]
    boards = {p.stem for p in (ROOT / "boards").glob("*.toml")}
    for r in data["reference"]:
        assert r["board"] in boards and r["url"].startswith("https://")
    for name in boards:  # every board can be predicted on, with its figures' sources
        b = load_board(name)
        assert b.memory_bandwidth_bytes_per_second > 0 and b.cpu_cores > 0 and b.int8_macs_per_second > 0
        assert "int8_macs_per_second" in b.performance_source and "cpu_cores" in b.performance_source


# ---------------------------------------------------------------- ONNX weight bytes from the protobuf

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _node(op: str, *inputs: str) -> bytes:
    return b"".join(_field(1, i.encode()) for i in inputs) + _field(4, op.encode())


def _onnx(path: Path) -> Path:
    """A ModelProto with only what the walker reads: three initializers and four nodes."""
    inits = [_field(8, name.encode()) + _field(9, bytes(size)) + _varint(2 << 3) + _varint(3)  # data_type 3 (int8)
             for name, size in (("W", 6000), ("T", 4000), ("H", 2500))]
    nodes = [_node("Gather", "T", "ids"), _node("Gather", "H", "ids"), _node("MatMul", "x", "W"),
             _node("MatMul", "y", "H")]
    graph = b"".join(_field(1, n) for n in nodes) + b"".join(_field(5, t) for t in inits)
    path.write_bytes(_varint(1 << 3) + _varint(8) + _field(7, graph))  # ir_version 8, graph
    return path


def test_onnx_weight_bytes_skip_lookup_only_tables_and_count_shared_ones_once(tmp_path):
    assert decode_weight_bytes(_onnx(tmp_path / "m.onnx")) == 8500


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path):
    from edgekit.core.errors import BundleError

    (tmp_path / "x.onnx").write_bytes(b"\x0f\xff\xff")
    with pytest.raises(BundleError, match="not an ONNX model"):
        decode_weight_bytes(tmp_path / "x.onnx")


# ---------------------------------------------------------------- edgekit inspect --board

def _bundle(tmp_path: Path, fmt: str = "tflite", precision: str = "int8-dynamic") -> Path:
    st = staging_dir(tmp_path / "b")
    name = "model.tflite" if fmt == "tflite" else "model.onnx"
    if fmt == "tflite":
        (st / name).write_bytes(bytes(1_000_000))
    else:
        _onnx(st / name)
    (st / "tokenizer.json").write_text("{}")
    manifest = {"edgekit_version": "test", "name": "toy", "task": "text-generation",
                "target": {"name": "arm-cpu", "description": "d"},
                "model": {"file": name, "format": fmt, "precision": precision, "runtime": "litert",
                          "delegate": "xnnpack", "max_sequence_length": 64, "parameters": 900_000,
                          "architecture": {"vocab_size": 1000, "hidden_size": 100}}}
    write_bundle(st, manifest, tmp_path / "b")
    return tmp_path / "b"


def test_inspect_board_prints_predicted_figures_with_sources_and_reference_points(tmp_path):
    b = _bundle(tmp_path)
    res = run_cli("inspect", str(b), "--board", "rpi5", no_torch=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "speed on rpi5 (PREDICTED, not measured)" in out
    assert "weights read per token  1.000 MB" in out
    assert "decode   predicted 1672 tokens/s = roofline 7400 x efficiency 0.88 (measured: bench/compare.py" in out
    assert "+ fixed 0.444 ms per token (measured 2026-11-30" in out
    assert "prefill  predicted 2.458e+05 tokens/s = efficiency 0.64 x int8 peak / 800,000 MACs" in out
    assert "TinyLlama 1.1B, Q8_0: prefill 35, decode 9 tokens/s  https://justine.lol/matmul/" in out
    js = json.loads(run_cli("inspect", str(b), "--board", "rpi5", "--json", no_torch=True, timeout=120).stdout)
    rec = js["predicted_speed"]
    assert js["name"] == "toy" and rec["predicted"] is True and rec["measured"] is False
    assert rec["weight_bytes_per_token"] == 1_000_000 and rec["macs_per_prompt_token"] == 800_000
    assert rec["decode"]["tokens_per_second"] == pytest.approx(1672.22, rel=1e-5)
    assert rec["prefill"]["tokens_per_second"] == pytest.approx(245_760.0)
    assert [r["board"] for r in rec["reference_points"]] == ["rpi5", "rpi5"]


def test_inspect_board_without_a_measured_efficiency_says_so(tmp_path):
    b = _bundle(tmp_path, "onnx", "fp32")
    res = run_cli("inspect", str(b), "--board", "rpi4", no_torch=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "weights read per token  0.009 MB" in res.stdout  # 8,500 bytes
    assert "decode   not predicted: no measured decode efficiency for onnx fp32 (roofline 6.471e+05" in res.stdout
    assert "prefill  not predicted: no measured prefill efficiency for onnx fp32" in res.stdout


def test_inspect_unknown_board_is_one_line_listing_known_boards(tmp_path):
    res = run_cli("inspect", str(_bundle(tmp_path)), "--board", "pi-zero", no_torch=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == ("error: unknown board 'pi-zero'; available: generic-x86, jetson-nano, "
                                  "jetson-orin-nano, rpi4, rpi5")


# ---------------------------------------------------------------- bench/compare.py --board

def _compare():
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_predicted_column_for_edgekit_rows_only(tmp_path):
    cmp = _compare()
    b = _bundle(tmp_path)
    rows = [{"name": "edgekit tflite int8", "engine": "edgekit", "path": str(b)},
            {"name": "llama.cpp Q8_0", "engine": "llama", "path": "x.gguf"}]
    cmp.add_predicted(rows, load_board("rpi5"))
    assert rows[0]["predicted_rpi5_decode_tokens_per_second"] == pytest.approx(1672.22, rel=1e-5)
    assert rows[0]["predicted_rpi5_prefill_tokens_per_second"] == pytest.approx(245_760.0, rel=1e-4)
    assert "predicted_rpi5_decode_tokens_per_second" not in rows[1]
    table = cmp.table([dict(r, model_bytes=1e6, perplexity=1.0, perplexity_vs_fp32=1.0, prefill_tokens_per_second=1,
                            prefill_vs_anchor=1, decode_tokens_per_second=1, decode_vs_anchor=1, roofline_tokens_per_second=1,
                            roofline_share=1, peak_rss_bytes=1) for r in rows], board="rpi5")
    assert "| predicted rpi5 decode tok/s |" in table.splitlines()[0]
    assert table.splitlines()[2].endswith("| 1672 |") and table.splitlines()[3].endswith("| - |")
