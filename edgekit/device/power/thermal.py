"""SoC temperature and Raspberry Pi throttle flags, read by a background thread, never in a request.

Units: degrees Celsius (`celsius`; sysfs gives millidegrees), seconds (the injected monotonic
`clock`), hertz. Temperature comes from `/sys/class/thermal/thermal_zone*/temp`, the zone chosen
by its `type` (ZONE_TYPES, in order: `cpu-thermal` on a Pi, `x86_pkg_temp` on Intel, ...).
Throttle flags come from `vcgencmd get_throttled` (prints `throttled=0x50005`): bits 0-3 are
conditions active now (under-voltage, ARM frequency capped, throttled, soft temperature limit),
bits 16-19 the same conditions "has occurred since boot". No vcgencmd (any non-Pi) means the
flags are unknown (None), said once, not an error; no thermal zone means the temperature is None.

`ThermalMonitor` reads both at `hz` on its own daemon thread (vcgencmd forks a process: it is
never run in a request's path) and keeps recent readings, so a request asks `mark()` when it
starts and `summary(mark)` when it ends: temperatures at both edges and whether any reading from
the one before the start to the end showed a throttle condition active.

May import: stdlib, edgekit.device.power.vcgencmd.
"""

from __future__ import annotations

import collections
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc-thermal", "soc_thermal", "cpu0-thermal",
              "cpu", "tcpu", "coretemp", "k10temp", "acpitz")
FLAG_NAMES = {0: "under-voltage", 1: "arm-frequency-capped", 2: "throttled", 3: "soft-temperature-limit",
              16: "under-voltage-occurred", 17: "arm-frequency-capped-occurred", 18: "throttled-occurred",
              19: "soft-temperature-limit-occurred"}
ACTIVE_MASK = 0xF  # bits 0-3: a condition active at the moment of reading
NO_VCGENCMD = "vcgencmd not found (Raspberry Pi OS only): throttle flags unknown"
_THROTTLED = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")


