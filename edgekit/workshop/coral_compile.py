"""The coral build's compile stage: predict Edge TPU op mapping, run `edgetpu_compiler` when it is
available, and put prediction and compiler result side by side.

The compiler (x86-64 Debian package from Coral's apt repository; not on PyPI) is found on PATH or
given with `edgekit build --compiler PATH`. All segment models of a bundle are co-compiled in ONE call (they then share the ~8 MiB on-chip
parameter cache, filled in command-line order). Its `-s` output is parsed (header lines and the
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


def compile_command(models: list[Path], out_dir: Path, compiler: str = "edgetpu_compiler") -> list[str]:
    """ONE co-compiling invocation for every model: the compiler then shares the on-chip parameter cache
    between them, allocated in this order (coral.ai/docs/edgetpu/compiler, "Co-compiling multiple models");
    `-s` prints each model's operation table, `-o` names the output folder."""
    return [compiler, "-s", "-o", str(out_dir), *(str(m) for m in models)]


def compiler_order(models: list[Path], signature: dict | None) -> list[Path]:
    """Models in execution order (the signature's segment list; others after, by name): the order of
    the co-compile command line, which is also the order the on-chip cache is filled in."""
    order = [seg["file"] for seg in (signature or {}).get("segments", [])]
    return sorted(models, key=lambda m: (order.index(m.name) if m.name in order else len(order), m.name))


def split_compiler_log(text: str) -> list[str]:
    """A co-compile log cut into one part per model (each part from its "Input model:" line on);
    the shared header lines (version, compile time) are prefixed to every part."""
    marks = [m.start() for m in re.finditer(r"^Input model: ", text, flags=re.M)]
    if len(marks) <= 1:
        return [text]
    head = text[: marks[0]]
    return [head + text[a:b] for a, b in zip(marks, marks[1:] + [len(text)])]


def find_compiler(explicit: str | None) -> str | None:
    if explicit:
        path = shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
        if path is None:
            raise BuildError(f"Edge TPU compiler not found at {explicit}")
        return path
    return shutil.which("edgetpu_compiler")


