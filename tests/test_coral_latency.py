"""Fast tier: the Edge TPU co-compile command line (fake compiler runner), the on-chip cache fill, the
per-token latency / energy model against worked examples, and `coral check --board/--link`.

Worked example used below (numbers to check by hand): 3 segments of 4, 4 and 2 MiB int8 parameters
(1 MAC per parameter per token), an 8 MiB cache, a link of 3e8 bytes/s with 0.3 ms per invoke, a TPU
of 2e12 MAC/s and 2 W, 5e-5 s host work per call on the reference machine, a board at half its speed
with 1e10 bytes/s streaming copy, 4 cores, 2 W idle and 6 W full load.
  cache:    4 + 4 MiB fill the 8 MiB; the 2 MiB segment streams: 2,097,152 bytes per token
  TPU:      3 x 0.3 ms + 2,097,152 / 3e8 s (6.99051 ms) + 10,485,760 / 2e12 s (0.00524 ms)
            + 3 x 5e-5 / 0.5 s (0.3 ms) = 8.19575 ms -> 122.0 tokens/s
  CPU:      10,485,760 / (1e10 x 0.88) s = 1.19156 ms + fixed 0.2 ms / 0.5 = 1.59156 ms -> 628.3 tokens/s
  energy:   TPU side (2 + (6 - 2) / 4 + 2) W = 5 W x 8.19575 ms = 0.0409788 J; CPU 6 W x 1.59156 ms = 0.00954938 J
  verdict:  122.0 / 628.3 = 0.1942 -> "Edge TPU predicted 0.19x the testboard CPU for this model: use arm-cpu"
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import run_cli
from edgekit.core.accelerators import Accelerator, Link, load_accelerator
from edgekit.core.boards import Board, list_boards, load_board
from edgekit.device import coral_latency as L
from edgekit.workshop.coral_compile import co_compile, compile_command, compiler_order, split_compiler_log

MIB = 2**20
LINK = Link("testlink", "test", 3e8, 3e-4, "worked example")
TPU = Accelerator("edgetpu", 8 * MIB, 2e12, 2.0, "worked example", "greedy", 5e-5, "worked example", {"testlink": LINK})
BOARD = Board("testboard", "test", 2.0, 6.0, "worked example", memory_bandwidth_bytes_per_second=1e10, cpu_cores=4,
              host_speed_vs_reference=0.5)
SEGMENTS = [{"file": f"s{i}.tflite", "parameter_bytes": n * MIB, "macs": n * MIB} for i, n in enumerate((4, 4, 2))]


def test_cache_fill_is_greedy_in_compiler_order_whole_segments():
    assert L.cache_fill([4 * MIB, 4 * MIB, 2 * MIB], 8 * MIB) == [True, True, False]
    # a segment that does not fit streams whole; a later, smaller one still takes what is left
    assert L.cache_fill([5 * MIB, 4 * MIB, 2 * MIB, 1 * MIB], 8 * MIB) == [True, False, True, True]
    assert L.cache_fill([9 * MIB], 8 * MIB) == [False]
    assert L.cache_fill([], 8 * MIB) == []


def test_worked_example_tpu_cpu_energy_and_verdict():
    rec = L.predict(SEGMENTS, BOARD, LINK, TPU)
    bd = rec["tpu"]["breakdown"]
    assert bd["cached_segments"] == 2 and bd["cached_bytes"] == 8 * MIB and bd["streamed_bytes"] == 2 * MIB
    assert bd["invoke_seconds"] == pytest.approx(0.9e-3)
    assert bd["transfer_seconds"] == pytest.approx(6.990507e-3, rel=1e-6)
    assert bd["compute_seconds"] == pytest.approx(5.24288e-6)
    assert bd["host_seconds"] == pytest.approx(0.3e-3)
    assert rec["tpu"]["seconds_per_token"] == pytest.approx(8.19575e-3, rel=1e-5)
    assert rec["tpu"]["tokens_per_second"] == pytest.approx(122.01, rel=1e-4)
    assert rec["cpu"]["breakdown"]["memory_seconds"] == pytest.approx(1.191564e-3, rel=1e-6)
    assert rec["cpu"]["seconds_per_token"] == pytest.approx(1.591564e-3, rel=1e-6)
    assert rec["tpu"]["watts"] == 5.0 and rec["cpu"]["watts"] == 6.0
    assert rec["tpu"]["joules_per_token"] == pytest.approx(0.0409788, rel=1e-5)
    assert rec["cpu"]["joules_per_token"] == pytest.approx(0.00954938, rel=1e-5)
    assert rec["tpu_vs_cpu"] == pytest.approx(1.591564 / 8.19575, rel=1e-5)
    assert rec["verdict"] == "Edge TPU predicted 0.19x the testboard CPU for this model: use arm-cpu"
    assert rec["predicted"] and not rec["tpu"]["measured"] and not rec["cpu"]["measured"]
    assert "predicted" in rec["tpu"]["source"] and "predicted" in rec["cpu"]["source"]


def test_a_model_that_fits_on_chip_against_a_slow_cpu_says_use_coral():
    slow = Board("slowboard", "test", 2.0, 6.0, "x", memory_bandwidth_bytes_per_second=1e8, cpu_cores=4,
                 host_speed_vs_reference=0.5)
    small = [{"file": "a", "parameter_bytes": 4 * MIB, "macs": 4 * MIB}]
    rec = L.predict(small, slow, LINK, TPU)
    # TPU: 0.3 ms + 0 streamed + 2.097 us + 0.1 ms = 0.402097 ms; CPU: 4 MiB / (1e8 x 0.88) = 47.6625 ms + 0.4 ms
    assert rec["tpu"]["seconds_per_token"] == pytest.approx(0.402097e-3, rel=1e-5)
    assert rec["tpu_vs_cpu"] == pytest.approx(48.0625e-3 / 0.402097e-3, rel=1e-4)
    assert rec["verdict"] == "Edge TPU predicted 1.2e+02x the slowboard CPU for this model: use coral"


def test_a_board_without_performance_figures_is_a_clear_error(tmp_path):
    bare = Board("bare", "test", 2.0, 6.0, "x")
    with pytest.raises(Exception, match="host_speed_vs_reference"):
        L.predict(SEGMENTS, bare, LINK, TPU)


def test_shipped_data_has_sources_and_every_board_predicts():
    acc = load_accelerator()
    assert set(acc.links) == {"usb2", "usb3", "pcie"} and acc.on_chip_parameter_bytes == 8 * MIB
    assert acc.links["usb2"].bytes_per_second < acc.links["usb3"].bytes_per_second
    assert all(link.source for link in acc.links.values()) and acc.source and acc.host_seconds_source
    for b in list_boards():
        assert b.memory_bandwidth_bytes_per_second > 0 and b.cpu_cores > 0 and b.performance_source
    rows = L.verdict_table(SEGMENTS, list_boards(), sorted(acc.links), acc)
    assert len(rows) == 3 * len(list_boards())
    # same model, same board: a faster link is never predicted slower
    rpi5 = {r["link"]: r["tpu"]["tokens_per_second"] for r in rows if r["board"] == "rpi5"}
    assert rpi5["usb2"] < rpi5["usb3"] < rpi5["pcie"]


class FakeCompilerRun:
    """Stands in for subprocess.run: records the command, writes <stem>_edgetpu.tflite for each model
    and prints one log section per model, as the co-compiling compiler does."""

    def __init__(self, fail: str | None = None):
        self.calls, self.fail = [], fail

    def __call__(self, cmd, **kw):
        self.calls.append((cmd, kw))
        out = Path(cmd[cmd.index("-o") + 1])
        text = "Edge TPU Compiler version 16.0.384591198\nModel compiled successfully in 40 ms.\n"
        for m in map(Path, cmd[cmd.index("-o") + 2:]):
            if m.name != self.fail:
                (out / (m.stem + "_edgetpu.tflite")).write_bytes(b"x")
            text += (f"\nInput model: {m}\nOutput model: {out / (m.stem + '_edgetpu.tflite')}\n"
                     "Operator                       Count      Status\n\n"
                     "FULLY_CONNECTED                1          Mapped to Edge TPU\n")
        return SimpleNamespace(returncode=0, stdout=text, stderr="")


def test_one_co_compile_call_for_every_segment_in_execution_order(tmp_path):
    names = ["head.tflite", "l00_up.tflite", "model.tflite", "l00_o.tflite"]
    models = [tmp_path / n for n in names]
    signature = {"segments": [{"file": f} for f in ("model.tflite", "l00_o.tflite", "l00_up.tflite", "head.tflite")]}
    ordered = compiler_order(models, signature)
    assert [m.name for m in ordered] == ["model.tflite", "l00_o.tflite", "l00_up.tflite", "head.tflite"]
    assert compile_command(ordered, tmp_path / "out", "/opt/edgetpu_compiler") == [
        "/opt/edgetpu_compiler", "-s", "-o", str(tmp_path / "out"), *(str(tmp_path / n) for n in
                                                                       ("model.tflite", "l00_o.tflite", "l00_up.tflite", "head.tflite"))]
    out = tmp_path / "out"
    out.mkdir()
    run = FakeCompilerRun()
    comp = co_compile(ordered, out, "/opt/edgetpu_compiler", run, timeout=5)
    assert len(run.calls) == 1 and run.calls[0][1]["timeout"] == 5  # one call, not one per model
    assert comp["compiled"] and comp["co_compiled"] and comp["failed"] == []
    assert comp["files"] == ["model_edgetpu.tflite", "l00_o_edgetpu.tflite", "l00_up_edgetpu.tflite", "head_edgetpu.tflite"]
    assert [lg["model"] for lg in comp["logs"]] == [m.name for m in ordered]
    assert all(lg["ops_on_tpu"] == 1 and lg["version"] == "16.0.384591198" for lg in comp["logs"])
    assert comp["command"].startswith("/opt/edgetpu_compiler -s -o ")
    assert (out / "edgetpu_compiler.log").read_text().count("Input model:") == 4


def test_a_model_the_co_compile_did_not_produce_is_reported_failed(tmp_path):
    models = [tmp_path / "a.tflite", tmp_path / "b.tflite"]
    comp = co_compile(models, tmp_path, "edgetpu_compiler", FakeCompilerRun(fail="b.tflite"), timeout=5)
    assert comp["compiled"] is False and comp["failed"] == ["b.tflite"] and comp["files"] == ["a_edgetpu.tflite"]


def test_split_log_gives_each_model_its_section_with_the_shared_header():
    text = "Edge TPU Compiler version 16\nInput model: a\nX 1 Mapped\nInput model: b\nY 2 Mapped\n"
    parts = split_compiler_log(text)
    assert parts == ["Edge TPU Compiler version 16\nInput model: a\nX 1 Mapped\n",
                     "Edge TPU Compiler version 16\nInput model: b\nY 2 Mapped\n"]
    assert split_compiler_log("no sections") == ["no sections"]


@pytest.mark.parametrize("args, message", [
    (["--board", "rpi9"], "error: unknown board 'rpi9'; available: "),
    (["--board", "rpi5", "--link", "usb9"], "error: unknown link 'usb9'; available: pcie, usb2, usb3"),
])
def test_bad_board_or_link_is_one_clear_line(tmp_path, args, message):
    res = run_cli("coral", "check", str(tmp_path / "model.tflite"), *args, no_torch=True)
    assert res.returncode != 0 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert "Traceback" not in res.stderr


def test_rpi5_has_the_published_figures_it_cites():
    b = load_board("rpi5")
    assert b.memory_bandwidth_bytes_per_second == 7.4e9 and b.cpu_cores == 4
    assert "17.07 GB/s" in b.performance_source and "assumption" in b.performance_source
