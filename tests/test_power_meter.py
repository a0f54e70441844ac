"""EnergyMeter, Sampler, power log, CO2 and source probing against synthetic traces, a fake clock
and fake sysfs trees (fast tier)."""

from __future__ import annotations

import json
import math
import time

import pytest

from edgekit.device.power.base import SourceUnavailable
from edgekit.device.power.co2 import grid_intensity
from edgekit.device.power.meter import EnergyMeter, Sampler
from edgekit.device.power.probe import Machine, auto_order, choose
from edgekit.device.power.session import PowerSession
from edgekit.device.jsonl import JsonlLog

from fakes import FakeClock, TraceSource


def _watts(t: float) -> float:
    return 6.0 + 3.0 * math.sin(2 * math.pi * t / 4.0) + 0.5 * t


def _energy(t: float) -> float:  # exact integral of _watts from 0
    return 6.0 * t + 3.0 * 4.0 / (2 * math.pi) * (1 - math.cos(2 * math.pi * t / 4.0)) + 0.25 * t * t


def test_trapezoid_window_is_within_half_a_percent_of_the_exact_integral():
    clock = FakeClock(0.37)
    meter = EnergyMeter(TraceSource(clock, watts_at=_watts), clock=clock)
    meter.begin("r")
    for _ in range(97):  # ~10 Hz sampler, window 9.75 s, boundaries off the sample grid
        clock.advance(0.1)
        meter.sample()
    clock.advance(0.05)
    w = meter.end("r")
    exact = _energy(clock.t) - _energy(0.37)
    assert w.method == "trapezoid" and w.measured and w.source == "fake"
    assert w.seconds == pytest.approx(9.75)
    assert abs(w.joules - exact) / exact < 0.005
    assert w.samples == 99
    assert w.watts == pytest.approx(w.joules / w.seconds)


def test_counter_window_is_exact_and_readings_carry_derived_watts():
    clock = FakeClock(1.0)
    meter = EnergyMeter(TraceSource(clock, energy_at=_energy), clock=clock)
    meter.begin("r")
    for _ in range(3):
        clock.advance(0.25)
        meter.sample()
    clock.advance(0.6)
    w = meter.end("r")
    assert w.method == "counter"
    assert w.joules == pytest.approx(_energy(2.35) - _energy(1.0), rel=1e-12)
    r1, r2 = meter.readings[0], meter.readings[1]
    assert r1.watts is None  # the first counter reading has no interval yet
    assert r2.watts == pytest.approx((_energy(1.25) - _energy(1.0)) / 0.25)


def test_overlapping_windows_and_idle_baseline():
    clock = FakeClock()
    meter = EnergyMeter(TraceSource(clock, watts_at=lambda t: 5.0), clock=clock, idle_watts=2.0)
    meter.begin("a")
    clock.advance(1.0)
    meter.begin("b")
    clock.advance(3.0)
    a, b = meter.end("a"), meter.end("b")
    # overlapping windows split the power (above idle) evenly while both are open: 1 s alone + 3 s shared
    assert a.joules == pytest.approx((5.0 - 2.0) * (1.0 + 3.0 / 2)) and a.idle_watts_subtracted == 2.0
    assert b.joules == pytest.approx((5.0 - 2.0) * 3.0 / 2)
    assert a.joules + b.joules == pytest.approx((5.0 - 2.0) * 4.0)  # never more than was used
    assert (a.shared_with, b.shared_with) == (2, 2)
    assert (a.window_joules, b.window_joules) == (pytest.approx(12.0), pytest.approx(9.0))
    meter.idle_watts = 9.0  # a baseline above the reading never gives negative energy
    meter.begin("c")
    clock.advance(1.0)
    assert meter.end("c").joules == 0.0


def test_sampler_thread_samples_at_its_rate_and_stops():
    meter = EnergyMeter(TraceSource(time.monotonic, watts_at=lambda t: 3.0))
    sampler = Sampler(meter, hz=100).start()
    time.sleep(0.3)
    sampler.stop()
    n = len(meter.readings)
    assert 10 <= n <= 40
    time.sleep(0.05)
    assert len(meter.readings) == n
    with pytest.raises(ValueError):
        Sampler(meter, hz=0)


def test_power_session_writes_a_power_log_line_per_reading(tmp_path):
    source = TraceSource(time.monotonic, watts_at=lambda t: 4.25, measured=False, name="estimate")
    session = PowerSession(source, hz=50, log_path=tmp_path / "power.jsonl", battery=lambda: 81.0).start()
    time.sleep(0.2)
    session.stop()
    lines = [json.loads(x) for x in (tmp_path / "power.jsonl").read_text().splitlines()]
    assert len(lines) >= 3
    assert all(x["watts"] == 4.25 and x["source"] == "estimate" and x["measured"] is False
               and x["battery_percent"] == 81.0 for x in lines)
    assert lines == sorted(lines, key=lambda x: x["unix"])


