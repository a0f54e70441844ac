"""`edgekit bench` and edgekit.device.benchmark: timings, energy windows, the comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli.bench import bench
from edgekit.core.bundle import Bundle, file_record
from edgekit.device.benchmark import PROMPTS, format_bench_table, run_bench
from edgekit.cli.plots import plot_compare
from edgekit.device.power.meter import EnergyMeter
from edgekit.device.runtime import LoadedModel

from fakes import FakeClock, FakeTokenizer, ScriptedModel, TraceSource

STEP = 0.01  # fake seconds per forward call


class TimedModel(ScriptedModel):
    """Advances the fake clock by `seconds` per forward call (prefill: 2x)."""

    def __init__(self, script, clock, seconds=STEP):
        super().__init__(script)
        self.clock, self.seconds = clock, seconds

    def forward(self, token_ids, cache, last_only=False):
        self.clock.advance(self.seconds * (2 if len(token_ids) > 1 else 1))
        return super().forward(token_ids, cache, last_only)


def _loaded(clock, precision="fp32", target="fake-cpu", ratio=1.01, model_bytes=1000, seconds=STEP):
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": target},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": precision, "runtime": "fake"},
                "files": [{"path": "model.onnx", "bytes": model_bytes}, {"path": "tokenizer.json", "bytes": 7},
                          {"path": "generation.json", "bytes": 3}],
                "metrics": {"verify": {"greedy_agreement": 0.95,
                                       "perplexity": {"reference": 10.0, "exported": 10.0 * ratio, "ratio": ratio}}},
                "gate": {"passed": True}}
    return LoadedModel(bundle=Bundle(Path("."), manifest), model=TimedModel([2, 3, 4, 5], clock, seconds),
                       tokenizer=FakeTokenizer(), generation={})


def _bench(watts=5.0, measured=True, **kw):
    clock = FakeClock()
    loaded = _loaded(clock, **{k: v for k, v in kw.items() if k != "runs"})
    meter = EnergyMeter(TraceSource(clock, watts_at=lambda t: watts, name="fake" if measured else "estimate",
                                    measured=measured), clock=clock)
    calls = []

    def rss():
        calls.append(1)
        return 123_000_000

    res = run_bench(loaded, meter=meter, runs=kw.get("runs", 2), max_tokens=8, warmup=1, rss=rss, clock=clock)
    return res, calls


def test_energy_is_watts_times_window_seconds_and_timings_follow_the_clock():
    res, calls = _bench(watts=5.0)
    assert calls == [1] and res["peak_rss_bytes"] == 123_000_000
    assert res["model_bytes"] == 1000 and res["target"] == "fake-cpu" and res["precision"] == "fp32"
    assert res["generations"] == 2 * len(PROMPTS) and res["runs"] == 2
    assert res["completion_tokens"] == 2 * len(PROMPTS) * 8
    # prefill = one 2-step forward; decode = 7 one-step forwards for 8 tokens
    assert res["prefill_ms"]["median"] == pytest.approx(2 * STEP * 1e3)
    assert res["decode_ms_per_token"]["median"] == pytest.approx(STEP * 1e3)
    assert res["decode_tokens_per_second"]["median"] == pytest.approx(1 / STEP)
    e = res["energy"]
    assert e["measured"] is True and e["source"] == "fake" and e["method"] == "trapezoid" and "note" not in e
    assert e["windows"] == res["generations"]
    assert e["seconds"] == pytest.approx(res["generations"] * 9 * STEP)  # 2 + 7 steps per generation
    assert e["joules"] == pytest.approx(5.0 * e["seconds"])
    assert e["watts"] == pytest.approx(5.0)
    assert e["joules_per_token"] == pytest.approx(e["joules"] / res["completion_tokens"])
    assert e["joules_per_token"] == pytest.approx(5.0 * 9 * STEP / 8)
    q = res["quality"]
    assert q["perplexity_ratio"] == 1.01 and q["greedy_agreement"] == 0.95 and "verify stage" in q["from"]
    assert len(res["samples"]) == res["generations"] and res["samples"][0]["joules"] > 0
    json.dumps(res)  # everything is JSON-serialisable


def test_estimate_is_flagged_in_json_and_every_energy_number_in_the_table():
    res, _ = _bench(watts=3.0, measured=False)
    assert res["energy"]["measured"] is False and "not a measurement" in res["energy"]["note"]
    table = format_bench_table([res])
    for row in ("energy J (total)", "J/token", "avg W"):
        line = next(x for x in table.splitlines() if x.startswith(row + " "))
        assert "ESTIMATE" in line, line
    assert "not a measurement" in table


def test_no_meter_means_no_energy_and_no_rss_callable_means_none():
    clock = FakeClock()
    res = run_bench(_loaded(clock), meter=None, runs=1, max_tokens=4, warmup=0, rss=None, clock=clock)
    assert res["energy"] is None and res["peak_rss_bytes"] is None
    assert "J/token" in format_bench_table([res])


def test_table_has_one_column_per_bundle_with_ratios_vs_the_first():
    a, _ = _bench(watts=4.0, precision="fp32", seconds=STEP)
    b, _ = _bench(watts=4.0, precision="int8-dynamic", seconds=STEP / 2, ratio=1.02)
    table = format_bench_table([a, b])
    lines = table.splitlines()
    assert lines[0].split() == ["toy", "toy"]
    assert "fp32" in lines[1] and "int8-dynamic" in lines[1]
    tps = next(x for x in lines if x.strip().startswith("decode tok/s vs first"))
    assert tps.split()[-2:] == ["x1.00", "x2.00"]
    jpt = next(x for x in lines if x.strip().startswith("J/token vs first"))
    assert jpt.split()[-2:] == ["x1.00", "x0.50"]
    assert "ESTIMATE" not in table
    assert "verify stage" in table


def test_plot_compare_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    a, _ = _bench(watts=4.0)
    b, _ = _bench(watts=2.0, measured=False, model_bytes=300)
    path = plot_compare([a, b], tmp_path / "cmp.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_bundle_and_non_bundle_dir_are_clean_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(bench, [str(tmp_path / "nope"), "--power", "none"])
    assert res.exit_code != 0 and "bundle not found" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    (tmp_path / "empty").mkdir()
    res = runner.invoke(bench, [str(tmp_path / "empty"), "--power", "none"])
    assert res.exit_code != 0 and "not an edgekit bundle" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output


def _tiny_bundle(root: Path, task: str) -> Path:
    root.mkdir()
    (root / "model.onnx").write_bytes(b"not really a model")
    manifest = {"schema_version": 1, "edgekit_version": "0.1.0", "name": "tiny", "task": task,
                "target": {"name": "onnx-cpu"},
                "model": {"file": "model.onnx", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime"},
                "files": [file_record(root / "model.onnx", root)]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_embeddings_bundle_and_corrupted_bundle_are_clean_errors(tmp_path):
    runner = CliRunner()
    emb = _tiny_bundle(tmp_path / "emb", "feature-extraction")
    res = runner.invoke(bench, [str(emb), "--power", "none"])
    assert res.exit_code != 0 and "text-generation bundles only" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    gen = _tiny_bundle(tmp_path / "gen", "text-generation")
    (gen / "model.onnx").write_bytes(b"not really a modeL")  # same size, other bytes
    res = runner.invoke(bench, [str(emb.parent / "emb"), "--compare", str(gen), "--power", "none"])
    assert res.exit_code != 0 and "text-generation bundles only" in res.output
    res = runner.invoke(bench, [str(gen), "--power", "none"])
    assert res.exit_code != 0 and "sha256" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_help_explains_estimates():
    res = CliRunner().invoke(bench, ["--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "NOT a measurement" in text and "J/token" in text and "verify stage" in text


@pytest.mark.full
def test_compare_end_to_end_on_real_bundles(stories_build, tmp_path):
    out = tmp_path / "b.json"
    res = CliRunner().invoke(bench, [str(stories_build["int8"]), "--compare", str(stories_build["fp32"]),
                                     "--power", "estimate", "--runs", "1", "--max-tokens", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert [b["precision"] for b in doc["bundles"]] == ["int8-dynamic", "fp32"]
    assert all(b["energy"]["measured"] is False for b in doc["bundles"])
    assert "ESTIMATE" in res.output
