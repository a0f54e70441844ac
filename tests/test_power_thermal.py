"""Thermal zone choice, throttle-flag decoding, the thermal monitor's per-request summary, and
slow sources (rpi-pmic) whose window edges come from the sampler (fast tier; fake sysfs trees,
recorded vcgencmd output, fake clocks)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edgekit.device.power.meter import EnergyMeter, Sampler
from edgekit.device.power.pmic import RpiPmicSource
from edgekit.device.power.session import PowerSession
from edgekit.device.power.thermal import (ThermalMonitor, find_zone, flag_names, parse_throttled, start_monitor,
                                          throttled_runner)

from fakes import FakeClock, TraceSource


def thermal_tree(root, zones: dict[str, int]):
    """zones: type -> millidegrees, as /sys/class/thermal/thermal_zoneN/{type,temp}."""
    for i, (kind, milli) in enumerate(zones.items()):
        zone = root / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    return root


class Throttled:
    """A recorded `vcgencmd get_throttled` runner: returns the outputs in turn (the last repeats)."""

    def __init__(self, *outputs: str):
        self.outputs, self.calls = list(outputs), 0

    def __call__(self) -> str:
        self.calls += 1
        return self.outputs[min(self.calls, len(self.outputs)) - 1]


def _missing():
    raise FileNotFoundError("vcgencmd")


def test_zone_is_chosen_by_type(tmp_path):
    pi = thermal_tree(tmp_path / "pi", {"cpu-thermal": 48312})
    x86 = thermal_tree(tmp_path / "x86", {"acpitz": 27800, "INT3400 Thermal": 20000, "x86_pkg_temp": 61000})
    other = thermal_tree(tmp_path / "other", {"soc_max": 40000, "gpu-thermal": 39000})
    assert find_zone(pi) == (pi / "thermal_zone0/temp", "cpu-thermal")
    assert find_zone(x86) == (x86 / "thermal_zone2/temp", "x86_pkg_temp")
    assert find_zone(other)[1] == "soc_max"
    assert find_zone(thermal_tree(tmp_path / "gpu", {"gpu-thermal": 1})) is None
    assert find_zone(tmp_path / "absent") is None


@pytest.mark.parametrize("text, bits, throttled, flags", [
    ("throttled=0x0\n", 0, False, []),
    ("throttled=0x50005\n", 0x50005, True, ["under-voltage", "throttled", "under-voltage-occurred",
                                            "throttled-occurred"]),
    ("throttled=0x80008\n", 0x80008, True, ["soft-temperature-limit", "soft-temperature-limit-occurred"]),
    ("throttled=0x50000\n", 0x50000, False, ["under-voltage-occurred", "throttled-occurred"]),
])
def test_recorded_get_throttled_outputs_decode(text, bits, throttled, flags):
    assert parse_throttled(text) == bits
    assert flag_names(bits) == flags
    clock = FakeClock()
    reading = ThermalMonitor(run=Throttled(text), clock=clock).poll()
    assert reading.bits == bits and reading.throttled is throttled
    assert reading.record()["throttle_flags"] == flags


def test_unparseable_output_is_said_once_and_flags_are_unknown(tmp_path):
    said = []
    monitor = ThermalMonitor(tmp_path, run=Throttled('error=2 error_msg="Command not registered"'), say=said.append)
    assert monitor.poll().bits is None and monitor.poll().bits is None
    assert len(said) == 1 and "unexpected vcgencmd get_throttled output" in said[0]


def test_missing_vcgencmd_means_unknown_flags_said_once_and_never_retried(tmp_path):
    tree = thermal_tree(tmp_path, {"x86_pkg_temp": 55250})
    said, calls = [], []

    def missing():
        calls.append(1)
        _missing()

    monitor = ThermalMonitor(tree, run=missing, say=said.append)
    readings = [monitor.poll() for _ in range(3)]
    assert [r.celsius for r in readings] == [55.25] * 3
    assert all(r.bits is None and r.throttled is None for r in readings)
    assert len(calls) == 1 and said == ["thermal: vcgencmd not found (Raspberry Pi OS only): throttle flags unknown"]
    assert monitor.available and monitor.describe()["zone"] == "x86_pkg_temp"
    assert start_monitor(said.append, root=tmp_path / "none", run=_missing) is None
    assert "no temperature or throttle figures" in said[-1]


def test_real_runner_on_a_stand_in_executable(tmp_path):
    fake = tmp_path / "vcgencmd"
    fake.write_text("#!/bin/sh\n[ \"$1\" = get_throttled ] || exit 3\necho throttled=0x80008\n")
    fake.chmod(0o755)
    assert parse_throttled(throttled_runner(str(fake))()) == 0x80008
    with pytest.raises(FileNotFoundError):
        throttled_runner(str(tmp_path / "absent"))()


def test_summary_says_whether_a_request_ran_throttled(tmp_path):
    tree = thermal_tree(tmp_path, {"cpu-thermal": 50000})
    clock = FakeClock()
    run = Throttled("throttled=0x0", "throttled=0x0", "throttled=0x50005", "throttled=0x50000")
    monitor = ThermalMonitor(tree, run=run, clock=clock)
    monitor.poll()  # t=0, 50.0 C, clear
    clock.advance(0.5)
    mark = monitor.mark()  # request starts at 0.5
    clock.advance(0.5)
    (tree / "thermal_zone0/temp").write_text("61500\n")
    monitor.poll()  # t=1, clear
    clock.advance(1.0)
    monitor.poll()  # t=2, throttled now
    clock.advance(0.2)
    s = monitor.summary(mark)
    assert s == {"celsius_start": 50.0, "celsius_end": 61.5, "throttled": True,
                 "flags": ["under-voltage", "throttled", "under-voltage-occurred", "throttled-occurred"]}
    clock.advance(1.0)
    monitor.poll()  # t=3.2: only the since-boot bits remain
    clock.advance(0.1)
    later = monitor.mark()
    clock.advance(0.3)
    s = monitor.summary(later)  # only the reading before the start covers it
    assert s["throttled"] is False and s["flags"] == ["under-voltage-occurred", "throttled-occurred"]
    assert s["celsius_start"] == s["celsius_end"] == 61.5
    blind = ThermalMonitor(tmp_path / "none", run=_missing, clock=clock, say=lambda line: None)
    assert blind.summary(blind.mark()) == {"celsius_start": None, "celsius_end": None, "throttled": None,
                                           "flags": None}


# Slow sources: window edges from the sampler ---------------------------------------------------

class SlowSource(TraceSource):
    """A power-only source whose read is slow (like vcgencmd), recording which thread read it."""

    read_seconds = 0.024
    slow = True

    def __init__(self, clock, watts_at, pause_seconds: float = 0.0):
        super().__init__(clock, watts_at=watts_at, name="rpi-pmic")
        self.threads: list[str] = []
        self.pause_seconds = pause_seconds

    def read(self):
        self.threads.append(threading.current_thread().name)
        if self.pause_seconds:
            time.sleep(self.pause_seconds)
        return super().read()


def test_pmic_source_is_slow_and_its_meter_takes_edges_from_the_sampler():
    from test_power_sources import PI5_OUTPUT

    source = RpiPmicSource(run=lambda: PI5_OUTPUT)
    assert source.slow and EnergyMeter(source).sampler_edges
    assert not EnergyMeter(TraceSource(FakeClock(), watts_at=lambda t: 1.0)).sampler_edges


def test_a_slow_window_never_reads_and_integrates_the_sampler_readings():
    clock = FakeClock()
    source = SlowSource(clock, watts_at=lambda t: 2.0 + t)  # linear: trapezoids are exact
    meter = EnergyMeter(source, clock=clock)
    for _ in range(3):  # sampler readings at 0.0, 0.1, 0.2
        meter.sample()
        clock.advance(0.1)
    clock.advance(-0.05)
    reads = source.reads
    meter.begin("r")  # t0 = 0.25: between readings, interpolated
    assert source.reads == reads
    clock.advance(0.05)
    for _ in range(5):  # readings at 0.3 .. 0.7
        meter.sample()
        clock.advance(0.1)
    clock.advance(-0.07)
    reads = source.reads
    w = meter.end("r")  # t1 = 0.73: the tail from 0.7 holds the 0.7 reading
    assert source.reads == reads
    exact = (2.0 * 0.73 + 0.73 ** 2 / 2) - (2.0 * 0.25 + 0.25 ** 2 / 2)
    held_error = 0.03 * 0.03 / 2  # the held tail misses the rise over its 0.03 s
    assert w.edges == "sampler" and w.method == "trapezoid" and w.measured and w.samples == 5
    assert w.seconds == pytest.approx(0.48)
    assert w.held_seconds == pytest.approx(0.03)
    assert w.joules == pytest.approx(exact - held_error, rel=1e-9)


def test_a_slow_window_shorter_than_a_period_holds_the_last_reading_and_stale_readings_give_none():
    clock = FakeClock()
    meter = EnergyMeter(SlowSource(clock, watts_at=lambda t: 4.0), clock=clock, max_edge_seconds=0.5)
    meter.sample()
    clock.advance(0.02)
    meter.begin("short")
    clock.advance(0.05)
    w = meter.end("short")
    assert w.joules == pytest.approx(0.2) and w.held_seconds == pytest.approx(0.05) and w.samples == 1
    clock.advance(1.0)  # the sampler stopped a second ago: no reading to take the edges from
    result, window = meter.measure("stale", lambda: 7)
    assert result == 7 and window is None and "is the sampler running" in meter.last_error
    empty = EnergyMeter(SlowSource(clock, watts_at=lambda t: 4.0), clock=clock)
    assert empty.measure("none", lambda: 8) == (8, None)


def test_no_read_happens_in_the_request_thread_with_a_running_sampler():
    source = SlowSource(time.monotonic, watts_at=lambda t: 5.0, pause_seconds=0.024)
    meter = EnergyMeter(source)
    sampler = Sampler(meter, hz=20).start()
    try:
        time.sleep(0.1)
        started = time.monotonic()
        result, w = meter.measure("req", lambda: time.sleep(0.3) or "done")
        took = time.monotonic() - started
    finally:
        sampler.stop()
    assert result == "done" and w is not None and w.edges == "sampler"
    assert set(source.threads) == {"edgekit-power"}
    assert took < 0.3 + 0.02  # begin/end add no read (a read here takes 24 ms)
    assert w.joules == pytest.approx(5.0 * w.seconds, rel=1e-6)
    assert w.held_seconds <= 0.05 + 0.03 + 0.01  # at most one period plus one read (+ scheduling slack)


def test_sampler_keeps_its_grid_when_reads_are_slow():
    source = SlowSource(time.monotonic, watts_at=lambda t: 1.0, pause_seconds=0.03)
    meter = EnergyMeter(source)
    sampler = Sampler(meter, hz=10).start()
    time.sleep(1.05)
    sampler.stop()
    stamps = [r.seconds for r in meter.readings]
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    assert len(stamps) >= 9  # a wait after each read would give 1.05 / 0.13 = 8
    assert gaps[len(gaps) // 2] == pytest.approx(0.1, abs=0.02)


def test_power_log_lines_carry_the_latest_thermal_reading(tmp_path):
    tree = thermal_tree(tmp_path / "sys", {"cpu-thermal": 71234})
    monitor = ThermalMonitor(tree, run=Throttled("throttled=0x80008"), hz=50).start()
    session = PowerSession(TraceSource(time.monotonic, watts_at=lambda t: 3.5), hz=50,
                           log_path=tmp_path / "power.jsonl", thermal=monitor).start()
    time.sleep(0.2)
    session.stop()
    monitor.stop()
    lines = [json.loads(x) for x in (tmp_path / "power.jsonl").read_text().splitlines()]
    assert len(lines) >= 3
    assert all(x["celsius"] == 71.23 and x["throttled"] is True
               and x["throttle_flags"] == ["soft-temperature-limit", "soft-temperature-limit-occurred"]
               for x in lines)
