"""The `jetson` power source: NVIDIA Jetson on-module INA3221 rail monitors under the i2c drivers.

Two sysfs layouts, both read:
- older L4T (Nano, TX1/TX2, Xavier on L4T 32; iio driver): ina3221x/<addr>/iio:device<N>/ with
  rail_name_<k>, in_power<k>_input (milliwatts, mW), in_current<k>_input (milliamps, mA) and
  in_voltage<k>_input (millivolts, mV), k = 0..2;
- newer L4T (Orin, L4T 34+; hwmon driver): ina3221/<addr>/hwmon/hwmon<N>/ with in<k>_label,
  in<k>_input (mV) and curr<k>_input (mA), k = 1..3.
read() returns watts (W): mW / 1e3, or mV x mA / 1e6 where there is no power file. The newer
layout's channels are found by hwmon.ina3221_channels, the one INA3221 hwmon reader, and read
with hwmon.rail_watts.

Which rails: `rails` given: those names (case-insensitive), summed; an unknown name is an error
listing the rails. Otherwise the module's total input rail alone (POM_5V_IN, VDD_IN, else a label
with the word IN), else the sum of all rails; `detail` says which. The input rail is the module's
draw: it excludes the carrier board (USB devices, fan, NVMe on the carrier) and the wall adapter.
Rails labelled NC (not connected) and unreadable rails are left out and named in `detail`.

May import: stdlib, edgekit.device.power.base, edgekit.device.power.hwmon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgekit.device.power.base import PowerSource, Sample, SourceUnavailable
from edgekit.device.power.hwmon import ina3221_channels, is_total_rail, rail_watts, read_label, readable

TOTAL_RAIL_NAMES = ("POM_5V_IN", "VDD_IN")


@dataclass(frozen=True)
class Rail:
    name: str  # "VDD_IN"
    where: str  # "ina3221/1-0040/hwmon/hwmon3"
    files: tuple[Path, ...]  # (power mW,) or (voltage mV, current mA)

    def watts(self) -> float:
        return rail_watts(self.files, 1e3)  # in_power*_input is in mW

    def describe(self) -> str:
        return f"{self.name} [{self.where}: {', '.join(f.name for f in self.files)}]"


def _numbered(parent: Path, pattern: str) -> list[Path]:
    found = [d for d in parent.glob(pattern) if d.is_dir()] if parent.is_dir() else []
    return sorted(found, key=lambda d: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", d.name)])


def _iio_rails(base: Path) -> list[Rail]:
    rails = []
    for addr in _numbered(base / "ina3221x", "*"):
        for dev in _numbered(addr, "iio:device*"):
            where = f"ina3221x/{addr.name}/{dev.name}"
            for k in (0, 1, 2):
                name = read_label(dev / f"rail_name_{k}")
                if name is None:
                    continue
                if (dev / f"in_power{k}_input").exists():
                    rails.append(Rail(name, where, (dev / f"in_power{k}_input",)))
                elif (dev / f"in_voltage{k}_input").exists() and (dev / f"in_current{k}_input").exists():
                    rails.append(Rail(name, where, (dev / f"in_voltage{k}_input", dev / f"in_current{k}_input")))
    return rails


def _hwmon_rails(base: Path) -> list[Rail]:
    rails = []
    for addr in _numbered(base / "ina3221", "*"):
        for dev in _numbered(addr / "hwmon", "hwmon*"):
            where = f"ina3221/{addr.name}/hwmon/{dev.name}"
            rails += [Rail(label or f"{addr.name} channel {k}", where, files)
                      for k, label, files in ina3221_channels(dev)]
    return rails


class JetsonSource(PowerSource):
    """Watts from the Jetson INA3221 rails under `root`: the input rail, or `rails` summed."""

    name = "jetson"

    def __init__(self, root: str | Path = "/sys/bus/i2c/drivers", rails: list[str] | None = None):
        base = Path(root)
        found, notes = readable(_iio_rails(base) + _hwmon_rails(base), lambda rail: rail.name)
        left_out = f"; left out: {'; '.join(notes)}" if notes else ""
        if not found:
            raise SourceUnavailable(
                f"no Jetson INA3221 rails under {base} (looked for ina3221x/*/iio:device*/rail_name_* and "
                f"ina3221/*/hwmon/hwmon*/in*_label): not a Jetson, or the INA3221 driver is not loaded{left_out}")
        if rails:
            chosen: list[Rail] = []
            for want in rails:
                hits = [r for r in found if r.name.lower() == want.strip().lower()]
                if not hits:
                    raise SourceUnavailable(
                        f"unknown Jetson rail {want!r}; available: {', '.join(r.name for r in found)}")
                chosen += [h for h in hits if h not in chosen]
            why = f"chosen with rails={list(rails)}"
        else:
            exact = [r for r in found if r.name.upper() in TOTAL_RAIL_NAMES]
            totals = exact or [r for r in found if is_total_rail(r.name)]
            if totals:
                chosen, why = totals[:1], f"{totals[0].name} is the module's total input rail, used alone"
            else:
                chosen, why = found, "no total input rail found; sum of all rails (misses unmonitored rails)"
        self._rails = chosen
        names = " + ".join(r.name for r in chosen)
        if len(chosen) == 1 and (names.upper() in TOTAL_RAIL_NAMES or is_total_rail(names)):
            self.scope = (f"Jetson module input rail {names} (on-module INA3221): the module's draw, "
                          "not the carrier board or wall power")
        else:
            self.scope = (f"sum of Jetson rails {names} (INA3221): only what these rails feed, "
                          "not the whole module, carrier board or wall power")
        others = [r for r in found if r not in chosen]
        self.detail = (f"{' + '.join(r.describe() for r in chosen)} under {base}: {why}"
                       + (f"; not used: {', '.join(r.name for r in others)}" if others else "") + left_out)

    def read(self) -> Sample:
        """Watts now (sum of the chosen rails); OSError if a rail cannot be read now."""
        return Sample(watts=sum(r.watts() for r in self._rails))
