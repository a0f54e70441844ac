"""Energy accounting: a sampler thread reading a power source at a fixed rate, and an EnergyMeter
with named windows (begin/end) that turns readings into joules.

Units: seconds (the injected monotonic `clock`), watts, joules. A window on a source with an
energy counter (RAPL) is the counter delta between readings taken at begin and at end: exact for
what the counter measures. On a power-only source (hwmon, PMIC, battery, estimate) the window is
the trapezoidal integral of the readings taken at begin, at end and by the sampler in between.
An optional idle baseline (watts) is subtracted and stated in the result.
Overlapping windows (serve --parallel: requests decoding together) share the power: each stretch
between two readings is split evenly among the windows open during it, so the windows' joules add
up to the energy used, never more; such a window states `shared_with` (the most windows open at
once) and `window_joules` (the whole window's energy, before sharing). A window alone is as before.
Every result names its source and says whether it was measured or estimated.

A slow source (PowerSource.slow: a read forks `vcgencmd`, ~24 ms) is never read at a window's
edges: begin() and end() only note the clock, and the window integrates the sampler's readings.
The head (from begin to the first reading inside) is interpolated between the last reading
before begin and that first reading; the tail (from the last reading to end) holds the last
reading's watts, so end() returns at once instead of waiting up to a sampling period for the next
reading. The seconds covered by a held value are stated (`held_seconds`, at most one sampling
period plus one read at each edge). `edges` says which way a window was taken: "read" or "sampler".

May import: stdlib, edgekit.device.power.
"""

from __future__ import annotations

import collections
import sys
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
    edges: str = "read"  # "read": the source was read at begin and end; "sampler": see the module doc
    held_seconds: float | None = None  # "sampler" edges: seconds integrated at a held (not bracketed) value
    shared_with: int = 1  # the most windows open at once during this one (joules: its even share)
    window_joules: float | None = None  # shared windows: the whole window's energy before sharing

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return dict(asdict(self), watts=self.watts)


@dataclass
class _Open:
    """An open window: its first reading, the last reading integrated so far, joules so far."""

    start: Reading
    last: Reading
    joules: float = 0.0
    readings: int = 1
    share: float = 0.0  # joules split evenly with the windows open at the same time
    share_seconds: float = 0.0  # seconds / windows open (for the idle baseline's share)
    most: int = 1  # the most windows open at once


@dataclass
class _Edged:
    """An open window of a slow source: begin's instant, the last reading before it (None if none),
    the last reading inside it (None until one arrives), joules so far, seconds held so far."""

    t0: float
    prev: Reading | None
    last: Reading | None = None
    joules: float = 0.0
    readings: int = 0
    held_seconds: float = 0.0
    share: float = 0.0
    share_seconds: float = 0.0
    most: int = 1


class NoReading(OSError):
    """A sampler-edged window has no recent reading to take its edges from."""


def _interpolate(a: Reading, b: Reading, t: float) -> float:
    """Watts at `t` on the line through readings a and b."""
    if b.seconds <= a.seconds:
        return b.watts
    return a.watts + (b.watts - a.watts) * (t - a.seconds) / (b.seconds - a.seconds)


