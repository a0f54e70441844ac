"""The `power-supply` power source: batteries and external supplies in the power_supply sysfs class.

Units: `power_now` is microwatts (µW), `current_now` microamps (µA), `voltage_now` microvolts
(µV), `capacity` percent; read() returns watts (W) = µW / 1e6, or |µA x µV| / 1e12 where a
supply has no power_now (some drivers report current_now negative while discharging, so the
absolute value is used), and the battery percent.

Which supply: a Battery (system scope; `scope` Device, e.g. a wireless mouse, is ignored) whose
status is Discharging: its power is the whole device's draw (several discharging batteries are
summed). A charging or full battery's power_now is charge power, not the device's draw, so then
only an external supply (USB, Mains, UPS, ...) that itself reports power or current + voltage is
used: what it delivers, device draw plus any battery charging. Otherwise SourceUnavailable,
naming the battery status and percent. If the battery starts charging after the source was
made, read() raises OSError for that reading instead of reporting charge power as draw.

`battery_info` is a callable like psutil.sensors_battery (an object with .percent and
.power_plugged, or None); by default psutil's, when psutil imports. It only supplies the battery
percent when sysfs has none.

May import: stdlib, psutil (optional, battery percent fallback), edgekit.device.power.base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgekit.device.power.base import PowerSource, Sample, SourceUnavailable

ON_EXTERNAL_POWER = ("Charging", "Full", "Not charging")


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _number(path: Path) -> float:
    text = path.read_text().strip()
    try:
        return float(text)
    except ValueError:
        raise OSError(f"{path} does not hold a number: {text[:40]!r}") from None


def supply_watts(d: Path) -> tuple[float, str] | None:
    """(watts, which files) for one supply directory, or None when it reports no power."""
    try:
        if (d / "power_now").exists():
            microwatts = _number(d / "power_now")
            return abs(microwatts) / 1e6, "power_now"
        if (d / "current_now").exists() and (d / "voltage_now").exists():
            microamps, microvolts = _number(d / "current_now"), _number(d / "voltage_now")
            return abs(microamps * microvolts) / 1e12, "current_now x voltage_now"
    except OSError:
        return None
    return None


def _supplies(root: Path) -> list[tuple[Path, str]]:
    found = [(d, _text(d / "type")) for d in root.iterdir()] if root.is_dir() else []
    return sorted(((d, t) for d, t in found if t), key=lambda x: x[0].name)


def _batteries(root: Path) -> list[Path]:
    return [d for d, t in _supplies(root) if t == "Battery" and _text(d / "scope") != "Device"]


def _default_battery_info() -> Callable | None:
    try:
        import psutil
    except ImportError:
        return None
    return getattr(psutil, "sensors_battery", None)


def battery_percent(root: str | Path = "/sys/class/power_supply", battery_info: Callable | None = None) -> float | None:
    """The battery percent: the first system battery's sysfs `capacity`, else battery_info()'s
    .percent (default psutil.sensors_battery), else None (no battery, or nothing reports it)."""
    for d in _batteries(Path(root)):
        try:
            return float(_text(d / "capacity") or "")
        except ValueError:
            continue
    info_fn = battery_info if battery_info is not None else _default_battery_info()
    try:
        info = info_fn() if info_fn is not None else None
        return float(info.percent) if info is not None and info.percent is not None else None
    except Exception:  # psutil can fail on unusual systems; the percent is optional
        return None


class PowerSupplySource(PowerSource):
    """Watts from a discharging battery (the device's draw) or an external supply that reports power."""

    name = "power-supply"

    def __init__(self, root: str | Path = "/sys/class/power_supply", battery_info: Callable | None = None):
        self._root, self._battery_info = Path(root), battery_info
        percent = self._percent()
        at = f" (battery at {percent:g}%)" if percent is not None else ""
        batteries = _batteries(self._root)
        discharging = [b for b in batteries if _text(b / "status") == "Discharging"]
        used = [(b, supply_watts(b)) for b in discharging]
        used = [(b, w) for b, w in used if w is not None]
        if used:
            self._chosen, self._batteries_used = [b for b, _ in used], True
            names = " + ".join(b.name for b, _ in used)
            self.scope = f"whole device: system draw from battery {names} while discharging"
        else:
            external = [d for d, t in _supplies(self._root)
                        if t != "Battery" and _text(d / "online") != "0" and supply_watts(d) is not None]
            if not external:
                raise SourceUnavailable(self._why_not(batteries, discharging) + at)
            self._chosen, self._batteries_used = external, False
            names = " + ".join(f"{d.name} ({_text(d / 'type')})" for d in external)
            self.scope = f"power delivered by external supply {names}: device draw plus any battery charging"
        self.detail = "; ".join(f"{d} {supply_watts(d)[1]}" for d in self._chosen)

    def _why_not(self, batteries: list[Path], discharging: list[Path]) -> str:
        if discharging:
            return (f"battery {discharging[0].name} is discharging but reports neither power_now nor "
                    "current_now + voltage_now")
        if batteries:
            b = batteries[0]
            status = _text(b / "status") or "of unknown status"
            reason = ("power_now is charge power, not the device's draw" if status == "Charging"
                      else "it is not supplying the device, so its power is not the device's draw")
            return (f"battery {b.name} is {status.lower()}: {reason}, and no USB/Mains supply reports power; "
                    "unplug the charger to measure from the battery")
        return f"no battery or external supply under {self._root} reports power (power_now or current_now)"

    def _percent(self) -> float | None:
        return battery_percent(self._root, self._battery_info)

    def read(self) -> Sample:
        """Watts now and the battery percent; OSError if the supply cannot be read or, for a
        battery, it is no longer discharging (its power would be charge power)."""
        total_watts = 0.0
        for d in self._chosen:
            status = _text(d / "status") if self._batteries_used else None
            if status in ON_EXTERNAL_POWER:
                raise OSError(f"battery {d.name} is now {status.lower()}: power_now is charge power, "
                              "not the device's draw")
            reading = supply_watts(d)
            if reading is None:
                raise OSError(f"cannot read power from {d}")
            total_watts += reading[0]
        return Sample(watts=total_watts, battery_percent=self._percent())