def find_zone(root: Path = Path("/sys/class/thermal")) -> tuple[Path, str] | None:
    """(the zone's `temp` file, its type) for the CPU/SoC zone, or None when there is none."""
    zones = {}
    for zone in sorted(Path(root).glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            continue
        if (zone / "temp").is_file():
            zones.setdefault(kind, zone / "temp")
    for kind in ZONE_TYPES:
        if kind in zones:
            return zones[kind], kind
    for kind, temp in zones.items():  # e.g. "cpu_thermal_0", "soc_max"
        if "cpu" in kind.lower() or "soc" in kind.lower():
            return temp, kind
    return None


def read_celsius(temp_file: Path) -> float:
    """Degrees C from a millidegree sysfs file; OSError/ValueError when unreadable."""
    return int(Path(temp_file).read_text().strip()) / 1000.0


def parse_throttled(text: str) -> int:
    """The bit field of `vcgencmd get_throttled` output (`throttled=0x50005`); ValueError otherwise."""
    m = _THROTTLED.search(text)
    if not m:
        raise ValueError(f"unexpected vcgencmd get_throttled output: {text.strip()[:200]!r}")
    return int(m.group(1), 0)


def flag_names(bits: int | None) -> list[str] | None:
    """Names of the set bits (FLAG_NAMES order), None when the bits are unknown."""
    if bits is None:
        return None
    return [name for bit, name in FLAG_NAMES.items() if bits >> bit & 1]


def throttled_runner(executable: str = "vcgencmd", timeout_seconds: float = 2.0) -> Callable[[], str]:
    """A callable running `<executable> get_throttled`; FileNotFoundError when it is missing,
    OSError when it fails or times out."""
    from edgekit.device.power.vcgencmd import runner

    return runner("get_throttled", executable, timeout_seconds, not_found=NO_VCGENCMD)


@dataclass(frozen=True)
class ThermalReading:
    """seconds: on the monitor's clock; unix: wall time; celsius / bits: None when unknown."""

    seconds: float
    unix: float
    celsius: float | None
    bits: int | None

    @property
    def throttled(self) -> bool | None:
        """A throttle condition (bits 0-3) active at this reading; None when flags are unknown."""
        return None if self.bits is None else bool(self.bits & ACTIVE_MASK)

    def record(self) -> dict:
        """The fields a power-log line carries."""
        return {"celsius": None if self.celsius is None else round(self.celsius, 2), "throttled": self.throttled,
                "throttle_flags": flag_names(self.bits)}


class ThermalMonitor:
    """Temperature and throttle flags read by `poll()` (on its own thread after `start()`).

    `root`: the thermal sysfs class folder; `run`: returns `vcgencmd get_throttled` output (default:
    throttled_runner(); FileNotFoundError = no vcgencmd, flags unknown from then on); `say`: where
    the one-time notes go (stderr by default)."""

    flags = FLAG_NAMES

    def __init__(self, root: Path = Path("/sys/class/thermal"), run: Callable[[], str] | None = None,
                 hz: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, say: Callable[[str], None] | None = None,
                 keep: int = 600):
        if not hz > 0:
            raise ValueError(f"thermal sampling rate must be > 0 Hz, got {hz}")
        self.zone = find_zone(root)
        self._run = run if run is not None else throttled_runner()
        self._flags_known = True
        self.period_seconds = 1.0 / hz
        self.clock, self.wall = clock, wall
        self._say = say or (lambda line: print(f"edgekit: {line}", file=sys.stderr))
        self._said: set[str] = set()
        self.readings: collections.deque[ThermalReading] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _once(self, key: str, line: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._say(line)

    def _celsius(self) -> float | None:
        if self.zone is None:
            return None
        try:
            return read_celsius(self.zone[0])
        except (OSError, ValueError) as exc:
            self._once("temp", f"thermal: cannot read {self.zone[0]}: {exc} (temperature unknown meanwhile)")
            return None

    def _bits(self) -> int | None:
        if not self._flags_known:
            return None
        try:
            return parse_throttled(self._run())
        except FileNotFoundError:
            self._flags_known = False
            self._once("vcgencmd", f"thermal: {NO_VCGENCMD}")
        except (OSError, ValueError) as exc:
            self._once("throttled", f"thermal: {exc} (throttle flags unknown meanwhile)")
        return None

    def poll(self) -> ThermalReading:
        """Read temperature and flags now and keep the reading."""
        celsius, bits = self._celsius(), self._bits()
        reading = ThermalReading(self.clock(), self.wall(), celsius, bits)
        with self._lock:
            self.readings.append(reading)
        return reading

    @property
    def available(self) -> bool:
        """Whether anything can be read here (a thermal zone or vcgencmd)."""
        return self.zone is not None or self._flags_known

    def latest(self) -> ThermalReading | None:
        with self._lock:
            return self.readings[-1] if self.readings else None

    def mark(self) -> float:
        """A request starts now: the instant to pass to summary() when it ends."""
        return self.clock()

    def summary(self, start: float) -> dict:
        """`usage.thermal` of a request that ran from `start` to now: celsius at both edges (latest
        readings, at most one period old), throttled true when a reading from the one before the
        start to now had a condition active, null when flags are unknown; flags seen (union)."""
        with self._lock:
            seen = [r for r in self.readings if r.seconds >= start]
            before = [r for r in self.readings if r.seconds < start][-1:]
        window = before + seen
        if not window:
            return {"celsius_start": None, "celsius_end": None, "throttled": None, "flags": None}
        known = [r.bits for r in window if r.bits is not None]
        union = 0
        for bits in known:
            union |= bits
        return {"celsius_start": window[0].record()["celsius"], "celsius_end": window[-1].record()["celsius"],
                "throttled": bool(union & ACTIVE_MASK) if known else None,
                "flags": flag_names(union) if known else None}

    def start(self) -> "ThermalMonitor":
        """Poll once now (so the first request has a reading) and then every period on a daemon thread."""
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="edgekit-thermal", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period_seconds):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)

    def describe(self) -> dict:
        return {"zone": None if self.zone is None else self.zone[1],
                "temp_file": None if self.zone is None else str(self.zone[0]),
                "throttle_flags": "vcgencmd get_throttled" if self._flags_known else "unknown (no vcgencmd)",
                "hz": 1.0 / self.period_seconds}


def start_monitor(say: Callable[[str], None], root: Path = Path("/sys/class/thermal"),
                  run: Callable[[], str] | None = None, hz: float = 1.0) -> ThermalMonitor | None:
    """A started ThermalMonitor, or None (said once) when this machine has neither a CPU/SoC
    thermal zone nor vcgencmd."""
    monitor = ThermalMonitor(root, run=run, hz=hz, say=say).start()
    if monitor.available:
        d = monitor.describe()
        zone = f"zone {d['zone']}" if d["zone"] else "no CPU/SoC thermal zone"
        say(f"thermal: {zone}, throttle flags from {d['throttle_flags']}, every {1 / hz:g} s")
        return monitor
    monitor.stop()
    say(f"thermal: no CPU/SoC thermal zone under {root} and no vcgencmd: no temperature or throttle figures")
    return None