class EnergyMeter:
    """Readings of one source; windows by name. Thread-safe: the sampler thread and request
    threads call `sample()`, `begin()` and `end()` concurrently. Each open window integrates the
    readings as they arrive (no history is needed, so a window can be any length); `readings`
    keeps the last `max_readings` for /metrics and tests.

    Counter sources: a reading's `watts` is the counter rate since the previous reading at least
    `min_rate_seconds` earlier (else None), so begin/end readings taken a fraction of a
    millisecond after a sampler reading do not yield meaningless rates from a counter that
    updates about once a millisecond; windows still use the exact counter delta.

    Slow sources (`sampler_edges`, default: the source's `slow`) get sampler-edged windows (module
    doc); a window whose edge is more than `max_edge_seconds` from any reading (the sampler is not
    running or keeps failing) has no energy: NoReading, which measure() turns into None."""

    def __init__(self, source: PowerSource, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, idle_watts: float | None = None,
                 on_reading: Callable[[Reading], None] | None = None, max_readings: int = 1000,
                 min_rate_seconds: float = 0.02, sampler_edges: bool | None = None,
                 max_edge_seconds: float = 1.0):
        self.source = source
        if sampler_edges is None:
            sampler_edges = bool(getattr(source, "slow", False))
        self.sampler_edges = sampler_edges
        self.max_edge_seconds = max_edge_seconds
        self._last_watts: Reading | None = None
        self.clock = clock
        self.wall = wall
        self.idle_watts = idle_watts
        self.on_reading = on_reading
        self.min_rate_seconds = min_rate_seconds
        self.readings: collections.deque[Reading] = collections.deque(maxlen=max_readings)
        self.errors = 0
        self.last_error: str | None = None
        self._rate_ref: Reading | None = None
        self._windows: dict[str, _Open] = {}
        self._lock = threading.Lock()

    def sample(self) -> Reading:
        """Read the source now, keep the stamped reading and add it to every open window."""
        before = self.clock()
        raw: Sample = self.source.read()
        now = (before + self.clock()) / 2  # stamped at the middle of the read
        with self._lock:
            watts = raw.watts
            if raw.joules is not None and watts is None:
                ref = self._rate_ref
                if ref is None or ref.joules is None:
                    self._rate_ref = Reading(now, 0.0, None, raw.joules)
                elif now - ref.seconds >= self.min_rate_seconds:
                    watts = (raw.joules - ref.joules) / (now - ref.seconds)
                    self._rate_ref = Reading(now, 0.0, None, raw.joules)
            reading = Reading(now, self.wall(), watts, raw.joules, raw.battery_percent)
            self.readings.append(reading)
            n = len(self._windows)
            for w in self._windows.values():
                if isinstance(w, _Edged):
                    self._add_edged(w, reading, n)
                else:
                    self._add(w, reading, n)
            if watts is not None and (self._last_watts is None or now > self._last_watts.seconds):
                self._last_watts = reading
        if self.on_reading is not None:
            self.on_reading(reading)
        return reading

    @staticmethod
    def _add(w: _Open, r: Reading, n: int = 1) -> None:
        """From the window's last reading to `r`, with `n` windows open: the trapezoid (power sources)
        or counter delta (energy counters), and its 1/n share (readings from concurrent threads can
        arrive microseconds out of order: an older one is skipped)."""
        if r.seconds <= w.last.seconds:
            return
        dt = r.seconds - w.last.seconds
        if r.joules is not None and w.last.joules is not None:
            part = r.joules - w.last.joules
        elif r.watts is not None and w.last.watts is not None:
            part = dt * (w.last.watts + r.watts) / 2
            w.joules += part
            w.readings += 1
        else:
            return
        w.share, w.share_seconds, w.most = w.share + part / n, w.share_seconds + dt / n, max(w.most, n)
        w.last = r

    @staticmethod
    def _add_edged(w: _Edged, r: Reading, n: int = 1) -> None:
        """A sampler reading for a slow source's window: before begin it becomes `prev` (a read
        that started before begin may arrive after it); the first one inside closes the head."""
        if r.watts is None:
            return
        if r.seconds <= w.t0:
            if w.prev is None or r.seconds > w.prev.seconds:
                w.prev = r
            return
        if w.last is None:
            if w.prev is not None:
                head = _interpolate(w.prev, r, w.t0)
            else:  # nothing before begin: hold the first reading back to begin
                head = r.watts
                w.held_seconds += r.seconds - w.t0
            part, dt = (r.seconds - w.t0) * (head + r.watts) / 2, r.seconds - w.t0
        elif r.seconds > w.last.seconds:
            part, dt = (r.seconds - w.last.seconds) * (w.last.watts + r.watts) / 2, r.seconds - w.last.seconds
        else:
            return
        w.joules += part
        w.share, w.share_seconds, w.most = w.share + part / n, w.share_seconds + dt / n, max(w.most, n)
        w.last = r
        w.readings += 1

    def begin(self, name: str) -> None:
        if self.sampler_edges:
            with self._lock:
                t0 = self.clock()
                prev = self._last_watts
                if prev is not None and t0 - prev.seconds > self.max_edge_seconds:
                    prev = None  # stale: the first reading inside is held back to begin instead
                self._windows[name] = _Edged(t0, prev)
            return
        reading = self.sample()
        with self._lock:
            self._windows[name] = _Open(reading, reading)

    def _end_edged(self, name: str) -> EnergyWindow:
        with self._lock:
            t1 = self.clock()
            n = len(self._windows)
            w = self._windows.pop(name)
        last = w.last or w.prev
        if last is None or t1 - last.seconds > self.max_edge_seconds:
            raise NoReading(f"no {self.source.name} reading within {self.max_edge_seconds:g} s of the window's "
                            "end (is the sampler running?)")
        tail = max(0.0, t1 - max(last.seconds, w.t0))
        joules, seconds = w.joules + tail * last.watts, t1 - w.t0
        w.share, w.share_seconds, w.most = w.share + tail * last.watts / n, w.share_seconds + tail / n, max(w.most, n)
        shared = self._shared(w, joules, seconds)
        return EnergyWindow(shared[0], seconds, self.source.name, self.source.measured, "trapezoid",
                            max(w.readings, 1), self.idle_watts, "sampler", w.held_seconds + tail, *shared[1:])

    def _shared(self, w, joules: float, seconds: float) -> tuple[float, int, float | None]:
        """(the window's joules: all of them when it was alone, else its share; shared_with; the
        whole window's joules when shared), less the idle baseline (its share) if any."""
        idle = self.idle_watts
        if w.most <= 1:
            return (joules if idle is None else max(0.0, joules - idle * seconds)), 1, None
        whole = joules if idle is None else max(0.0, joules - idle * seconds)
        part = w.share if idle is None else max(0.0, w.share - idle * w.share_seconds)
        return part, w.most, whole

    def end(self, name: str) -> EnergyWindow:
        if self.sampler_edges:
            return self._end_edged(name)
        stop = self.sample()  # added to every open window, this one included
        with self._lock:
            w = self._windows.pop(name)
        start = w.start
        seconds = stop.seconds - start.seconds
        if start.joules is not None and stop.joules is not None:
            joules, method, n = stop.joules - start.joules, "counter", 2
        else:
            joules, method, n = w.joules, "trapezoid", w.readings
        shared = self._shared(w, joules, seconds)
        return EnergyWindow(shared[0], seconds, self.source.name, self.source.measured, method, n, self.idle_watts,
                            "read", None, *shared[1:])

    def cancel(self, name: str) -> None:
        with self._lock:
            self._windows.pop(name, None)

    def measure(self, name: str, work: Callable[[], object]) -> tuple[object, EnergyWindow | None]:
        """(work(), its energy window); the window is None when the source failed to read at
        the start or the end (the failure is counted in `errors`, the work is never lost)."""
        try:
            self.begin(name)
        except OSError as exc:
            self.errors, self.last_error = self.errors + 1, str(exc)
            return work(), None
        try:
            result = work()
        except BaseException:
            self.cancel(name)
            raise
        try:
            return result, self.end(name)
        except OSError as exc:
            self.errors, self.last_error = self.errors + 1, str(exc)
            return result, None


