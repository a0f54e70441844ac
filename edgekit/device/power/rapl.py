"""The `rapl` power source: Intel/AMD RAPL energy counters through the powercap sysfs tree.

Units: each zone's `energy_uj` is a wrapping counter in microjoules (µJ) that wraps at its
`max_energy_range_uj`; read() returns one cumulative energy counter in joules (J), unwrapped and
summed over the zones used, counted from 0 when the source is made. No watts: the meter derives
power from counter deltas.

Which zones: only top-level zones `<vendor>-rapl:N` directly under the root (package-0,
package-1, ..., on AMD too; `intel-rapl-mmio:N` duplicates a package and is skipped). Subzones
`<vendor>-rapl:N:M` (core, uncore, dram) are never added: core and uncore are parts of their
package, and keeping it simple, dram (outside the package on some servers) is not counted either.
A top-level `psys` zone covers the whole platform (packages included), so when one exists it is
used alone. Overlapping domains are never summed.

A decrease between two reads is taken as one wrap (max_energy_range_uj is added), so reads must
come more often than one wrap period (about 262 kJ on many CPUs: tens of minutes at full load).
Since Linux 5.10 (CVE-2020-8694) energy_uj is readable by root only.

May import: stdlib, edgekit.device.power.base.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from edgekit.device.power.base import PowerSource, Sample, SourceUnavailable

_TOP_LEVEL_ZONE = re.compile(r"^[\w-]+-rapl:(\d+)$")
MICROJOULES_PER_JOULE = 1_000_000


def _read_microjoules(path: Path) -> int:
    """An integer µJ value from a sysfs file; OSError when unreadable or not a number."""
    text = path.read_text()
    try:
        return int(text.strip())
    except ValueError:
        raise OSError(f"{path} does not hold an integer: {text.strip()[:40]!r}") from None


@dataclass
class _Zone:
    directory: Path
    label: str  # the zone's `name` file: package-0, psys, ...
    max_microjoules: int
    last_microjoules: int
    total_microjoules: int = 0  # unwrapped energy since the source was made


class RaplSource(PowerSource):
    """Cumulative joules from the top-level RAPL zones under `root` (psys alone if present)."""

    name = "rapl"

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        base = Path(root)
        candidates = []
        if base.is_dir():
            for d in base.iterdir():
                m = _TOP_LEVEL_ZONE.match(d.name)
                if m and (d / "energy_uj").exists():
                    candidates.append((d.name.rsplit(":", 1)[0], int(m.group(1)), d))
        if not candidates:
            raise SourceUnavailable(
                f"no RAPL zones (<vendor>-rapl:N with energy_uj) under {base}: needs an Intel or AMD x86 CPU "
                "with the intel_rapl_msr kernel module (`sudo modprobe intel_rapl_msr`); VMs usually have none")
        dirs = [d for _, _, d in sorted(candidates)]
        labels = {d: _zone_label(d) for d in dirs}
        psys = [d for d in dirs if labels[d] == "psys"]
        if psys:
            dirs = psys[:1]
        self._zones = [self._open_zone(base, d, labels[d]) for d in dirs]
        self._lock = threading.Lock()
        zones = " + ".join(f"{z.directory.name} ({z.label})" for z in self._zones)
        if psys:
            self.scope = "platform (psys) via RAPL: the whole SoC platform as the CPU accounts it, not wall power"
            skipped = "other zones skipped: psys already covers them"
        else:
            self.scope = "CPU package(s) via RAPL (not the whole machine)"
            skipped = "subzones (core/uncore/dram) skipped to avoid double counting"
        self.detail = f"{zones}: energy_uj counters under {base}, wraparound handled; {skipped}"

    @staticmethod
    def _open_zone(base: Path, d: Path, label: str) -> _Zone:
        path = d / "max_energy_range_uj"
        try:
            max_microjoules = _read_microjoules(path)
            path = d / "energy_uj"
            first = _read_microjoules(path)
        except PermissionError:
            raise SourceUnavailable(
                f"permission denied reading {path}: since Linux 5.10 RAPL energy counters are root-only; "
                f"run as root or `sudo chmod a+r {base}/*-rapl:*/energy_uj` (until reboot)") from None
        except OSError as exc:
            raise SourceUnavailable(f"cannot read {path}: {exc}") from None
        if max_microjoules <= 0:
            raise SourceUnavailable(f"{d / 'max_energy_range_uj'} is {max_microjoules}: cannot unwrap the counter")
        return _Zone(d, label, max_microjoules, first)

    def read(self) -> Sample:
        """Cumulative joules since the source was made; OSError if a counter cannot be read now."""
        with self._lock:
            raws = [_read_microjoules(z.directory / "energy_uj") for z in self._zones]
            for z, raw in zip(self._zones, raws):
                delta = raw - z.last_microjoules
                if delta < 0:  # the counter wrapped at max_energy_range_uj
                    delta += z.max_microjoules
                z.total_microjoules += delta
                z.last_microjoules = raw
            microjoules = sum(z.total_microjoules for z in self._zones)
        return Sample(joules=microjoules / MICROJOULES_PER_JOULE)


def _zone_label(d: Path) -> str:
    try:
        return (d / "name").read_text().strip() or d.name
    except OSError:
        return d.name
