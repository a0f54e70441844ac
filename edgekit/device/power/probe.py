"""Finding a power source: `--power auto` probes in a documented order and says why each skipped
source was skipped; `--power NAME` forces one (an error if it cannot work here).

Order for `auto`: the bundle target's `[power] prefer` list first, then the rest of
rapl, hwmon, jetson, rpi-pmic, power-supply; `estimate` (CPU utilisation x a board profile,
measured: false) always comes last, so an estimate is used only when nothing measures.

Where each source looks is a `Machine` (real paths by default); tests pass a fake tree.
May import: stdlib, edgekit.core, edgekit.device.power (psutil through the sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekit.device.power.base import PowerSource, SourceUnavailable

ORDER = ("rapl", "hwmon", "jetson", "rpi-pmic", "power-supply", "estimate")


@dataclass(frozen=True)
class Machine:
    """The hardware a probe looks at. `under(root)` puts every sysfs/procfs path below `root`."""

    powercap: Path = Path("/sys/class/powercap")
    hwmon: Path = Path("/sys/class/hwmon")
    i2c_drivers: Path = Path("/sys/bus/i2c/drivers")
    power_supply: Path = Path("/sys/class/power_supply")
    device_tree: Path = Path("/proc/device-tree")
    vcgencmd: Callable[[], str] | None = None  # returns `vcgencmd pmic_read_adc` output; None = run it
    cpu_fraction: Callable[[], float] | None = None  # 0..1; None = psutil
    battery_info: Callable | None = None  # like psutil.sensors_battery; None = psutil
    arch: str | None = None  # CPU architecture as platform.machine() says it; None = this machine's

    @classmethod
    def under(cls, root: Path, **kw) -> "Machine":
        root = Path(root)
        return cls(powercap=root / "sys/class/powercap", hwmon=root / "sys/class/hwmon",
                   i2c_drivers=root / "sys/bus/i2c/drivers", power_supply=root / "sys/class/power_supply",
                   device_tree=root / "proc/device-tree", **kw)


def make(name: str, machine: Machine, channels: list[str] | None = None, board: str | None = None) -> PowerSource:
    """One source by name; raises SourceUnavailable with the reason when it cannot work here."""
    if name == "rapl":
        from edgekit.device.power.rapl import RaplSource
        return RaplSource(machine.powercap)
    if name == "hwmon":
        from edgekit.device.power.hwmon import HwmonSource
        return HwmonSource(machine.hwmon, channels=channels)
    if name == "jetson":
        from edgekit.device.power.jetson import JetsonSource
        return JetsonSource(machine.i2c_drivers, rails=channels)
    if name == "rpi-pmic":
        from edgekit.device.power.pmic import RpiPmicSource
        return RpiPmicSource(run=machine.vcgencmd)
    if name == "power-supply":
        from edgekit.device.power.supply import PowerSupplySource
        return PowerSupplySource(machine.power_supply, battery_info=machine.battery_info)
    if name == "estimate":
        return estimate_source(machine, board)
    raise SourceUnavailable(f"unknown power source '{name}'; choose from auto, none, {', '.join(ORDER)}")


def estimate_source(machine: Machine, board: str | None = None) -> PowerSource:
    """The estimate for `board` (a boards/ name or path), else for the board detected here."""
    from edgekit.core.boards import load_board
    from edgekit.device.power.estimate import EstimateSource, estimate_for_this_machine

    if board:
        return EstimateSource(load_board(board), cpu_fraction=machine.cpu_fraction, how=f"board '{board}' (--board)")
    return estimate_for_this_machine(device_tree_root=machine.device_tree, cpu_fraction=machine.cpu_fraction,
                                     arch=machine.arch)


def auto_order(prefer: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The probe order: preferred sources first, estimate last."""
    order = [p for p in prefer if p in ORDER and p != "estimate"]
    order += [p for p in ORDER if p not in order and p != "estimate"]
    return order + ["estimate"]


def probe_all(machine: Machine, prefer=(), channels=None, board=None) -> list[tuple[str, PowerSource | None, str]]:
    """(name, source or None, reason it was skipped or '') for every source, in auto order."""
    found = []
    for name in auto_order(prefer):
        try:
            found.append((name, make(name, machine, channels, board), ""))
        except SourceUnavailable as exc:
            found.append((name, None, str(exc)))
    return found


def choose(choice: str = "auto", machine: Machine | None = None, prefer=(), channels=None, board=None,
           log: Callable[[str], None] = print) -> PowerSource | None:
    """The source to use: None for "none"; a named one (SourceUnavailable if it cannot work); or
    the first that works in auto order, logging one line per skipped source with its reason. When
    nothing works in auto order (an unrecognised board with no sensor), energy is off: None, said."""
    machine = machine or Machine()
    if choice == "none":
        return None
    for name in auto_order(prefer) if choice == "auto" else [choice]:
        try:
            source = make(name, machine, channels, board)
        except SourceUnavailable as exc:
            if choice != "auto":
                raise
            log(f"power: skipped {name}: {exc}")
            continue
        log(f"power: using {name} ({'measured' if source.measured else 'ESTIMATE, not measured'}): {source.scope}")
        return source
    log("power: no source works here (see the reasons above): energy figures are off")
    return None
