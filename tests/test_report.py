"""Fast tier: `edgekit report` on synthetic request and power logs with known figures."""

from __future__ import annotations

import json
import math
import sys

import pytest
from click.testing import CliRunner

from edgekit.device.power.co2 import grid_intensity
from edgekit.device.report import format_table, read_logs, summarize
from edgekit.cli.report import report


def _energy(joules, seconds, tokens, source="rapl", measured=True):
    return {"joules": joules, "seconds": seconds, "watts": joules / seconds, "joules_per_token": joules / tokens if tokens else None,
            "source": source, "measured": measured, "method": "counter" if measured else "trapezoid",
            "idle_watts_subtracted": None, "co2_grams": joules / 3.6e6 * 475, "grid_g_per_kwh": 475}


def _req(start, seconds, prompt, completion, status=200, energy=None):
    r = {"time": f"2026-11-24T17:30:{int(start) % 60:02d}Z", "start_unix": start, "route": "/v1/completions",
         "status": status, "seconds": seconds, "prompt_tokens": prompt, "completion_tokens": completion,
         "prefill_ms": 10.0, "decode_tokens_per_second": 100.0}
    if energy:
        r["energy"] = energy
    return r


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


@pytest.fixture
def logs(tmp_path):
    """A rotated request log pair (the second with a torn last line) and a power log.
    Energy: 10 J measured + 5 J estimate + 3 J measured = 18 J over 4 s of energy windows (the
    first request's wall time, 2.5 s, includes 0.5 s of queueing); the 3 J request generated no
    tokens, so J/token is 15 J / 75 tokens."""
    old = _write(tmp_path / "requests.jsonl.1", [
        _req(1000.0, 2.5, 10, 50, energy=_energy(10.0, 2.0, 50)),
        _req(1003.0, 1.0, 5, 25, energy=_energy(5.0, 1.0, 25, source="estimate", measured=False)),
    ])
    new = _write(tmp_path / "requests.jsonl", [
        {"time": "2026-11-24T17:30:04Z", "route": "/v1/completions", "status": 400, "seconds": 0.001},
        _req(1005.0, 1.0, 4, 0, energy=_energy(3.0, 1.0, 0)),
        {"time": "2026-11-24T17:30:06Z", "route": "/v1/chat/completions", "status": 503, "seconds": 0.002},
    ], tail='{"time": "2026-11-24T17:30:07Z", "route": "/v1/compl')
    power = _write(tmp_path / "power.jsonl", [
        {"unix": 999.0, "watts": None, "source": "rapl", "measured": True, "battery_percent": None},
        {"unix": 1002.0, "watts": 6.0, "source": "rapl", "measured": True, "battery_percent": None},
        {"unix": 1000.0, "watts": 2.0, "source": "rapl", "measured": True, "battery_percent": None},
        {"unix": 1001.0, "watts": 4.0, "source": "rapl", "measured": True, "battery_percent": None},
        {"unix": 1004.0, "watts": 6.0, "source": "rapl", "measured": True, "battery_percent": None},
    ])
    return [old, new, power]


def test_summary_figures(logs):
    data = read_logs(logs)
    assert len(data.requests) == 5 and data.skipped == 1 and [s["unix"] for s in data.power] == [1000, 1001, 1002, 1004]
    s = summarize(data, grid_intensity())
    assert s["requests"] == {"total": 5, "by_status": {"2xx": 3, "4xx": 1, "5xx": 1}}
    assert s["tokens"] == {"prompt": 19, "completion": 75}
    e = s["energy"]
    assert e["requests"] == 3 and e["joules"] == pytest.approx(18.0)
    assert e["joules_per_token"] == pytest.approx(15.0 / 75) and e["generation_requests"] == 2
    assert e["avg_watts"] == pytest.approx(18.0 / 4.0)
    assert e["co2_grams"] == pytest.approx(18.0 / 3.6e6 * 475)
    assert e["grid_intensity"]["grams_per_kwh"] == 475
    assert e["measured_share"] == pytest.approx(13.0 / 18.0) and e["measured_label"] == "72% measured, 28% ESTIMATE"
    assert e["sources"] == ["estimate", "rapl"]
    assert s["peak_watts"]["watts"] == 6.0 and s["peak_watts"]["from"] == "power log samples"
    assert s["sources"] == [{"source": "estimate", "measured": False}, {"source": "rapl", "measured": True}]
    assert s["period"] == {"first": "2026-11-24T17:30:04Z", "last": "2026-11-24T17:30:45Z"}
    json.dumps(s, allow_nan=False)


