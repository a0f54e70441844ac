"""The `rpi-pmic` power source: Raspberry Pi 5 board rails from the PMIC ADC via `vcgencmd pmic_read_adc`.

Units: the command prints rail currents in amps (A, lines `<RAIL>_A current(n)=...A`) and rail
voltages in volts (V, lines `<RAIL>_V volt(n)=...V`); read() returns watts (W) = the sum over
rails that have both of current x voltage. Voltage-only lines (EXT5V_V, the 5 V input, and
BATT_V, the RTC battery) have no current and are skipped and listed in `detail`, as is any
current without a voltage. This is what the PMIC's rails deliver, not wall power: it excludes
USB/peripherals and the regulators' own losses.

`run` is a callable returning the command's stdout (default: vcgencmd_runner(), which runs
`vcgencmd pmic_read_adc` with a 2 s timeout). Each read forks a process (~24 ms on a Pi 5), so the
source is `slow`: only the sampler thread reads it, never a request (see meter.py).

May import: stdlib, edgekit.device.power (base, vcgencmd).
"""

from __future__ import annotations

import re
from typing import Callable

from edgekit.device.power.vcgencmd import runner
from edgekit.device.power.base import PowerSource, Sample, SourceUnavailable

_LINE = re.compile(r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+)[AV]\s*$")
NOT_FOUND = "vcgencmd not found (Raspberry Pi OS only)"


def parse_pmic_adc(text: str) -> tuple[dict[str, float], list[str]]:
    """(watts by rail, in output order, for rails with both a current and a voltage;
    names of the lines skipped because their rail has only one of the two, e.g. EXT5V_V)."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    order: list[tuple[str, str]] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            rail, kind = m.group("rail"), m.group("kind")
            (amps if kind == "A" else volts)[rail] = float(m.group("value"))
            order.append((rail, kind))
    watts = {rail: amps[rail] * volts[rail] for rail in amps if rail in volts}
    skipped = [f"{rail}_{kind}" for rail, kind in order if rail not in watts]
    return watts, skipped


def vcgencmd_runner(executable: str = "vcgencmd", timeout_seconds: float = 2.0) -> Callable[[], str]:
    """A callable running `<executable> pmic_read_adc` and returning its stdout; FileNotFoundError
    when the command is missing, OSError (with its stderr) when it fails or times out."""
    return runner("pmic_read_adc", executable, timeout_seconds, not_found=NOT_FOUND,
                  failure_hint="needs a Raspberry Pi 5 and access to /dev/vcio: add the user to the video group")


class RpiPmicSource(PowerSource):
    """Watts as the sum of the Pi 5 PMIC rails' V x I, read with `run` (see module doc)."""

    name = "rpi-pmic"
    read_seconds = 0.024  # one fork of vcgencmd on a Pi 5 (docs/energy.md): a slow source
    scope = ("Pi 5 board rails from the PMIC (sum of rail V x I), not wall power; "
             "excludes USB/peripherals and regulator losses")

    def __init__(self, run: Callable[[], str] | None = None):
        self._run = run if run is not None else vcgencmd_runner()
        try:
            rails, skipped = self._rails()
        except FileNotFoundError:
            raise SourceUnavailable(NOT_FOUND) from None
        except OSError as exc:
            raise SourceUnavailable(str(exc)) from None
        self.detail = (f"vcgencmd pmic_read_adc: {len(rails)} rails summed ({', '.join(rails)})"
                       + (f"; skipped (no matching current/voltage): {', '.join(skipped)}" if skipped else ""))

    def _rails(self) -> tuple[dict[str, float], list[str]]:
        text = self._run()
        rails, skipped = parse_pmic_adc(text)
        if not rails:
            raise OSError("vcgencmd pmic_read_adc printed no rail with both a current and a voltage "
                          f"(Raspberry Pi 5 only; older Pis have no PMIC ADC): {text.strip()[:300]!r}")
        return rails, skipped

    def read(self) -> Sample:
        """Watts now; OSError if the command fails or prints no rails."""
        return Sample(watts=sum(self._rails()[0].values()))
