"""`edgekit coral ...`: Edge TPU tools (op-mapping prediction). Imports no torch.

May import: stdlib, click, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.core.errors import ConfigError


@click.group()
def coral():
    """Coral Edge TPU tools."""


def _model_path(path: Path) -> Path:
    if path.is_dir():
        path = path / "model.tflite"
    if not path.is_file():
        raise ConfigError(f"no .tflite model at {path}")
    return path


@coral.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every op, statuses, totals).")
@click.option("--subgraph", default=None, help="Only this subgraph (signature), e.g. decode.")
def check(model, as_json, subgraph):
    """Predict which ops of MODEL (.tflite file or bundle folder) the Edge TPU compiler maps.

    \b
    Each op gets the compiler's own status words and a plain-language reason, from Coral's
    published rules (edgekit/device/coral_rules.py): 8-bit tensors only, static shapes, at most 3
    non-unit innermost dimensions, listed ops with their limits, and one TPU segment (everything
    after the first unmapped op runs on the CPU). Totals: ops mapped, share of multiply-accumulates
    on the TPU, parameter bytes vs the ~8 MB on-chip cache. A prediction: the compiler decides.
    """
    from edgekit.device.coral_check import predict, report

    path = _model_path(model)
    try:
        preds = predict(path)
    except Exception as exc:  # a non-flatbuffer file makes the schema reader fail in various ways
        raise ConfigError(f"{path}: not a readable .tflite model ({type(exc).__name__}: {exc})") from None
    if subgraph is not None:
        names = [p.name for p in preds]
        preds = [p for p in preds if p.name == subgraph]
        if not preds:
            raise ConfigError(f"{path} has no subgraph '{subgraph}'; it has: {', '.join(names)}")
    if as_json:
        click.echo(json.dumps({"model": str(path), "subgraphs": [p.to_dict() for p in preds]}, indent=2))
    else:
        click.echo(report(preds))
