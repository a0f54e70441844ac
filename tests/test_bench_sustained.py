"""`edgekit bench --sustained`: intervals of speed, energy, temperature and throttle state, on a fake
clock with a model that heats a fake thermal zone and slows down once throttled (no real minutes)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgekit.cli.bench import bench
from edgekit.device.power.meter import EnergyMeter
from edgekit.device.power.thermal import ThermalMonitor
from edgekit.device.sustained import format_sustained_table, run_sustained

from fakes import FakeClock, TraceSource
from test_bench_cli import STEP, TimedModel, _loaded
from test_power_thermal import thermal_tree


class Board:
    """A fanless board: 50 C + 0.5 C per fake second; above 80 C the firmware sets the soft
    temperature limit (0x80008) and the model takes twice as long per token. The model's forward
    calls `tick()`, which polls the monitor once a fake second (the monitor's thread, in real use)."""

    def __init__(self, tmp_path, clock):
        self.clock = clock
        self.tree = thermal_tree(tmp_path / "thermal", {"cpu-thermal": 50000})
        self.monitor = ThermalMonitor(self.tree, run=self.throttled, clock=clock)
        self.polled = -1.0

    def celsius(self) -> float:
        return 50.0 + 0.5 * self.clock()

    def throttled(self) -> str:
        return "throttled=0x80008" if self.celsius() > 80.0 else "throttled=0x0"

    def tick(self) -> None:
        if self.clock() - self.polled >= 1.0:
            (self.tree / "thermal_zone0/temp").write_text(f"{round(self.celsius() * 1000)}\n")
            self.monitor.poll()
            self.polled = self.clock()


class HotModel(TimedModel):
    def __init__(self, board, clock):
        super().__init__([2, 3, 4, 5], clock)
        self.board = board

    def forward(self, token_ids, cache, last_only=False):
        self.board.tick()
        if self.board.celsius() > 80.0:
            self.clock.advance(self.seconds * (2 if len(token_ids) > 1 else 1))  # twice as slow
        return super().forward(token_ids, cache, last_only)


def _run(tmp_path, seconds=120.0, interval=30.0, meter=True):
    clock = FakeClock()
    board = Board(tmp_path, clock)
    loaded = _loaded(clock)
    loaded.model = HotModel(board, clock)
    m = EnergyMeter(TraceSource(clock, watts_at=lambda t: 5.0), clock=clock) if meter else None
    lines = []
    result, records = run_sustained(loaded, seconds, interval, m, board.monitor, max_tokens=8, clock=clock,
                                    say=lines.append)
    return result, records, lines


def test_intervals_show_the_board_heating_throttling_and_slowing(tmp_path):
    result, records, lines = _run(tmp_path)
    rows = result["intervals"]
    assert [r["interval"] for r in rows] == [0, 1, 2, 3] and [r["start_seconds"] for r in rows] == [0, 30, 60, 90]
    assert len(lines) == 4  # a progress line per interval
    assert 120.0 <= result["elapsed_seconds"] < 120.0 + 8 * 2 * STEP * 2  # overshoot: at most one generation
    assert result["generations"] == len(records) == sum(r["generations"] for r in rows)
    assert rows[0]["celsius_start"] == pytest.approx(50.0) and rows[0]["throttled"] is False
    assert rows[0]["flags"] == []
    assert rows[1]["throttled"] is False  # 80 C is crossed at 60 s: the next interval's first poll sees it
    assert rows[2]["throttled"] is True and 79.0 < rows[2]["celsius_start"] <= 80.0  # the poll before it began
    assert rows[3]["throttled"] is True and "soft-temperature-limit" in rows[3]["flags"]
    assert rows[3]["celsius_end"] > rows[3]["celsius_start"] > rows[0]["celsius_end"]
    first, last = rows[0], rows[3]
    assert last["decode_tokens_per_second"] == pytest.approx(first["decode_tokens_per_second"] / 2, rel=1e-6)
    assert first["decode_tokens_per_second"] == pytest.approx(1 / STEP, rel=1e-6)
    assert last["joules_per_token"] == pytest.approx(2 * first["joules_per_token"], rel=1e-3)
    for r in rows:  # a constant 5 W source: joules = 5 W x generation time
        assert r["joules"] == pytest.approx(5.0 * r["generation_seconds"], rel=1e-6)
        assert r["watts"] == pytest.approx(5.0)
        assert r["measured"] is True
    table = format_sustained_table(result)
    assert "YES soft-temperature-limit" in table and "x0.50" in table and "J/token x2.00" in table


def test_without_a_power_source_or_thermal_the_intervals_still_time_generation(tmp_path):
    clock = FakeClock()
    result, records = run_sustained(_loaded(clock), 1.0, 0.25, None, None, max_tokens=8, clock=clock)
    rows = result["intervals"]
    assert len(rows) == 4 and all(r["joules"] is None and r["throttled"] is None for r in rows)
    assert all(r["decode_tokens_per_second"] == pytest.approx(1 / STEP) for r in rows)
    assert "-" in format_sustained_table(result).splitlines()[2]
    with pytest.raises(ValueError):
        run_sustained(_loaded(clock), 0.0, 1.0)


def test_sustained_takes_one_bundle(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    res = CliRunner().invoke(bench, [str(tmp_path / "a"), "--compare", str(tmp_path / "b"), "--sustained", "1",
                                     "--power", "none"])
    assert res.exit_code != 0 and "--sustained" in res.output and "one bundle" in res.output
    assert "Traceback" not in res.output
