"""Plots for `edgekit report` and `edgekit bench` (matplotlib, Agg backend, imported lazily).

Units as labelled on each axis (watts, joules per token, bytes). matplotlib is an optional extra
(`bench`/`test`), never a device requirement, so the figures live here in the front end rather than in
edgekit/device (whose imports tests/test_layers.py limits to the device install): the device layer
prepares the series (edgekit.device.report), this module only draws them, and a device install
without matplotlib still prints tables and writes JSON (PlotUnavailable).
May import: stdlib, edgekit.core, edgekit.device; matplotlib lazily (inside the functions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgekit.core.errors import EdgekitError
from edgekit.device.report import Logs, busy_spans, joules_per_token_groups, utc_text


class PlotUnavailable(EdgekitError):
    """matplotlib is not installed: the table and JSON are still written."""


def pyplot(message: str):
    """matplotlib.pyplot on the Agg backend, or PlotUnavailable(message)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(message) from None
    return plt


def plot_compare(results: list[dict], path, note: Callable[[str], None] | None = None) -> Path | None:
    """Scatter J/token (x) vs quality (y: perplexity ratio, else perplexity), marker area by model
    size; hollow markers are estimates. None (with a note) if no bundle has both figures.
    Raises PlotUnavailable if matplotlib is not installed."""
    plt = pyplot("the plot needs matplotlib: pip install matplotlib (the table and JSON are written without it)")
    from matplotlib.lines import Line2D

    note = note or (lambda msg: None)
    key = "perplexity_ratio" if all(r["quality"].get("perplexity_ratio") is not None for r in results) \
        else "perplexity"
    points = [r for r in results if (r.get("energy") or {}).get("joules_per_token") is not None
              and r["quality"].get(key) is not None]
    for r in results:
        if r not in points:
            note(f"plot: {r['name']} ({r['target']} {r['precision']}) left out: no J/token or no recorded {key}")
    if not points:
        return None
    biggest = max(r["model_bytes"] for r in points) or 1
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, r in enumerate(points):
        measured = r["energy"]["measured"]
        color = f"C{i % 10}"
        x, y = r["energy"]["joules_per_token"], r["quality"][key]
        ax.scatter([x], [y], s=60 + 600 * r["model_bytes"] / biggest, facecolors=color if measured else "none",
                   edgecolors=color, linewidths=2)
        ax.annotate(f"{r['name']}\n{r['target']} {r['precision']}\n{r['model_bytes'] / 1e6:.0f} MB", (x, y),
                    textcoords="offset points", xytext=(10, 6), fontsize=8)
    handles = [Line2D([], [], marker="o", ls="", color="gray", label="measured"),
               Line2D([], [], marker="o", ls="", color="gray", markerfacecolor="none",
                      label="ESTIMATE (not measured)"),
               Line2D([], [], ls="", label="marker area ~ model size")]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ylabel = "perplexity ratio (exported / reference)" if key == "perplexity_ratio" else "perplexity"
    xlabel = "energy per generated token (J/token)"
    if not all(r["energy"]["measured"] for r in points):
        xlabel += " - hollow = ESTIMATE, not measured"
    ax.set(xlabel=xlabel, ylabel=ylabel + "\nfrom the build's verify stage",
           title="Energy per token vs quality (lower-left is better)")
    ax.margins(0.25)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_logs(logs: Logs, out_dir, note: Callable[[str], None] | None = None) -> list[Path]:
    """Write power.png and joules_per_token.png into out_dir; a plot without data is skipped and
    `note(message)` is called. Raises PlotUnavailable if matplotlib is not installed."""
    plt = pyplot("plots need matplotlib: pip install matplotlib (the table and report.json are written without it)")
    note = note or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if logs.power:
        written.append(_plot_power(plt, logs, out / "power.png"))
    else:
        note("power.png skipped: no power samples in the logs")
    groups, sources = joules_per_token_groups(logs)
    if groups[True] or groups[False]:
        written.append(_plot_joules_per_token(plt, groups, sources, out / "joules_per_token.png"))
    else:
        note("joules_per_token.png skipped: no request has energy and completion tokens")
    return written


def _time_unit(span_seconds: float) -> tuple[str, float]:
    return ("hours", 3600) if span_seconds > 7200 else ("minutes", 60) if span_seconds > 180 else ("seconds", 1)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_power(plt, logs: Logs, path: Path) -> Path:
    """Watts over time, one line per (source, measured), request spans shaded."""
    t0 = logs.power[0]["unix"]
    unit, scale = _time_unit(logs.power[-1]["unix"] - t0)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (a, b) in enumerate(busy_spans(logs)):
        ax.axvspan((a - t0) / scale, (b - t0) / scale, color="tab:orange", alpha=0.2, lw=0,
                   label="requests" if i == 0 else None)
    kinds = sorted({(s["source"], s["measured"]) for s in logs.power})
    for src, meas in kinds:
        pts = [s for s in logs.power if (s["source"], s["measured"]) == (src, meas)]
        ax.plot([(s["unix"] - t0) / scale for s in pts], [s["watts"] for s in pts], lw=1,
                label=f"{src} ({'measured' if meas else 'ESTIMATE'})")
    ax.set(title="Power: " + ", ".join(f"{s} ({'measured' if m else 'ESTIMATE'})" for s, m in kinds),
           xlabel=f"{unit} since {utc_text(t0)}", ylabel="power (W)", ylim=(0, None))
    ax.legend(loc="upper right")
    return _save(plt, fig, path)


def _plot_joules_per_token(plt, groups: dict[bool, list[float]], sources: list[str], path: Path) -> Path:
    """Histogram of per-request J/token, measured and ESTIMATE stacked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    data = [(v, f"{'measured' if m else 'ESTIMATE'} ({len(v)} requests)") for m, v in groups.items() if v]
    ax.hist([d for d, _ in data], bins=min(40, max(5, sum(len(d) for d, _ in data) // 3)), stacked=True,
            label=[lbl for _, lbl in data])
    ax.set(title=f"Energy per completion token per request ({', '.join(sources)})", xlabel="J/token",
           ylabel="requests")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return _save(plt, fig, path)
