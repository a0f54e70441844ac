"""`edgekit power`: which power sources this machine has, why the others are skipped, and one
second of readings from each that works. Imports no torch.

Units: watts, joules, seconds. May import: stdlib, click, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import json
import time

import click

from edgekit.device.power.probe import ORDER

SOURCES = list(ORDER)  # the sources in `--power auto` order
POWER_CHOICES = ["auto", "none", *SOURCES]


def power_options(command):
    """The --power, --power-channel, --board and --power-hz options shared by serve and bench."""
    for option in reversed([
        click.option("--power", default="auto", show_default=True, type=click.Choice(POWER_CHOICES),
                     help="Power source for energy figures. auto probes the bundle target's preferred sources, "
                          "then the rest, logging why each is skipped, and falls back to an estimate "
                          "(measured: false); none turns energy off."),
        click.option("--power-channel", "power_channels", multiple=True, metavar="LABEL",
                     help="hwmon/Jetson channel or rail to read, by label (repeatable; default: the input rail)."),
        click.option("--board", default=None, metavar="NAME",
                     help="Board profile for --power estimate (see boards/); default: detected from the device "
                          "tree (model or SoC), else generic-x86 on an x86 machine; an unrecognised ARM "
                          "board needs this."),
        click.option("--power-hz", default=10.0, show_default=True, type=click.FloatRange(0.1, 1000),
                     help="Power sampling rate."),
    ]):
        command = option(command)
    return command


def pick_source(power: str, prefer, channels, board, log, machine=None):
    """The PowerSource for --power (None for "none"); a source that cannot work is a click error."""
    from edgekit.core.errors import ConfigError
    from edgekit.device.power.base import SourceUnavailable
    from edgekit.device.power.probe import Machine, choose

    try:
        return choose(power, machine or Machine(), prefer=prefer, channels=list(channels) or None, board=board,
                      log=log)
    except (SourceUnavailable, ConfigError) as exc:
        raise click.ClickException(f"--power {power}: {exc}") from None


def sample_for(source, seconds: float, hz: float = 10.0) -> dict:
    """Mean watts over `seconds` (counter delta when the source has a counter), readings taken."""
    from edgekit.device.power.meter import EnergyMeter

    meter = EnergyMeter(source)
    meter.begin("probe")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(1.0 / hz, max(0.0, end - time.monotonic())))
        meter.sample()
    window = meter.end("probe")
    return {"watts": round(window.watts, 4), "joules": round(window.joules, 6), "seconds": round(window.seconds, 3),
            "method": window.method, "readings": len(meter.readings)}


@click.command("power")
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="How long to sample each source that works.")
@click.option("--channel", "channels", multiple=True, metavar="LABEL",
              help="hwmon/Jetson channel or rail label to read (repeatable).")
@click.option("--board", default=None, metavar="NAME", help="Board profile for the estimate (see boards/).")
@click.option("--target", default=None, metavar="NAME",
              help="Probe in this target's preferred order (its [power] prefer list), as serve does.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def power(seconds, channels, board, target, as_json):
    """List the power sources edgekit can read here, in the order `--power auto` tries them.

    \b
    For each source: whether it works (or why not), what its figure covers (CPU package, board
    rails, battery, or an ESTIMATE from CPU utilisation x a board profile, which is never a
    measurement) and its mean power over --seconds. `edgekit serve --power auto` uses the first
    source that works.
    """
    from edgekit.core.errors import ConfigError
    from edgekit.device.power.probe import Machine, probe_all

    prefer = []
    if target:
        from edgekit.core.targets import load_target

        try:
            prefer = list(load_target(target).data["power"]["prefer"])
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        found = probe_all(Machine(), prefer=prefer, channels=list(channels) or None, board=board)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    chosen = next((name for name, source, _ in found if source is not None), None)  # what auto would pick
    rows = []
    for name, source, reason in found:
        row = {"source": name, "available": source is not None}
        if source is None:
            row["reason"] = reason
        else:
            row.update(source.describe())
            try:
                row.update(sample_for(source, seconds))
            except OSError as exc:
                row.update(available=False, reason=f"read failed: {exc}")
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if not r["available"]:
            click.echo(f"  {r['source']:13} skipped: {r['reason']}")
            continue
        kind = "measured" if r["measured"] else "ESTIMATE (not measured)"
        mark = "*" if r["source"] == chosen else " "
        click.echo(f"{mark} {r['source']:13} {r['watts']:8.3f} W  {kind}, {r['method']} over {r['seconds']} s")
        click.echo(f"  {'':13} covers: {r['scope']}")
        if r.get("detail"):
            click.echo(f"  {'':13} {r['detail']}")
    if chosen is None:
        click.echo("`edgekit serve --power auto` would find no source here: energy figures off "
                   "(--board NAME gives an estimate from a board profile)")
    else:
        click.echo(f"* = what `edgekit serve --power auto` would use: {chosen}")