def test_jsonl_log_rotates_by_size_without_losing_or_splitting_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    log = JsonlLog(path, max_bytes=400, backups=2)
    for i in range(100):
        log.write({"i": i, "pad": "x" * 20})
    log.close()
    files = [path, path.with_name("p.jsonl.1"), path.with_name("p.jsonl.2")]
    assert all(f.is_file() and f.stat().st_size <= 400 for f in files)
    assert not path.with_name("p.jsonl.3").exists()
    seen = [json.loads(x)["i"] for f in reversed(files) for x in f.read_text().splitlines()]
    assert seen == list(range(seen[0], 100))  # the newest lines, in order, each whole


def test_co2_default_country_and_explicit_intensity():
    world = grid_intensity()
    assert world.grams_per_kwh == 475 and "world average" in world.label()
    assert world.grams(3.6e6) == pytest.approx(475.0)
    assert grid_intensity(country="fra").grams_per_kwh < 100
    assert grid_intensity(120.0, country="FRA").label().startswith("120 g/kWh")
    with pytest.raises(ValueError, match="no grid intensity for country"):
        grid_intensity(country="XXX")


def _fake_rapl(root, energy_uj: int) -> None:
    zone = root / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")


def _no_vcgencmd():
    raise FileNotFoundError("vcgencmd")


def test_auto_probe_logs_each_skipped_source_and_falls_back_to_an_estimate(tmp_path):
    lines = []
    machine = Machine.under(tmp_path, vcgencmd=_no_vcgencmd, cpu_fraction=lambda: 0.5, battery_info=lambda: None,
                            arch="x86_64")  # an x86 machine without sensors (on an ARM board: no estimate)
    source = choose("auto", machine, log=lines.append)
    assert source.name == "estimate" and source.measured is False
    assert source.read().watts > 0
    skipped = [x for x in lines if x.startswith("power: skipped")]
    assert [x.split()[2].rstrip(":") for x in skipped] == ["rapl", "hwmon", "jetson", "rpi-pmic", "power-supply"]
    assert all(len(x.split(": ", 2)[2]) > 5 for x in skipped)  # each with a reason
    assert "ESTIMATE" in lines[-1]


def test_auto_probe_prefers_the_targets_order_and_a_forced_source_must_work(tmp_path):
    _fake_rapl(tmp_path, 1_000_000)
    machine = Machine.under(tmp_path, vcgencmd=_no_vcgencmd, cpu_fraction=lambda: 0.1, battery_info=lambda: None)
    assert choose("auto", machine, log=lambda x: None).name == "rapl"
    assert auto_order(["rpi-pmic", "estimate", "hwmon"])[:3] == ["rpi-pmic", "hwmon", "rapl"]
    assert auto_order(["estimate"])[-1] == "estimate"
    assert choose("none", machine) is None
    with pytest.raises(SourceUnavailable):
        choose("hwmon", machine)


def test_counter_watts_come_from_readings_far_enough_apart():
    """A RAPL-like counter ticking every millisecond: a request's begin reading 0.4 ms after a
    sampler reading must not turn into a 0 W or 100 W spike in the power log."""
    clock = FakeClock(1.0004)
    meter = EnergyMeter(TraceSource(clock, energy_at=lambda t: 10.0 * math.floor(t * 1000) / 1000), clock=clock)
    for step in (0.0, 0.0004, 0.0995, 0.0004, 0.0004, 0.1, 0.0996):
        clock.advance(step)
        meter.sample()
    rates = [r.watts for r in meter.readings if r.watts is not None]
    assert rates and all(9.5 <= w <= 10.5 for w in rates)
    assert sum(r.watts is None for r in meter.readings) >= 3  # the close readings carry no rate


def test_windows_longer_than_the_kept_readings_still_integrate_everything():
    clock = FakeClock()
    meter = EnergyMeter(TraceSource(clock, watts_at=lambda t: 5.0), clock=clock, max_readings=10)
    meter.begin("long")
    for _ in range(200):
        clock.advance(0.01)
        meter.sample()
    w = meter.end("long")
    assert len(meter.readings) == 10
    assert w.joules == pytest.approx(5.0 * 2.0) and w.samples == 201  # end() reads at the last sample's instant


def test_measure_survives_a_failing_sensor_and_counts_it():
    clock = FakeClock()
    source = TraceSource(clock, watts_at=lambda t: 1.0)
    meter = EnergyMeter(source, clock=clock)

    def broken():
        raise OSError("i2c timeout")

    result, window = meter.measure("ok", lambda: 42)
    assert result == 42 and window is not None and meter.errors == 0
    source.read = broken
    result, window = meter.measure("bad", lambda: 43)
    assert result == 43 and window is None and meter.errors == 1 and meter.last_error == "i2c timeout"


def test_rotation_after_the_live_log_was_deleted_keeps_writing_to_it(tmp_path):
    path = tmp_path / "p.jsonl"
    log = JsonlLog(path, max_bytes=100)
    log.write({"a": "x" * 60})
    path.unlink()  # someone removed the live file; its descriptor still points at the deleted inode
    log.write({"b": "y" * 60})  # would pass max_bytes: rotates, and the rename source is gone
    log.write({"c": 1})
    log.close()
    assert [json.loads(x) for x in path.read_text().splitlines()][-1] == {"c": 1}
