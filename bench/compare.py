"""edgekit vs llama.cpp vs transformers eager on the same student weights, and the decode roofline.

    python bench/compare.py [--quick] [--student DIR] [--threads 2] [--rounds N] [--out-dir DIR]

What it runs (every engine in its own long-lived subprocess, bench/compare_worker.py, fed the
same token ids, the same thread count, batch 1):
- edgekit's device runtime on bundles built from the student with `edgekit build` (cached):
  onnx-cpu int8, onnx-cpu 4-bit, arm-cpu TFLite dynamic int8 and 4-bit (block 32), mobile-gpu TFLite fp16 (on the CPU:
  no GPU delegate on this machine), coral full-int8 TPU segments (on the CPU: no Edge TPU);
- llama.cpp through llama-cpp-python, in its own venv (built once, ~7 min, cached under
  $EDGEKIT_HOME/bench; never a dependency of edgekit): the student converted to GGUF with
  llama.cpp's own converter (from the llama-cpp-python sdist), quantized to Q8_0 and Q4_0;
- transformers `generate` (eager attention, fp32) on the student folder.
Measured per engine (speed rounds first, then peak RSS, then perplexity): prefill tokens/s (a 128-token prompt), decode tokens/s (128 new tokens,
greedy), in interleaved rounds (each round runs every engine once, in rotating order; medians);
peak RSS of the engine's process; model bytes; perplexity on held-out text from the engine's own
logits (llama.cpp with logits for every position); the decode roofline = memory bandwidth
(numpy streaming copy) / weight bytes read per generated token, and each engine's share of it.
Writes JSON, a markdown table (ratios vs llama.cpp Q8_0) and a PNG (decode tok/s vs perplexity,
marker area ~ size) to --out-dir (default bench/results/compare).
`--quick`: 2 rounds, 512 evaluation tokens (15 minutes or less here once the llama.cpp venv,
the GGUF files and the bundles are cached); the full run: 5 rounds, 2,040 evaluation tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LLAMA_CPP_PYTHON = "0.3.36"  # pinned: the converter and the runtime come from the same llama.cpp

EDGEKIT_VARIANTS = [  # (name, target, precision)
    ("edgekit onnx int8", "onnx-cpu", "int8-dynamic"),
    ("edgekit onnx 4-bit", "onnx-cpu", "int4-weight-only"),
    ("edgekit tflite int8", "arm-cpu", "int8-dynamic"),
    ("edgekit tflite 4-bit", "arm-cpu", "int4-dynamic"),
    ("edgekit tflite fp16", "mobile-gpu", "fp16"),
    ("edgekit coral int8 (CPU)", "coral-256", "int8-full"),
]
LLAMA_VARIANTS = [("llama.cpp Q8_0", "Q8_0"), ("llama.cpp Q4_0", "Q4_0")]
ANCHOR = "llama.cpp Q8_0"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


# ---------------------------------------------------------------- llama.cpp: venv, converter, GGUF

def llama_env(cache: Path) -> tuple[Path, Path]:
    """(python of the llama-cpp-python venv, llama.cpp source folder with the converter)."""
    venv = cache / f"llama-cpp-{LLAMA_CPP_PYTHON}"
    py = venv / "bin" / "python"
    src = cache / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-src"
    if not (src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        say(f"fetching the llama-cpp-python {LLAMA_CPP_PYTHON} source (for llama.cpp's GGUF converter)")
        dl = cache / "sdist"
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(dl)])
        with tarfile.open(next(dl.glob("llama_cpp_python-*.tar.gz"))) as tar:
            top = tar.getnames()[0].split("/")[0]
            tar.extractall(cache, filter="data")
        (cache / top).rename(src)
    if not py.is_file() or subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode:
        say(f"building llama-cpp-python {LLAMA_CPP_PYTHON} in its own venv {venv} (one time, ~7 min on 2 cores)")
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(py), "-m", "pip", "install", "-q", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "numpy"])
    return py, src


def gguf_files(student: Path, work: Path, llama_py: Path, src: Path) -> dict[str, Path]:
    """The student as GGUF: f32 from llama.cpp's converter, then Q8_0 and Q4_0 (cached)."""
    work.mkdir(parents=True, exist_ok=True)
    f32 = work / "student-f32.gguf"
    if not f32.is_file():
        say("converting the student to GGUF (llama.cpp's convert_hf_to_gguf.py)")
        env = dict(os.environ, PYTHONPATH=str(src / "vendor" / "llama.cpp" / "gguf-py"))
        run([sys.executable, str(src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"), str(student),
             "--outfile", str(f32), "--outtype", "f32"], env=env)
    out = {}
    for name, qtype in LLAMA_VARIANTS:
        q = work / f"student-{qtype}.gguf"
        if not q.is_file():
            say(f"quantizing GGUF to {qtype} (llama_model_quantize)")
            code = ("import ctypes, llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); "
                    f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{qtype}; "
                    "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), "
                    "ctypes.byref(p)))")
            run([str(llama_py), "-c", code, str(f32), str(q)])
        out[name] = q
    return out


# ---------------------------------------------------------------- edgekit bundles

def bundles(student: Path, work: Path, names: list[str]) -> dict[str, Path]:
    """edgekit bundles of the student for each variant, built with `edgekit build` (cached)."""
    recipe = work / "compare-student.toml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    text = f'''name = "compare-student"
description = "the student under benchmark, used as is (no training)"
task = "text-generation"
[teacher]
source = "path:{student.resolve()}"
[student]
mode = "teacher"
[data]
train = ["shared:data/tinystories/tinystories_v1_validation_head.txt", "shared:data/wikitext-2/raw/wiki.test.raw"]
[verify]
prompts = ["Once upon a time", "The capital of France is", "Write a haiku about the sea."]
'''
    if not recipe.is_file() or recipe.read_text() != text:
        recipe.write_text(text)
    # The coral target caps sequences at 128 (static shapes for a one-graph export); its TPU-segment
    # layout keeps the KV cache on the host, so the benchmark's 128 + 128 tokens only need a longer cap.
    coral = (ROOT / "targets/coral.toml").read_text()
    (work / "coral-256.toml").write_text(coral.replace('name = "coral"', 'name = "coral-256"')
                                         .replace("max_sequence_length = 128", "max_sequence_length = 256"))
    out = {}
    for name, target, precision in EDGEKIT_VARIANTS:
        if name not in names:
            continue
        target = str(work / "coral-256.toml") if target == "coral-256" else target
        d = work / "bundles" / f"{Path(target).stem}-{precision}"
        if not (d / "manifest.json").is_file():
            say(f"building {name}: edgekit build -t {target} --precision {precision}")
            t0 = time.perf_counter()
            run([sys.executable, "-m", "edgekit", "build", "-r", str(recipe), "-t", target, "--precision", precision,
                 "--no-gate", "-o", str(d), "--work-dir", str(work / "build" / f"{Path(target).stem}-{precision}")])
            say(f"built {name} in {time.perf_counter() - t0:.0f} s")
        out[name] = d
    return out


def bundle_model_bytes(d: Path) -> int:
    from edgekit.device.benchmark import model_bytes

    return model_bytes(json.loads((d / "manifest.json").read_text()))


# ---------------------------------------------------------------- roofline inputs

def weight_bytes_per_token(kind: str, path: Path) -> int:
    """Bytes of weights a decode step reads: every matrix once, but only one row of an embedding
    table used just for lookup (a tied table is also the LM head, so it is read in full)."""
    if kind == "edgekit":  # one definition with `edgekit inspect --board` (edgekit/device/speed.py)
        from edgekit.device.speed import weight_bytes_per_token as bundle_weight_bytes

        return bundle_weight_bytes(path, json.loads((path / "manifest.json").read_text()))
    if kind == "llama":
        from gguf import GGUFReader

        sizes = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
        tied = "output.weight" not in sizes
        return sum(v for k, v in sizes.items() if tied or k != "token_embd.weight")
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "np") as f:  # tied student: embedding = LM head
        return sum(f.get_tensor(k).nbytes for k in f.keys())


def memory_bandwidth(megabytes: int = 256, repeats: int = 7) -> float:
    """Bytes per second of a numpy streaming copy (read + write counted), best of `repeats`."""
    import numpy as np

    a = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


# ---------------------------------------------------------------- engines

class Worker:
    """A bench/compare_worker.py subprocess; `ask(cmd)` sends one JSON line and reads the answer."""

    def __init__(self, name: str, python: Path | str, kind: str, path: Path, threads: int):
        self.name, self.kind, self.path = name, kind, path
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([str(python), str(ROOT / "bench/compare_worker.py"), kind, str(path),
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, bufsize=1)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"{self.name}: worker exited (code {self.proc.wait()})")
        out = json.loads(line)
        if "error" in out:
            sys.exit(f"{self.name}: {out['error']}")
        return out

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------- main

def eval_data(recipe: Path, student: Path, eval_tokens: int, window: int, prompt_tokens: int):
    """(evaluation windows, prompt ids): held-out text of the recipe's training files, tokenized
    once with the student's tokenizer; the prompt is the held-out text after the evaluated part."""
    from edgekit.workshop.evaluate import default_eval_texts
    from edgekit.workshop.verify import eval_token_ids
    from edgekit.core.recipes import load_recipe
    from edgekit.device import quality
    from edgekit.device.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(student / "tokenizer.json", [])
    texts, _ = default_eval_texts(load_recipe(str(recipe)))
    ids = eval_token_ids(tok, list(texts.values()), eval_tokens + 1 + prompt_tokens)
    return quality.windows(ids[: eval_tokens + 1], window), ids[-prompt_tokens:]


def add_predicted(rows: list[dict], board) -> None:
    """For each edgekit row, the predicted decode / prefill tokens/s of its bundle on `board`
    (edgekit/device/speed.py; None where no efficiency was measured for its runtime), under keys
    predicted_<board>_decode_tokens_per_second and ..._prefill_...; other engines get none."""
    from edgekit.device.speed import predict

    for r in rows:
        if r["engine"] != "edgekit":
            continue
        path = Path(r["path"])
        rec = predict(path, json.loads((path / "manifest.json").read_text()), board)
        for key in ("decode", "prefill"):
            r[f"predicted_{board.name}_{key}_tokens_per_second"] = rec[key]["tokens_per_second"]


def table(rows: list[dict], board: str | None = None) -> str:
    """The markdown table; with `board`, a last column of predicted decode tok/s there (edgekit rows)."""
    extra = f" predicted {board} decode tok/s |" if board else ""
    head = ("| engine | size MB | perplexity | x fp32 | prefill tok/s | x Q8_0 | decode tok/s | x Q8_0 "
            "| roofline tok/s | share | peak RSS MB |" + extra + "\n|" + "---|" * (12 if board else 11))
    lines = [head]
    for r in rows:
        line = (f"| {r['name']} | {r['model_bytes'] / 1e6:.1f} | {r['perplexity']:.3f} | "
                f"{r['perplexity_vs_fp32']:.4f} | {r['prefill_tokens_per_second']:.0f} | "
                f"{r['prefill_vs_anchor']:.2f} | {r['decode_tokens_per_second']:.1f} | {r['decode_vs_anchor']:.2f} | "
                f"{r['roofline_tokens_per_second']:.0f} | {r['roofline_share']:.2f} | "
                f"{(r['peak_rss_bytes'] or 0) / 1e6:.0f} |")
        if board:
            v = r.get(f"predicted_{board}_decode_tokens_per_second")
            line += f" {v:.0f} |" if v is not None else " - |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = max(r["model_bytes"] for r in rows)
    for i, r in enumerate(rows):
        color = {"edgekit": "C0", "llama": "C1", "transformers": "C2"}[r["engine"]]
        ax.scatter([r["decode_tokens_per_second"]], [r["perplexity"]], s=40 + 900 * r["model_bytes"] / biggest,
                   color=color, alpha=0.6, edgecolors="black")
        ax.annotate(f"{r['name']}\n{r['model_bytes'] / 1e6:.0f} MB", (r["decode_tokens_per_second"], r["perplexity"]),
                    textcoords="offset points", xytext=(8, 8 if i % 2 else -18), fontsize=7)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=lab, alpha=0.6) for c, lab in
                       (("C0", "edgekit device runtime"), ("C1", "llama.cpp (llama-cpp-python)"),
                        ("C2", "transformers eager"))], loc="upper left", fontsize=8)
    ax.set(xlabel="decode tokens/s (batch 1, same threads; higher is better)",
           ylabel="perplexity on held-out text (lower is better)",
           title="Same student weights: speed vs quality (marker area ~ model size)")
    ax.margins(0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, default=ROOT / "bench/results/distill-smollm2/student")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 512 evaluation tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="speed rounds [5; --quick 2]")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens for perplexity [2040; --quick 512]")
    ap.add_argument("--window", type=int, default=255, help="perplexity window (tokens fed per window)")
    ap.add_argument("--skip", action="append", default=[], help="leave out an engine by name (repeatable)")
    ap.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR",
                    help="also run this edgekit bundle under NAME, e.g. one built by an earlier edgekit (repeatable)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench/results/compare")
    ap.add_argument("--cache", type=Path, default=None, help="llama.cpp venv/source cache [$EDGEKIT_HOME/bench]")
    ap.add_argument("--board", default=None, metavar="NAME",
                    help="add each edgekit variant's PREDICTED decode/prefill tok/s on this board (boards/NAME.toml)")
    args = ap.parse_args()
    board = None
    if args.board:
        from edgekit.core.boards import load_board
        from edgekit.core.errors import EdgekitError

        try:
            board = load_board(args.board)
        except EdgekitError as exc:
            sys.exit(f"--board: {exc}")
    rounds = args.rounds or (2 if args.quick else 5)
    eval_tokens = args.eval_tokens or (512 if args.quick else 2040)
    if not (args.student / "config.json").is_file():
        sys.exit(f"no student at {args.student}: run bench/distill.py first or pass --student DIR")
    from edgekit.core.paths import edgekit_home

    started = time.perf_counter()
    cache = args.cache or edgekit_home() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    work = args.out_dir
    ggufs, llama_py = {}, None
    if any(n not in args.skip for n, _ in LLAMA_VARIANTS):  # all skipped: no llama.cpp build
        llama_py, src = llama_env(cache)
        ggufs = gguf_files(args.student, work / "gguf", llama_py, src)
    names = [n for n, _, _ in EDGEKIT_VARIANTS if n not in args.skip]
    built = bundles(args.student, work, names)
    for spec in args.bundle:
        name, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "manifest.json").is_file():
            sys.exit(f"--bundle {spec}: expected NAME=DIR with DIR an edgekit bundle (a manifest.json)")
        built[name] = Path(folder)
    wins, prompt = eval_data(work / "compare-student.toml", args.student, eval_tokens, args.window,
                             args.prompt_tokens)
    say(f"{len(wins)} windows ({sum(len(w) - 1 for w in wins)} held-out tokens), prompt {len(prompt)} tokens, "
        f"{args.new_tokens} new tokens, {args.threads} threads, {rounds} rounds")

    specs = [(n, sys.executable, "edgekit", p) for n, p in built.items()]
    specs += [(n, llama_py, "llama", p) for n, p in ggufs.items() if n not in args.skip]
    if "transformers fp32" not in args.skip:
        specs.append(("transformers fp32", sys.executable, "transformers", args.student))
    workers = []
    try:
        for name, py, kind, path in specs:
            say(f"starting {name}")
            workers.append(Worker(name, py, kind, path, args.threads))
        speeds = {w.name: [] for w in workers}
        for w in workers:
            w.ask(cmd="speed", prompt=prompt, new=8)  # warm-up
        for r in range(rounds):
            k = r % len(workers)
            for w in workers[k:] + workers[:k]:
                speeds[w.name].append(w.ask(cmd="speed", prompt=prompt, new=args.new_tokens))
            say(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {(args.new_tokens - 1) / s[-1]['decode_seconds']:.0f}" for n, s in speeds.items()))
        rss = {w.name: w.ask(cmd="rss")["peak_rss_bytes"] for w in workers}  # before scoring buffers exist
        ppl = {}
        for w in workers:
            t0 = time.perf_counter()
            ppl[w.name] = w.ask(cmd="nll", windows=wins)
            say(f"{w.name}: perplexity {ppl[w.name]['perplexity']:.3f} ({time.perf_counter() - t0:.0f} s)")
    finally:
        for w in workers:
            w.close()

    bandwidth = memory_bandwidth()
    say(f"memory bandwidth (numpy streaming copy, read + write): {bandwidth / 1e9:.2f} GB/s")
    rows = []
    for w in workers:
        s = speeds[w.name]
        size = bundle_model_bytes(w.path) if w.kind == "edgekit" else (
            w.path.stat().st_size if w.kind == "llama" else (w.path / "model.safetensors").stat().st_size)
        per_token = weight_bytes_per_token(w.kind, w.path)
        decode = statistics.median((args.new_tokens - 1) / x["decode_seconds"] for x in s)
        rows.append({
            "name": w.name, "engine": w.kind, "path": str(w.path), "model_bytes": size,
            "weight_bytes_per_token": per_token, "perplexity": round(ppl[w.name]["perplexity"], 4),
            "eval_tokens": ppl[w.name]["count"],
            "prefill_tokens_per_second": round(statistics.median(len(prompt) / x["prefill_seconds"] for x in s), 1),
            "decode_tokens_per_second": round(decode, 1),
            "decode_runs": [round((args.new_tokens - 1) / x["decode_seconds"], 1) for x in s],
            "peak_rss_bytes": rss[w.name],
            "roofline_tokens_per_second": round(bandwidth / per_token, 1),
            "roofline_share": round(decode / (bandwidth / per_token), 3),
        })
    if board is not None:
        add_predicted(rows, board)
    by = {r["name"]: r for r in rows}
    anchor = by.get(ANCHOR)
    fp32 = by.get("transformers fp32")
    for r in rows:
        for key in ("prefill", "decode"):
            r[f"{key}_vs_anchor"] = round(r[f"{key}_tokens_per_second"] / anchor[f"{key}_tokens_per_second"], 3) \
                if anchor else float("nan")
        r["perplexity_vs_fp32"] = round(r["perplexity"] / fp32["perplexity"], 4) if fp32 else float("nan")
        if fp32:
            r["decode_vs_transformers"] = round(r["decode_tokens_per_second"] / fp32["decode_tokens_per_second"], 2)
    result = {
        "date": time.strftime("%Y-%m-%d"), "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short",
                                                                     "HEAD"], capture_output=True, text=True).stdout.strip(),
        "quick": args.quick, "student": str(args.student), "threads": args.threads, "rounds": rounds,
        "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "eval_tokens": sum(len(w) - 1 for w in wins),
        "memory_bandwidth_bytes_per_second": round(bandwidth), "llama_cpp_python": LLAMA_CPP_PYTHON,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 1), "rows": rows,
        "predicted_board": ({"name": board.name, "predicted": True, "measured": False,
                             "model": "edgekit/device/speed.py", "source": board.performance_source}
                            if board else None),
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    md = table(rows, board.name if board else None)
    (work / "compare.md").write_text(md + "\n")
    plot(rows, work / "compare.png")
    print("\n" + md)
    say(f"wrote {work / 'compare.json'}, compare.md, compare.png ({result['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