class Sampler:
    """A daemon thread calling `meter.sample()` every 1/hz seconds until `stop()`. Readings start
    on a fixed grid (a 24 ms read does not stretch a 100 ms period to 124 ms); a read longer than
    the period skips the grid points it overran."""

    def __init__(self, meter: EnergyMeter, hz: float = 10.0):
        if not hz > 0:
            raise ValueError(f"sampling rate must be > 0 Hz, got {hz}")
        self.meter = meter
        self.period_seconds = 1.0 / hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-power", daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        clock = time.monotonic
        next_at = clock()
        while not self._stop.is_set():
            try:
                self.meter.sample()
            except OSError as exc:  # a failing sensor read must not kill the sampler; counted, shown in /props
                self.meter.errors += 1
                if self.meter.last_error is None:
                    print(f"edgekit: power source {self.meter.source.name}: read failed: {exc} (counted in "
                          "/props power.read_errors; requests meanwhile carry no energy)", file=sys.stderr)
                self.meter.last_error = str(exc)
            next_at += self.period_seconds
            now = clock()
            if next_at < now:  # overran: next grid point from now
                next_at += (now - next_at) // self.period_seconds * self.period_seconds + self.period_seconds
            self._stop.wait(next_at - now)

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
        "edges": window.edges,
        "held_seconds": None if window.held_seconds is None else round(window.held_seconds, 6),
        "co2_grams": round(grams.grams(window.joules), 9),
        "grid_g_per_kwh": grams.grams_per_kwh,
        # requests that overlapped split the power evenly at each moment (joules: this one's share)
        "shared_with": window.shared_with,
        "window_joules": None if window.window_joules is None else round(window.window_joules, 6),
    }


def power_record(reading: Reading, source: PowerSource, battery_percent: float | None = None) -> dict:
    """One power-log line: unix time, watts, source, measured, battery % (None if no battery)."""
    battery = reading.battery_percent if reading.battery_percent is not None else battery_percent
    return {"unix": round(reading.unix, 3), "watts": None if reading.watts is None else round(reading.watts, 4),
            "source": source.name, "measured": source.measured, "battery_percent": battery}