def test_power_log_trapezoid(logs):
    p = summarize(read_logs(logs[2:]), grid_intensity())["power_log"]
    # (2+4)/2*1 + (4+6)/2*1 + (6+6)/2*2 = 3 + 5 + 12
    assert p["joules"] == pytest.approx(20.0) and p["duration_seconds"] == 4.0
    assert p["mean_watts"] == pytest.approx(5.0) and p["samples"] == 4 and p["gaps"] == 0


def test_power_log_gap_is_not_bridged(tmp_path):
    samples = [{"unix": 1000.0 + t, "watts": 5.0, "source": "hwmon", "measured": True} for t in (0, 1, 2, 500, 501)]
    p = summarize(read_logs([_write(tmp_path / "p.jsonl", samples)]), grid_intensity())["power_log"]
    assert p["gaps"] == 1 and p["joules"] == pytest.approx(15.0) and p["covered_seconds"] == 3.0
    assert p["duration_seconds"] == 501.0 and p["mean_watts"] == pytest.approx(5.0)


def test_estimate_only_table_says_estimate(tmp_path):
    path = _write(tmp_path / "r.jsonl", [
        _req(1000.0, 2.0, 3, 20, energy=_energy(4.0, 2.0, 20, source="estimate", measured=False)),
        _req(1003.0, 1.0, 3, 10, energy=_energy(3.0, 1.0, 10, source="estimate", measured=False)),
    ])
    s = summarize(read_logs([path]), grid_intensity(country="fra"))
    assert s["energy"]["measured_label"] == "0% measured (estimate)"
    assert s["peak_watts"] == {"watts": 3.0, "from": "highest per-request average (no power log)",
                               "sources": ["estimate"], "measured": False}
    table = format_table(s)
    assert "measured]" not in table and "0% measured (estimate)" in table
    for label in ("energy (requests)", "energy per token", "average power", "peak power"):
        line = next(ln for ln in table.splitlines() if ln.startswith(label))
        assert "[ESTIMATE, estimate]" in line, line
    co2 = next(ln for ln in table.splitlines() if ln.startswith("CO2"))
    assert "60 g/kWh, country FRA" in co2 and f"{7.0 / 3.6e6 * 60:.4g} g" in co2


def test_cli_writes_html_json_and_plots(logs, tmp_path):
    pytest.importorskip("matplotlib")  # the `bench` extra; without it see the test below
    out = tmp_path / "out"
    res = CliRunner().invoke(report, [*map(str, logs), "--out", str(out), "--grid-intensity", "100"])
    assert res.exit_code == 0, res.output
    assert "[mixed measured/ESTIMATE, estimate, rapl]" in res.output and "100 g/kWh, --grid-intensity" in res.output
    assert "skipped 1" in res.output
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "&lt;" not in page.split("<pre>")[0]
    assert (out / "power.png").stat().st_size > 1000 and (out / "joules_per_token.png").is_file()
    summary = json.loads((out / "report.json").read_text())
    assert summary["energy"]["joules"] == pytest.approx(18.0)
    assert math.isclose(summary["energy"]["co2_grams"], 18.0 / 3.6e6 * 100)


def test_cli_without_matplotlib_still_writes_table_and_page(logs, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    res = CliRunner().invoke(report, [*map(str, logs), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "pip install matplotlib" in res.output and "energy per token" in res.output
    assert "data:image/png" not in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.parametrize("content", ["", "not json\n{\"torn\": \n", '{"something": "else"}\n'])
def test_cli_no_valid_lines_is_a_clean_error(tmp_path, content):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    res = CliRunner().invoke(report, [str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert "nothing to report" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_cli_bad_country_is_a_clean_error(logs, tmp_path):
    res = CliRunner().invoke(report, [str(logs[0]), "--country", "XXX", "--no-plots", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert "no grid intensity for country 'XXX'" in res.output and "Traceback" not in res.output
