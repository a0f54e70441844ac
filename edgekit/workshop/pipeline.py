"""Run build stages in order, each in its own folder, and record what each did.

A stage is a function `fn(ctx, stage_dir, outputs_so_far) -> StageOutput`. The record for the
manifest holds: name, inputs (files of earlier stages it was given, with sha256), outputs (its
own files with sha256 and bytes), parameters, metrics and wall-clock seconds.
May import: stdlib, edgekit.core.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.core.bundle import file_record


@dataclass
class StageOutput:
    """What a stage produced: named files, values passed on to later stages, and its record data."""

    files: dict[str, Path] = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


@dataclass
class Stage:
    name: str
    fn: Callable
    uses: tuple[str, ...] = ()  # earlier stages whose files this one reads (for the record)


def _records_for(files: dict[str, Path], root: Path) -> list[dict]:
    out = []
    for key, p in files.items():
        paths = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in paths:
            rec = file_record(q, root)
            rec["role"] = key
            out.append(rec)
    return out


def run_stages(stages: list[Stage], work_dir: Path, ctx, log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """Run `stages` under `work_dir`; returns (outputs by stage name, stage records)."""
    outputs: dict[str, StageOutput] = {}
    records: list[dict] = []
    for i, stage in enumerate(stages, 1):
        stage_dir = work_dir / f"{i:02d}-{stage.name}"
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True)
        log(f"[{i}/{len(stages)}] {stage.name} ...")
        t0 = time.perf_counter()
        out = stage.fn(ctx, stage_dir, outputs)
        seconds = time.perf_counter() - t0
        outputs[stage.name] = out
        inputs = [r for u in stage.uses for r in _records_for(outputs[u].files, work_dir)]
        records.append(
            {
                "name": stage.name,
                "seconds": round(seconds, 3),
                "inputs": inputs,
                "outputs": _records_for(out.files, work_dir),
                "parameters": out.parameters,
                "metrics": out.metrics,
            }
        )
        summary = ", ".join(f"{k}={v}" for k, v in out.metrics.items() if not isinstance(v, (dict, list)))
        log(f"[{i}/{len(stages)}] {stage.name} done in {seconds:.1f} s" + (f" ({summary})" if summary else ""))
    return outputs, records
