"""The `hwmon` power source: INA219/INA226/INA230/INA231/INA260 and INA3221 shunt monitors
through the hwmon sysfs class.

Units: `power1_input` is microwatts (µW); `inN_input` is bus voltage in millivolts (mV) and
`currN_input` current in milliamps (mA), so watts = mV x mA / 1e6. read() returns watts (W).

Single-channel chips use power1_input, or in1_input x curr1_input when the driver has no power
file. INA3221 has three channels (in1..3 bus voltage, curr1..3 current, optional in1..3_label);
each channel's power is V x I. Which channels count (the figure is the sum of the chosen ones):
- `channels` given: each entry is a channel label (case-insensitive), a chip name such as
  "ina226" (all its channels) or an hwmonN directory name; an unknown entry is an error that
  lists what is available.
- otherwise: a channel whose label names the total input rail (a word IN as in VDD_IN or
  POM_5V_IN, or "total") alone; else all channels of the first device (by hwmonN number), so
  with several single-channel devices the first one is used. `detail` says which and why.
Channels labelled NC (not connected) and channels that cannot be read (a disabled INA3221
channel reads ENODATA) are left out and named in `detail`.

May import: stdlib, edgekit.device.power.base.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgekit.device.power.base import PowerSource, Sample, SourceUnavailable

SINGLE_CHANNEL_CHIPS = ("ina219", "ina226", "ina230", "ina231", "ina260")
THREE_CHANNEL_CHIPS = ("ina3221",)


def read_number(path: Path) -> float:
    """A number from a sysfs file; OSError when unreadable or not a number."""
    text = path.read_text()
    try:
        return float(text.strip())
    except ValueError:
        raise OSError(f"{path} does not hold a number: {text.strip()[:40]!r}") from None


def rail_watts(files: tuple[Path, ...], power_units_per_watt: float) -> float:
    """Watts of one rail: a single power file (in 1/power_units_per_watt W: 1e6 for hwmon's µW,
    1e3 for Jetson's mW), or a bus-voltage file (mV) and a current file (mA)."""
    if len(files) == 1:
        return read_number(files[0]) / power_units_per_watt
    millivolts, milliamps = (read_number(f) for f in files)
    return millivolts * milliamps / 1e6


def readable(rails: list, label) -> tuple[list, list[str]]:
    """(rails that read now, notes on the others): a rail labelled NC is not connected, one whose
    read fails (a disabled INA3221 channel) is unreadable. `label(rail)` gives its label."""
    kept, notes = [], []
    for rail in rails:
        if label(rail).upper() == "NC":
            notes.append(f"{rail.describe()} not connected")
            continue
        try:
            rail.watts()
        except OSError as exc:
            notes.append(f"{rail.describe()} unreadable ({exc})")
            continue
        kept.append(rail)
    return kept, notes


def is_total_rail(label: str) -> bool:
    """Whether a rail label names the total input: the word IN (VDD_IN, POM_5V_IN) or 'total'."""
    return "IN" in re.split(r"[^A-Z0-9]+", label.upper()) or "total" in label.lower()


def read_label(path: Path) -> str | None:
    """The stripped text of a sysfs file (a name or label), or None when empty or unreadable."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Channel:
    chip: str  # "ina3221"
    hwmon: str  # "hwmon2"
    label: str  # "VDD_IN", or the chip name for an unlabelled single-channel device
    files: tuple[Path, ...]  # (power µW,) or (bus voltage mV, current mA)

    def watts(self) -> float:
        return rail_watts(self.files, 1e6)  # power1_input is in µW

    def describe(self) -> str:
        return f"{self.label} [{self.chip} {self.hwmon}: {', '.join(f.name for f in self.files)}]"


def ina3221_channels(d: Path) -> list[tuple[int, str | None, tuple[Path, Path]]]:
    """The INA3221 channels of one hwmon directory `d` (this hwmon class, or a Jetson's
    ina3221/<addr>/hwmon/hwmonN): (k, in<k>_label or None, (in<k>_input mV, curr<k>_input mA)) for
    each k = 1..3 that has both files."""
    found = []
    for k in (1, 2, 3):
        volts, amps = d / f"in{k}_input", d / f"curr{k}_input"
        if volts.exists() and amps.exists():
            found.append((k, read_label(d / f"in{k}_label"), (volts, amps)))
    return found


def _channels_of(d: Path, chip: str) -> list[Channel]:
    if chip in SINGLE_CHANNEL_CHIPS:
        label = read_label(d / "label") or chip
        if (d / "power1_input").exists():
            return [Channel(chip, d.name, label, (d / "power1_input",))]
        if (d / "in1_input").exists() and (d / "curr1_input").exists():
            return [Channel(chip, d.name, label, (d / "in1_input", d / "curr1_input"))]
        return []
    return [Channel(chip, d.name, label or f"{chip} {d.name} channel {k}", files)
            for k, label, files in ina3221_channels(d)]


def find_channels(root: str | Path) -> tuple[list[Channel], list[str], list[str]]:
    """(readable channels, notes on channels left out, names of every hwmon device seen)."""
    base = Path(root)
    dirs = [d for d in base.iterdir() if re.fullmatch(r"hwmon\d+", d.name)] if base.is_dir() else []
    channels, notes, seen = [], [], []
    for d in sorted(dirs, key=lambda p: int(p.name[5:])):
        chip = (read_label(d / "name") or "?").lower()
        seen.append(chip)
        if chip not in SINGLE_CHANNEL_CHIPS + THREE_CHANNEL_CHIPS:
            continue
        kept, left_out = readable(_channels_of(d, chip), lambda ch: ch.label)
        channels += kept
        notes += left_out
    return channels, notes, seen


class HwmonSource(PowerSource):
    """Watts from INA shunt monitors under `root`; `channels` picks labels/chips (see module doc)."""

    name = "hwmon"

    def __init__(self, root: str | Path = "/sys/class/hwmon", channels: list[str] | None = None):
        found, notes, seen = find_channels(root)
        left_out = f"; left out: {'; '.join(notes)}" if notes else ""
        if not found:
            chips = "/".join(c.upper() for c in SINGLE_CHANNEL_CHIPS + THREE_CHANNEL_CHIPS)
            raise SourceUnavailable(
                f"no readable {chips} power monitor under {root} (hwmon devices here: "
                f"{', '.join(seen) or 'none'}){left_out}")
        if channels:
            chosen: list[Channel] = []
            for want in channels:
                w = want.strip().lower()
                hits = [c for c in found if w in (c.label.lower(), c.chip, c.hwmon)]
                if not hits:
                    raise SourceUnavailable(
                        f"unknown hwmon channel {want!r}; available: {', '.join(c.describe() for c in found)}")
                chosen += [h for h in hits if h not in chosen]
            why = f"chosen with channels={list(channels)}"
        else:
            totals = [c for c in found if is_total_rail(c.label)]
            if totals:
                chosen, why = totals[:1], f"{totals[0].label} is the total input rail, used alone"
            else:
                first = found[0].hwmon
                chosen = [c for c in found if c.hwmon == first]
                why = (f"no total input rail label; sum of all channels of {first}" if len(chosen) > 1
                       else f"first of {len(found)} devices" if len(found) > 1 else "the only channel")
        self._channels = chosen
        others = [c for c in found if c not in chosen]
        rails = " + ".join(c.label for c in chosen)
        what = f"input rail {rails}" if len(chosen) == 1 and is_total_rail(rails) else (
            f"rail {rails}" if len(chosen) == 1 else f"sum of rails {rails}")
        self.scope = f"{what} via INA shunt monitor: only what the measured rail(s) feed, as wired on this board"
        self.detail = (f"{' + '.join(c.describe() for c in chosen)} under {root}: {why}"
                       + (f"; not used: {', '.join(c.describe() for c in others)}" if others else "") + left_out)

    def read(self) -> Sample:
        """Watts now (sum of the chosen channels); OSError if a channel cannot be read now."""
        return Sample(watts=sum(c.watts() for c in self._channels))