def run_compile_stage(models: list[Path], out_dir: Path, compiler: str | None, log=print, timeout: float = 900,
                      host_macs_per_token: int | None = None, runner=None, signature: dict | None = None,
                      host_weight_bytes: int = 0) -> dict:
    """Predict every model file, then compile each if a compiler is available. Returns the record
    for the manifest; compiled models land in out_dir/<stem>_edgetpu.tflite (record["compiler"]["files"]).
    All models are co-compiled in one compiler call (compile_command); `runner` replaces subprocess.run (tests).
    `host_macs_per_token`: MACs a segmented runner does on the CPU outside these files (attention, a host
    LM head); `host_weight_bytes`: int8 weights it reads per token outside them (a host LM head).
    `signature`: the bundle's; sentence-form encoder segments (rows tokens per call) get the per-sentence verdict."""
    from edgekit.device.coral_check import predict

    preds = [(m, p) for m in models for p in predict(m)]
    record: dict = {"prediction": [dict(_summary(p), file=m.name) for m, p in preds]}
    sentence = (signature or {}).get("segment_form") == "sentence"
    per_call = int(signature["rows"]) if sentence else 1  # tokens per call: MACs below are per token
    tpu = sum(p.totals()["macs_on_tpu"] for _, p in preds) // per_call
    total = sum(p.totals()["macs"] for _, p in preds) // per_call + (host_macs_per_token or 0)
    record["mac_share_on_tpu"] = round(tpu / total, 4) if total else 0.0
    record["macs_per_token"] = {"tpu": tpu, "cpu": total - tpu, "host_attention": host_macs_per_token or 0}
    record["parameter_bytes_on_tpu"] = sum(p.totals()["parameter_bytes_on_tpu"] for _, p in preds)
    if host_weight_bytes:
        record["host_weight_bytes"] = host_weight_bytes
    ops = sum(p.totals()["ops"] for _, p in preds)
    mapped = sum(p.totals()["ops_mapped"] for _, p in preds)
    log(f"    Edge TPU prediction: {mapped}/{ops} ops in {len(models)} file(s), "
        f"{100 * record['mac_share_on_tpu']:.1f}% of multiply-accumulates on the TPU"
        + (" (host attention counted)" if host_macs_per_token else ""))
    from edgekit.device.coral_latency import verdict_record

    if sentence:
        from edgekit.device.coral_sentence import verdict_record as sentence_verdict

        record["verdict"] = sentence_verdict(record, signature)
    else:
        record["verdict"] = verdict_record(record)
    log("    " + record["verdict"]["default"]["verdict"])
    path = find_compiler(compiler)
    if path is None:
        command = " ".join(shlex.quote(a) for a in compile_command([Path(m.name) for m in models], Path(".")))
        record["compiler"] = {"compiled": False, "pending": True, "co_compiled": True,
                              "command": f"cd BUNDLE && {command}",
                              "note": "edgetpu_compiler was not found on PATH; the bundle holds the CPU-runnable "
                                      "full-int8 model. Run `edgekit coral compile BUNDLE` on an x86-64 Linux "
                                      "machine with Coral's edgetpu-compiler package, or rebuild there."}
        log("    edgetpu_compiler not found: compile step pending (see `edgekit inspect`)")
        return record
    record["compiler"] = co_compile(models, out_dir, path, runner or subprocess.run, timeout)
    comp = record["compiler"]
    logs = comp["logs"]
    actual = [row for lg in logs for row in lg["operations"]]
    predicted = Counter((o.op, o.status) for _, p in preds for o in p.ops)
    comp.update({"version": logs[0].get("version") if logs else None,
                 "ops_on_tpu": sum(lg.get("ops_on_tpu", 0) for lg in logs),
                 "ops_on_cpu": sum(lg.get("ops_on_cpu", 0) for lg in logs),
                 "disagreements": compare(predicted, actual)})
    if comp["failed"]:
        log(f"    edgetpu_compiler failed on {', '.join(comp['failed'])}; those run on the CPU, logs recorded")
    for d in comp["disagreements"]:
        log(f"    prediction vs compiler: {d['op']} '{d['status']}': predicted {d['predicted']}, compiler {d['compiler']}")
    return record


def _summary(pred) -> dict:
    counts = Counter((o.op, o.status) for o in pred.ops)
    return {"subgraph": pred.name, "totals": pred.totals(),
            "by_status": [{"op": op, "status": st, "count": n} for (op, st), n in sorted(counts.items())]}


def co_compile(models: list[Path], out_dir: Path, path: str, runner, timeout: float) -> dict:
    """Run the one co-compile call (`runner`: subprocess.run or a fake with its signature); write its log
    to out_dir/edgetpu_compiler.log, parse it per model and list which compiled files exist."""
    cmd = compile_command(models, out_dir, path)
    run = runner(cmd, capture_output=True, text=True, timeout=timeout)
    text = (run.stdout or "") + "\n" + (run.stderr or "")
    (out_dir / "edgetpu_compiler.log").write_text(text)
    parts = split_compiler_log(text)
    logs, files, failed = [], [], []
    for k, m in enumerate(models):
        parsed = parse_compiler_log(parts[k] if len(parts) == len(models) else text)
        parsed["exit_code"], parsed["model"] = run.returncode, m.name
        compiled = out_dir / (m.stem + "_edgetpu.tflite")
        if run.returncode != 0 or not compiled.is_file():
            failed.append(m.name)
            parsed["compiled"] = False
        else:
            files.append(compiled.name)
        logs.append(parsed)
    return {"compiled": not failed, "co_compiled": True, "command": " ".join(shlex.quote(a) for a in cmd),
            "files": files, "failed": failed, "logs": logs}
