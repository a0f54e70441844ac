"""The coral build's compile stage: predict Edge TPU op mapping, run `edgetpu_compiler` when it is
available, and put prediction and compiler result side by side.

The compiler (x86-64 Debian package from Coral's apt repository; not on PyPI) is found on PATH or
given with `edgekit build --compiler PATH`. Its `-s` output is parsed (header lines and the
"Operator  Count  Status" table) and compared with the prediction per (op, status); differences are
recorded in the manifest and printed, never dropped. Without the compiler the stage records the
prediction and the exact command to run where the compiler exists.
May import: stdlib, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from edgekit.core.errors import BuildError

_HEADER = {
    "version": r"Edge TPU Compiler version (\S+)",
    "compile_ms": r"Model compiled successfully in (\d+) ms",
    "input_model": r"Input model: (.+)",
    "output_model": r"Output model: (.+)",
    "on_chip_used": r"On-chip memory used for caching model parameters: (\S+)",
    "on_chip_remaining": r"On-chip memory (?:remaining|available) for caching model parameters: (\S+)",
    "off_chip_used": r"Off-chip memory used for streaming uncached model parameters: (\S+)",
    "tpu_subgraphs": r"Number of Edge TPU subgraphs: (\d+)",
    "total_ops": r"Total number of operations: (\d+)",
    "ops_on_tpu": r"Number of operations that will run on Edge TPU: (\d+)",
    "ops_on_cpu": r"Number of operations that will run on CPU: (\d+)",
}
_INTS = {"compile_ms", "tpu_subgraphs", "total_ops", "ops_on_tpu", "ops_on_cpu"}
_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _bytes(text: str) -> int:
    m = re.fullmatch(r"([\d.]+)(B|KiB|MiB|GiB)", text)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else -1


def parse_compiler_log(text: str) -> dict:
    """Fields of an `edgetpu_compiler -s` report: header values and the operation table rows
    [{op, count, status}]. When every op maps, the compiler omits the CPU/TPU counts: they are
    then derived from the table."""
    out: dict = {}
    for key, pattern in _HEADER.items():
        m = re.search(pattern, text)
        if m:
            value = m.group(1).strip()
            out[key] = int(value) if key in _INTS else value
    for key in ("on_chip_used", "on_chip_remaining", "off_chip_used"):
        if key in out:
            out[key + "_bytes"] = _bytes(out[key])
    rows, in_table = [], False
    for line in text.splitlines():
        if re.match(r"^Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        m = _ROW.match(line) if in_table else None
        if m:
            rows.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)})
    out["operations"] = rows
    if rows and "ops_on_tpu" not in out:
        out["ops_on_tpu"] = sum(r["count"] for r in rows if r["status"] == "Mapped to Edge TPU")
        out["ops_on_cpu"] = sum(r["count"] for r in rows) - out["ops_on_tpu"]
    out["compiled"] = "compile_ms" in out
    return out


def compare(predicted: Counter, actual_rows: list[dict]) -> list[dict]:
    """(op, status) counts where prediction and compiler disagree."""
    actual = Counter()
    for r in actual_rows:
        actual[(r["op"], r["status"])] += r["count"]
    diffs = []
    for key in sorted(set(predicted) | set(actual)):
        if predicted.get(key, 0) != actual.get(key, 0):
            diffs.append({"op": key[0], "status": key[1], "predicted": predicted.get(key, 0),
                          "compiler": actual.get(key, 0)})
    return diffs


def compile_command(model: Path, out_dir: Path, compiler: str = "edgetpu_compiler") -> list[str]:
    return [compiler, "-s", "-o", str(out_dir), str(model)]


def find_compiler(explicit: str | None) -> str | None:
    if explicit:
        path = shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
        if path is None:
            raise BuildError(f"Edge TPU compiler not found at {explicit}")
        return path
    return shutil.which("edgetpu_compiler")


def run_compile_stage(model: Path, out_dir: Path, compiler: str | None, log=print, timeout: float = 900) -> dict:
    """Predict, then compile if a compiler is available. Returns the record for the manifest;
    a compiled model lands in out_dir/<model stem>_edgetpu.tflite."""
    from edgekit.device.coral_check import predict

    preds = predict(model)
    record: dict = {"prediction": [_summary(p) for p in preds]}
    for p in preds:
        t = p.totals()
        log(f"    Edge TPU prediction [{p.name}]: {t['ops_mapped']}/{t['ops']} ops, "
            f"{100 * t['mac_share_on_tpu']:.1f}% of MACs on the TPU")
    path = find_compiler(compiler)
    cmd = compile_command(Path(model.name), Path("."))
    if path is None:
        record["compiler"] = {"compiled": False, "pending": True,
                              "command": f"cd BUNDLE && {shlex.join(cmd)}",
                              "note": "edgetpu_compiler was not found on PATH; the bundle holds the CPU-runnable "
                                      "full-int8 model. Run the command on an x86-64 Linux machine with Coral's "
                                      "edgetpu-compiler package, or rebuild there with --compiler PATH."}
        log("    edgetpu_compiler not found: compile step pending (see `edgekit inspect`)")
        return record
    run = subprocess.run(compile_command(model, out_dir, path), capture_output=True, text=True, timeout=timeout)
    text = run.stdout + "\n" + run.stderr
    (out_dir / "edgetpu_compiler.log").write_text(text)
    parsed = parse_compiler_log(text)
    parsed["exit_code"] = run.returncode
    compiled = out_dir / (model.stem + "_edgetpu.tflite")
    if run.returncode != 0 or not compiled.is_file():
        parsed["compiled"] = False
        record["compiler"] = parsed
        log(f"    edgetpu_compiler failed (exit {run.returncode}); the CPU model is packaged, log recorded")
        return record
    predicted = Counter((o.op, o.status) for p in preds for o in p.ops)
    parsed["disagreements"] = compare(predicted, parsed["operations"])
    parsed["file"] = compiled.name
    record["compiler"] = parsed
    for d in parsed["disagreements"]:
        log(f"    prediction vs compiler: {d['op']} '{d['status']}': predicted {d['predicted']}, compiler {d['compiler']}")
    return record


def _summary(pred) -> dict:
    counts = Counter((o.op, o.status) for o in pred.ops)
    return {"subgraph": pred.name, "totals": pred.totals(),
            "by_status": [{"op": op, "status": st, "count": n} for (op, st), n in sorted(counts.items())]}
