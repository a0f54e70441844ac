"""Energy accounting: a sampler thread reading a power source at a fixed rate, and an EnergyMeter
with named windows (begin/end) that turns readings into joules.

Units: seconds (the injected monotonic `clock`), watts, joules. A window on a source with an
energy counter (RAPL) is the counter delta between readings taken at begin and at end: exact for
what the counter measures. On a power-only source (hwmon, PMIC, battery, estimate) the window is
the trapezoidal integral of the readings taken at begin, at end and by the sampler in between.
An optional idle baseline (watts) is subtracted and stated in the result.
Every result names its source and says whether it was measured or estimated.

May import: stdlib, edgekit.device.power.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from edgekit.device.power.base import PowerSource, Sample


@dataclass(frozen=True)
class Reading:
    """A stamped sample: seconds on the meter's clock, unix time, watts (derived from the counter
    for counter sources, None for the very first counter reading), cumulative joules or None."""

    seconds: float
    unix: float
    watts: float | None
    joules: float | None
    battery_percent: float | None = None


@dataclass(frozen=True)
class EnergyWindow:
    """Energy of one window. joules: after subtracting the idle baseline (never below 0)."""

    joules: float
    seconds: float
    source: str
    measured: bool
    method: str  # "counter" or "trapezoid"
    samples: int
    idle_watts_subtracted: float | None = None

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return dict(asdict(self), watts=self.watts)


class EnergyMeter:
    """Readings of one source; windows by name. Thread-safe: the sampler thread and request
    threads call `sample()`, `begin()` and `end()` concurrently. Keeps at most `max_readings`
    readings (at 10 Hz, 100 000 is ~2.8 hours: a longer window loses its early samples)."""

    def __init__(self, source: PowerSource, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, idle_watts: float | None = None,
                 on_reading: Callable[[Reading], None] | None = None, max_readings: int = 100_000):
        self.source = source
        self.clock = clock
        self.wall = wall
        self.idle_watts = idle_watts
        self.on_reading = on_reading
        self.readings: collections.deque[Reading] = collections.deque(maxlen=max_readings)
        self._windows: dict[str, Reading] = {}
        self._lock = threading.Lock()

    @property
    def counter(self) -> bool:
        """Whether the source has an energy counter (decided by its readings)."""
        last = self.readings[-1] if self.readings else None
        return last is not None and last.joules is not None

    def sample(self) -> Reading:
        """Read the source now and keep the stamped reading."""
        before = self.clock()
        raw: Sample = self.source.read()
        now = (before + self.clock()) / 2  # stamped at the middle of the read
        with self._lock:
            watts = raw.watts
            if raw.joules is not None and watts is None and self.readings:
                prev = self.readings[-1]
                dt = now - prev.seconds
                if prev.joules is not None and dt > 0:
                    watts = (raw.joules - prev.joules) / dt
            reading = Reading(now, self.wall(), watts, raw.joules, raw.battery_percent)
            self.readings.append(reading)
        if self.on_reading is not None:
            self.on_reading(reading)
        return reading

    def begin(self, name: str) -> None:
        self._windows[name] = self.sample()

    def end(self, name: str) -> EnergyWindow:
        start = self._windows.pop(name)
        stop = self.sample()
        seconds = stop.seconds - start.seconds
        if start.joules is not None and stop.joules is not None:
            joules, method, n = stop.joules - start.joules, "counter", 2
        else:
            with self._lock:
                points = [(r.seconds, r.watts) for r in self.readings
                          if start.seconds <= r.seconds <= stop.seconds and r.watts is not None]
            points.sort()  # readings from concurrent threads may land a few microseconds out of order
            joules = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(points, points[1:]))
            method, n = "trapezoid", len(points)
        if self.idle_watts is not None:
            joules = max(0.0, joules - self.idle_watts * seconds)
        return EnergyWindow(joules, seconds, self.source.name, self.source.measured, method, n, self.idle_watts)

    def cancel(self, name: str) -> None:
        self._windows.pop(name, None)


class Sampler:
    """A daemon thread calling `meter.sample()` every 1/hz seconds until `stop()`."""

    def __init__(self, meter: EnergyMeter, hz: float = 10.0):
        if not hz > 0:
            raise ValueError(f"sampling rate must be > 0 Hz, got {hz}")
        self.meter = meter
        self.period_seconds = 1.0 / hz
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-power", daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.meter.sample()
            except OSError:  # a sensor read failing now and then must not kill the sampler
                self.errors += 1
            self._stop.wait(self.period_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def energy_usage(window: EnergyWindow, tokens: int, grams) -> dict:
    """The `usage.energy` object of an API response (and request log): joules, watts, joules per
    token (generated tokens; input tokens for embeddings), source, measured, method, idle
    baseline, CO2 grams with the intensity used. `grams` is a co2.GridIntensity."""
    per_token = window.joules / tokens if tokens > 0 else None
    return {
        "joules": round(window.joules, 6),
        "watts": round(window.watts, 4),
        "seconds": round(window.seconds, 6),
        "joules_per_token": None if per_token is None else round(per_token, 6),
        "source": window.source,
        "measured": window.measured,
        "method": window.method,
        "idle_watts_subtracted": window.idle_watts_subtracted,
        "co2_grams": round(grams.grams(window.joules), 9),
        "grid_g_per_kwh": grams.grams_per_kwh,
    }


def power_record(reading: Reading, source: PowerSource, battery_percent: float | None = None) -> dict:
    """One power-log line: unix time, watts, source, measured, battery % (None if no battery)."""
    battery = reading.battery_percent if reading.battery_percent is not None else battery_percent
    return {"unix": round(reading.unix, 3), "watts": None if reading.watts is None else round(reading.watts, 4),
            "source": source.name, "measured": source.measured, "battery_percent": battery}
