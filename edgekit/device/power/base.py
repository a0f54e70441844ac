"""The common shape of every power source. Stdlib only.

A source reads one figure for the whole device (or the part it can see, stated in `scope`):
instantaneous power in watts, and/or a monotonic cumulative energy counter in joules (already
unwrapped). The meter (edgekit/device/power/meter.py) stamps readings with its own clock, uses
counter deltas when a source has a counter and integrates watts otherwise. `read_seconds` says
how long a read takes (seconds); a slow source (>= SLOW_READ_SECONDS, e.g. one that forks
`vcgencmd`) is read only by the sampler thread, never at a request's edges.

Sources take their hardware as arguments (a sysfs root, a command runner, a utilisation
function), so tests build fake trees and recorded command output instead of patching anything.
A source that cannot work here raises SourceUnavailable with a reason a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass


SLOW_READ_SECONDS = 0.005


class SourceUnavailable(Exception):
    """This source cannot be used on this machine; str(exc) is the reason shown to the user."""


@dataclass(frozen=True)
class Sample:
    """One reading. watts: W; joules: cumulative J since some origin (monotonic); battery_percent: 0-100."""

    watts: float | None = None
    joules: float | None = None
    battery_percent: float | None = None


class PowerSource:
    """Base class. Subclasses set `name` (one of edgekit.core.targets.POWER_SOURCES), `measured`
    (False only for estimates), `scope` (what the figure covers, e.g. "CPU package(s) via RAPL",
    "board rails (PMIC), not wall power") and `detail` (which files/channels, for `edgekit power`)."""

    name = "?"
    measured = True
    scope = ""
    detail = ""
    read_seconds = 0.0  # typical duration of one read(); SLOW_READ_SECONDS or more makes it a slow source

    @property
    def slow(self) -> bool:
        """A read that forks a process (vcgencmd) is slow: the meter then never reads inside a
        request and takes window edges from the sampler's readings."""
        return self.read_seconds >= SLOW_READ_SECONDS

    def read(self) -> Sample:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"source": self.name, "measured": self.measured, "scope": self.scope, "detail": self.detail}
