"""Metering for `edgekit serve`: each request's model work as one energy window (joules, watts,
J/token, source, `measured`, CO2) and its thermal summary (celsius at start and end, throttled),
and the per-request account: Prometheus metrics plus one JSONL log line.

Every watt/joule figure carries its source and `measured` flag (from edgekit.device.power.meter);
an estimate never looks measured. Units: joules, watts, seconds, celsius.
May import: stdlib, edgekit.device.
"""

from __future__ import annotations

import time

from edgekit.device.jsonl import JsonlLog
from edgekit.device.serving import Metrics, log_record


class Meters:
    """The optional EnergyMeter `meter` (CO2 at `intensity`, a co2.GridIntensity; the configured
    grid when None) and started thermal.ThermalMonitor `thermal`, exported to `metrics`."""

    def __init__(self, meter=None, intensity=None, thermal=None, metrics: Metrics | None = None):
        self.meter, self.thermal, self.intensity = meter, thermal, intensity
        if meter is not None:
            from edgekit.device.power.co2 import grid_intensity

            self.intensity = intensity or grid_intensity()
            if metrics is not None:
                metrics.watch_power(meter)
        if thermal is not None and metrics is not None:
            metrics.watch_thermal(thermal)

    def run(self, name: str, work):
        """(work(), the energy window of running it or None without a meter, usage.thermal or None)."""
        mark = None if self.thermal is None else self.thermal.mark()
        result, window = (work(), None) if self.meter is None else self.meter.measure(name, work)
        return result, window, None if self.thermal is None else self.thermal.summary(mark)

    def usage(self, usage: dict, window, tokens: int, heat) -> dict:
        """`usage` plus `energy` (joules per one of `tokens`) and `thermal`, where measured."""
        if window is not None:
            from edgekit.device.power.meter import energy_usage

            usage["energy"] = energy_usage(window, tokens, self.intensity)
        if heat is not None:
            usage["thermal"] = heat
        return usage

    def describe_power(self) -> dict | None:
        """/props "power": the source, idle watts subtracted, grid, read errors; None without a meter."""
        m = self.meter
        if m is None:
            return None
        return dict(m.source.describe(), idle_watts_subtracted=m.idle_watts, grid=self.intensity.label(),
                    read_errors=m.errors, last_error=m.last_error,
                    window_edges="sampler" if m.sampler_edges else "read")

    def describe_thermal(self) -> dict | None:
        return None if self.thermal is None else self.thermal.describe()


class Ledger:
    """Accounts for each finished request: counted in `metrics`, one line in `log`."""

    def __init__(self, metrics: Metrics, log: JsonlLog):
        self.metrics, self.log = metrics, log

    def finish(self, route: str, status: int, started: float, usage: dict | None = None,
               error: str | None = None) -> None:
        """`started`: the request's arrival, seconds since the epoch."""
        self.metrics.observe(route, status, time.time() - started, usage)
        self.log.write(log_record(route, status, started, usage, error))
