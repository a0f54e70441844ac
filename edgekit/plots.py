"""Plots for `edgekit report` and `edgekit bench` (matplotlib, Agg backend, imported lazily).

Units as labelled on each axis (watts, joules per token, bytes). Not part of the device layer:
a device install without matplotlib still prints tables and writes JSON.
May import: stdlib, edgekit.core; matplotlib lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgekit.core.errors import EdgekitError


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
