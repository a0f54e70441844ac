"""Everything `edgekit serve` / `edgekit bench` need for energy: the chosen source, an EnergyMeter,
the sampler thread and the power log, started and stopped together.

Units: watts, joules, seconds, hertz. May import: stdlib, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from edgekit.device.power.base import PowerSource
from edgekit.device.power.co2 import GridIntensity, grid_intensity
from edgekit.device.power.meter import EnergyMeter, Sampler, power_record
from edgekit.device.jsonl import JsonlLog


class PowerSession:
    """A source sampled at `hz` into a meter, each reading appended to `log_path` (JSONL, rotated
    at `log_max_bytes`). `battery` returns the battery percent or None (read at most every 10 s).
    `thermal` (a started thermal.ThermalMonitor, or None): each log line carries its latest
    reading (`celsius`, `throttled`, `throttle_flags`; at most one thermal period old)."""

    def __init__(self, source: PowerSource, hz: float = 10.0, log_path: Path | None = None,
                 log_max_bytes: int = 50_000_000, intensity: GridIntensity | None = None,
                 battery: Callable[[], float | None] | None = None, clock: Callable[[], float] = time.monotonic,
                 thermal=None):
        self.source = source
        self.thermal = thermal
        self.intensity = intensity or grid_intensity()
        self.log = JsonlLog(log_path, max_bytes=log_max_bytes)
        self._battery = battery
        self._battery_cache: tuple[float, float | None] = (-1e9, None)
        self.clock = clock
        # a slow source's window edges come from readings: allow two periods and a read between them
        edge = max(1.0, 2.0 / hz + 2 * getattr(source, "read_seconds", 0.0))
        self.meter = EnergyMeter(source, clock=clock, on_reading=self._write, max_edge_seconds=edge)
        self.sampler = Sampler(self.meter, hz)

    def _battery_percent(self) -> float | None:
        if self._battery is None:
            return None
        at, value = self._battery_cache
        now = self.clock()
        if now - at >= 10.0:
            try:
                value = self._battery()
            except OSError:
                value = None
            self._battery_cache = (now, value)
        return value

    def _write(self, reading) -> None:
        if reading.watts is not None:
            record = power_record(reading, self.source, self._battery_percent())
            latest = self.thermal.latest() if self.thermal is not None else None
            if latest is not None:
                record.update(latest.record())
            self.log.write(record)

    def start(self) -> "PowerSession":
        self.sampler.start()
        return self

    def measure_idle(self, seconds: float = 3.0, sleep: Callable[[float], None] = time.sleep) -> float:
        """Mean watts over `seconds` of doing nothing (the sampler must be running); from then on
        every window has this baseline subtracted (stated as idle_watts_subtracted)."""
        self.meter.begin("idle")
        sleep(seconds)
        window = self.meter.end("idle")
        self.meter.idle_watts = window.watts
        return window.watts

    def stop(self) -> None:
        self.sampler.stop()
        self.log.close()

    def describe(self) -> dict:
        d = self.source.describe()
        d.update(hz=1.0 / self.sampler.period_seconds, log=str(self.log.path) if self.log.path else None,
                 idle_watts_subtracted=self.meter.idle_watts, grid=self.intensity.label())
        return d
