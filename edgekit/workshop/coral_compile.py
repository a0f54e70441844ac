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


def run_compile_stage(models: list[Path], out_dir: Path, compiler: str | None, log=print, timeout: float = 900,
                      host_macs_per_token: int | None = None) -> dict:
    """Predict every model file, then compile each if a compiler is available. Returns the record
    for the manifest; compiled models land in out_dir/<stem>_edgetpu.tflite (record["compiler"]["files"]).
    `host_macs_per_token`: MACs a segmented runner does on the CPU outside these files (attention)."""
    from edgekit.device.coral_check import predict

    preds = [(m, p) for m in models for p in predict(m)]
    record: dict = {"prediction": [dict(_summary(p), file=m.name) for m, p in preds]}
    tpu = sum(p.totals()["macs_on_tpu"] for _, p in preds)
    total = sum(p.totals()["macs"] for _, p in preds) + (host_macs_per_token or 0)
    record["mac_share_on_tpu"] = round(tpu / total, 4) if total else 0.0
    record["macs_per_token"] = {"tpu": tpu, "cpu": total - tpu, "host_attention": host_macs_per_token or 0}
    record["parameter_bytes_on_tpu"] = sum(p.totals()["parameter_bytes_on_tpu"] for _, p in preds)
    ops = sum(p.totals()["ops"] for _, p in preds)
    mapped = sum(p.totals()["ops_mapped"] for _, p in preds)
    log(f"    Edge TPU prediction: {mapped}/{ops} ops in {len(models)} file(s), "
        f"{100 * record['mac_share_on_tpu']:.1f}% of multiply-accumulates on the TPU"
        + (" (host attention counted)" if host_macs_per_token else ""))
    path = find_compiler(compiler)
    if path is None:
        names = " ".join(shlex.quote(m.name) for m in models)
        record["compiler"] = {"compiled": False, "pending": True,
                              "command": f"cd BUNDLE && for f in {names}; do edgetpu_compiler -s -o . $f; done",
                              "note": "edgetpu_compiler was not found on PATH; the bundle holds the CPU-runnable "
                                      "full-int8 model. Run `edgekit coral compile BUNDLE` on an x86-64 Linux "
                                      "machine with Coral's edgetpu-compiler package, or rebuild there."}
        log("    edgetpu_compiler not found: compile step pending (see `edgekit inspect`)")
        return record
    logs, files, failed = [], [], []
    for m in models:
        run = subprocess.run(compile_command(m, out_dir, path), capture_output=True, text=True, timeout=timeout)
        text = run.stdout + "\n" + run.stderr
        (out_dir / (m.stem + "_edgetpu_compiler.log")).write_text(text)
        parsed = parse_compiler_log(text)
        parsed["exit_code"], parsed["model"] = run.returncode, m.name
        compiled = out_dir / (m.stem + "_edgetpu.tflite")
        if run.returncode != 0 or not compiled.is_file():
            failed.append(m.name)
            parsed["compiled"] = False
        else:
            files.append(compiled.name)
        logs.append(parsed)
    actual = [row for lg in logs for row in lg["operations"]]
    predicted = Counter((o.op, o.status) for _, p in preds for o in p.ops)
    comp = {"compiled": not failed, "files": files, "failed": failed, "logs": logs,
            "version": logs[0].get("version") if logs else None,
            "ops_on_tpu": sum(lg.get("ops_on_tpu", 0) for lg in logs),
            "ops_on_cpu": sum(lg.get("ops_on_cpu", 0) for lg in logs),
            "disagreements": compare(predicted, actual)}
    record["compiler"] = comp
    if failed:
        log(f"    edgetpu_compiler failed on {', '.join(failed)}; those run on the CPU, logs recorded")
    for d in comp["disagreements"]:
        log(f"    prediction vs compiler: {d['op']} '{d['status']}': predicted {d['predicted']}, compiler {d['compiler']}")
    return record


def _summary(pred) -> dict:
    counts = Counter((o.op, o.status) for o in pred.ops)
    return {"subgraph": pred.name, "totals": pred.totals(),
            "by_status": [{"op": op, "status": st, "count": n} for (op, st), n in sorted(counts.items())]}
