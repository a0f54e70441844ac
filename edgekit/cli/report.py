"""`edgekit report`: summary table, plots and an HTML page from `edgekit serve` JSONL logs.

May import: stdlib, click, edgekit.core, edgekit.device (the summary: edgekit.device.report);
edgekit.cli.plots (matplotlib) lazily.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("logs", nargs=-1, required=True, metavar="LOG...",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("edgekit-report"),
              show_default=True, help="Folder for report.json, report.html and the PNG plots.")
@click.option("--grid-intensity", type=float, default=None, metavar="G_PER_KWH",
              help="Grid carbon intensity for the CO2 figure, in g CO2-eq per kWh (wins over --country).")
@click.option("--country", default=None, metavar="ISO3",
              help="Use a country's approximate yearly grid intensity, e.g. FRA, USA, IND "
                   "[default: world average, 475 g/kWh].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (and the matplotlib import).")
def report(logs, out, grid_intensity, country, no_plots):
    """Summarize request and power logs: requests, tokens, joules, J/token, watts and CO2.

    \b
    LOG is a JSONL file written by `edgekit serve`: the request log (one line per request, with
    an "energy" object when power is measured) and/or the power log (one line per power sample).
    Pass several to combine them, e.g. a rotated log and its successor:
        edgekit report logs/model-requests.jsonl.1 logs/model-requests.jsonl logs/model-power.jsonl

    Each watt and joule figure names its source and says whether it was measured or is an
    ESTIMATE. CO2 is recomputed from the joules at the intensity shown: the one the server logged
    (when every request agrees), else --grid-intensity / --country, else 475 g/kWh. Torn lines (a crash
    mid-write) are skipped and counted. Writes report.json, power.png, joules_per_token.png and
    a self-contained report.html (plots embedded) into --out.
    """
    from edgekit.cli.plots import PlotUnavailable, plot_logs
    from edgekit.device.report import format_table, read_logs, summarize, write_html, write_json

    try:
        data = read_logs(logs)
    except OSError as exc:  # unreadable, or a .gz that is not gzip
        raise click.ClickException(f"cannot read {exc.filename or 'log'}: {exc.strerror or exc}") from None
    intensity = _intensity(data, grid_intensity, country)
    _check_lines(data, logs)
    summary = summarize(data, intensity)
    click.echo(format_table(summary))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    written = [write_json(summary, out)]
    plots = []
    if not no_plots:
        try:
            plots = plot_logs(data, out, note=lambda msg: click.echo(f"note: {msg}", err=True))
        except PlotUnavailable as exc:
            click.echo(f"note: {exc}", err=True)
    written += plots
    written.append(write_html(summary, plots, out))
    click.echo("")
    for p in written:
        click.echo(f"wrote {p}")


def _intensity(data, grid_intensity, country):
    """--grid-intensity / --country, else the one intensity every request logged, else the default."""
    from edgekit.device.power.co2 import grid_intensity as make_intensity

    try:
        intensity = make_intensity(grid_intensity, country)
        logged = {(r.get("energy") or {}).get("grid_g_per_kwh") for r in data.requests if r.get("energy")}
        if grid_intensity is None and country is None and len(logged) == 1 and None not in logged:
            from edgekit.device.power.co2 import GridIntensity

            intensity = GridIntensity(float(logged.pop()), "as logged by the server")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return intensity


def _check_lines(data, logs) -> None:
    """Warn about files without log lines and torn lines; nothing to report at all is an error."""
    for path, valid in data.files.items():
        if valid == 0:
            click.echo(f"warning: {path}: no request or power lines", err=True)
    if not data.requests and not data.power:
        names = ", ".join(str(p) for p in logs)
        what = "empty" if data.skipped == 0 else f"{data.skipped} lines, none a request or power log line"
        raise click.ClickException(f"nothing to report in {names} ({what}); pass the JSONL files written by "
                                   "`edgekit serve` (request log and/or power log)")
    if data.skipped:
        click.echo(f"warning: skipped {data.skipped} torn or unrecognised line(s)", err=True)
