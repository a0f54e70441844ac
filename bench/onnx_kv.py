"""ONNX decode with the KV cache copied every step vs updated in place, side by side in one run.

    python bench/onnx_kv.py --bundle copy=OLD_BUNDLE --bundle inplace=NEW_BUNDLE [--contexts 32 256 512]
                            [--threads 2] [--rounds 5] [--steps 32] [--batch 4] [--out FILE.json]

Each bundle is opened with edgekit's device runner (edgekit.device.onnx_model: the copying path for a
graph with Concat'ed presents, the in-place path for a GroupQueryAttention graph, by its inputs).
Per context C: a prompt of min(C, max_sequence_length - steps) tokens of real text (TinyStories
validation, from the shared reference folder, tokenized by the first bundle's tokenizer) is prefilled
(not timed), then `--steps` greedy decode steps are timed (forward of one token + numpy argmax, as
bench/compare.py's decode). Rounds run every bundle once per
context, rotating the order; medians over rounds. Also prints the decode roofline share as
bench/compare.py computes it: memory bandwidth (numpy streaming copy, read + write) / weight bytes
a decode step reads (edgekit.device.speed.weight_bytes_per_token), and the logits of the first
bundle vs each other (max abs diff over the prefill's last row and the timed steps, greedy tokens equal).
`--batch N`: also N requests' caches decoded together (forward_batch, serve --parallel's step; prompts
of the same length from nearby text) — total tokens/s and its ratio to one row's decode tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def open_bundle(path: Path, threads: int):
    from edgekit.device.onnx_model import open_onnx

    manifest = json.loads((path / "manifest.json").read_text())
    return open_onnx(path / manifest["model"]["file"], manifest, threads=threads)


def text_tokens(bundle: Path) -> list[int]:
    from tokenizers import Tokenizer

    from edgekit.core.paths import shared_dir

    path = shared_dir() / "data" / "tinystories" / "tinystories_v1_validation_head.txt"
    return Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(path.read_text()[:200_000]).ids


def decode_run(lm, prompt: list[int], steps: int) -> tuple[float, list[int], list[np.ndarray]]:
    """(seconds for `steps` decode steps, greedy tokens, their logits) after prefilling `prompt`."""
    cache = lm.new_cache()
    logits = lm.forward(prompt, cache, last_only=True)[-1]
    tokens, rows = [], [logits]
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = lm.forward([tokens[-1]], cache, last_only=True)[-1]
        rows.append(logits)
    return time.perf_counter() - t0, tokens, rows


def batch_run(lm, prompts: list[list[int]], steps: int) -> float:
    """Seconds for `steps` batched decode steps (forward_batch, one row per prompt) after prefilling each."""
    caches = [lm.new_cache() for _ in prompts]
    tokens = [int(np.argmax(lm.forward(p, c, last_only=True)[-1])) for p, c in zip(prompts, caches)]
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens = [int(t) for t in np.argmax(lm.forward_batch(tokens, caches), axis=-1)]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", required=True, help="NAME=DIR (the first is the reference)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 256, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=0, help="also time forward_batch steps of this many rows")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from compare import memory_bandwidth, weight_bytes_per_token

    bundles = {n: Path(d) for n, d in (b.split("=", 1) for b in args.bundle)}
    models = {n: open_bundle(d, args.threads) for n, d in bundles.items()}
    limit = min(m.max_sequence_length for m in models.values())
    text = text_tokens(next(iter(bundles.values())))
    times = {(n, c): [] for n in models for c in args.contexts}
    batch_times = {(n, c): [] for n in models for c in args.contexts}
    diffs, same = {}, {}
    for r in range(args.rounds):
        for c in args.contexts:
            steps = min(args.steps, limit - 1)
            start = (r * 997) % (len(text) - limit)  # a different passage each round
            prompt = text[start:start + min(c, limit - steps)]
            names = list(models)[r % len(models):] + list(models)[:r % len(models)]
            runs = {n: decode_run(models[n], prompt, steps) for n in names}
            if args.batch:
                batch_prompts = [text[start + 50 * i:start + 50 * i + len(prompt)] for i in range(args.batch)]
                for n in names:
                    batch_times[(n, c)].append(args.batch * steps / batch_run(models[n], batch_prompts, steps))
            ref = runs[next(iter(models))]
            for n, (seconds, tokens, rows) in runs.items():
                times[(n, c)].append(steps / seconds)
                d = max(float(np.max(np.abs(a - b))) for a, b in zip(ref[2], rows))
                diffs[(n, c)] = max(diffs.get((n, c), 0.0), d)
                same[(n, c)] = same.get((n, c), True) and tokens == ref[1]
    bandwidth = memory_bandwidth()
    rows = []
    for n, d in bundles.items():
        per_token = weight_bytes_per_token("edgekit", d)
        for c in args.contexts:
            tps = statistics.median(times[(n, c)])
            rows.append({"bundle": n, "context": c, "decode_tokens_per_second": round(tps, 1),
                         "roofline_tokens_per_second": round(bandwidth / per_token, 1),
                         "roofline_share": round(tps / (bandwidth / per_token), 3),
                         "max_abs_logit_diff_vs_first": diffs[(n, c)], "greedy_same_as_first": same[(n, c)],
                         "rounds": times[(n, c)]})
            if args.batch:
                total = statistics.median(batch_times[(n, c)])
                rows[-1].update({f"batch{args.batch}_total_tokens_per_second": round(total, 1),
                                 f"batch{args.batch}_over_one_row": round(total / tps, 3),
                                 "batch_rounds": batch_times[(n, c)]})
    print(f"{'bundle':>10} {'ctx':>5} {'tok/s':>8} {'roofline':>9} {'share':>6} {'max|dlogit|':>12} greedy=")
    for x in rows:
        print(f"{x['bundle']:>10} {x['context']:>5} {x['decode_tokens_per_second']:>8.1f} "
              f"{x['roofline_tokens_per_second']:>9.1f} {x['roofline_share']:>6.3f} "
              f"{x['max_abs_logit_diff_vs_first']:>12.2e} {x['greedy_same_as_first']}"
              + (f"  batch {args.batch}: {x[f'batch{args.batch}_total_tokens_per_second']:.1f} tok/s total, "
                 f"{x[f'batch{args.batch}_over_one_row']:.2f}x one row" if args.batch else ""))
    print(f"bandwidth {bandwidth / 1e9:.1f} GB/s; threads {args.threads}; rounds {args.rounds}; steps {args.steps}")
    if args.out:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        args.out.write_text(json.dumps({"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": commit,
                                        "machine": platform.processor() or platform.machine(),
                                        "bandwidth_bytes_per_second": bandwidth, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
