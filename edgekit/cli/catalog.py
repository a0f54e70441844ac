"""`edgekit targets` and `edgekit recipes`: the target profiles and student recipes this install knows.

May import: stdlib, click, edgekit.core, edgekit.device (runtimes, to say which runtime is missing here).
"""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json):
    """List target profiles (targets/*.toml) with a one-line description each, and say when this machine
    lacks the runtime that serves a target's bundles (e.g. 32-bit ARM has no onnxruntime or LiteRT)."""
    from edgekit.core.targets import list_targets

    found = list_targets()
    if as_json:
        click.echo(json.dumps([{"name": t.name, "path": str(t.path), **t.data} for t in found], indent=2))
        return
    from edgekit.device.runtimes import missing_reason, status

    width = max(len(t.name) for t in found)
    missing = set()
    for t in found:
        q = t.data["quantization"]["default"]
        runtime = t.data["runtime"]["name"]
        absent = not status(runtime).installed
        missing |= {runtime} if absent else set()
        click.echo(f"{t.name:<{width}}  {t.format:<6} {q:<16} {t.description}"
                   + (f"  [cannot serve here: {runtime} missing]" if absent else ""))
    for runtime in sorted(missing):
        click.echo(f"note: {missing_reason(runtime)}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recipes(as_json):
    """List student recipes (models/*.toml)."""
    from edgekit.core.recipes import list_recipes

    found = list_recipes()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "path": str(r.path), **r.data} for r in found], indent=2))
        return
    width = max(len(r.name) for r in found)
    for r in found:
        click.echo(f"{r.name:<{width}}  {r.task:<18} {r.data['description']}")
