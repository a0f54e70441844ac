"""Export benchmark: every variant of one student, side by side in one run.

    python bench/export.py [--student bench/results/distill-smollm2/student] [--recipe smollm2-135m]
                           [--threads 2] [--rounds 5] [--new-tokens 64]

For ONNX (fp32, int8 block-wise, 4-bit) and TFLite (fp32, fp16, dynamic int8, weight-only int8):
bytes on disk (model + host tables), held-out perplexity through edgekit's device runtime vs the
fp32 PyTorch student on the same windows, and decode tokens/s at batch 1 with `--threads` threads,
measured through edgekit.device.generate. Decode speed is timed in interleaved rounds (each round
runs every variant once) and reported as medians and as ratios to ONNX int8, because this machine
is noisy. Prints a table and writes bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = [  # (name, format, precision)
    ("onnx-fp32", "onnx", "fp32"),
    ("onnx-int8", "onnx", "int8-dynamic"),
    ("onnx-int4", "onnx", "int4-weight-only"),
    ("tflite-fp32", "tflite", "fp32"),
    ("tflite-fp16", "tflite", "fp16"),
    ("tflite-int8-dynamic", "tflite", "int8-dynamic"),
    ("tflite-int8-weight-only", "tflite", "int8-weight-only"),
]


def _bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, default=ROOT / "bench/results/distill-smollm2/student")
    ap.add_argument("--recipe", default="smollm2-135m", help="recipe whose held-out text is evaluated")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/results/export-work")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--max-seq", type=int, default=256)
    ap.add_argument("--prefill", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/export.json")
    args = ap.parse_args()
    if not (args.student / "config.json").is_file():
        sys.exit(f"no student at {args.student}: run bench/distill.py first or pass --student DIR")

    import torch

    from edgekit.workshop import onnx_export, onnx_quantize, tflite_export, tflite_quantize
    from edgekit.workshop.evaluate import default_eval_texts
    from edgekit.workshop.teacher import load_causal_lm
    from edgekit.workshop.textdata import perplexity as torch_perplexity
    from edgekit.workshop.verify import eval_token_ids
    from edgekit.core.recipes import load_recipe
    from edgekit.device import quality
    from edgekit.device.generate import drain, generate
    from edgekit.device.onnx_model import open_onnx
    from edgekit.device.sampling import Sampler
    from edgekit.device.tflite_model import open_tflite
    from edgekit.device.tokenizer import TextTokenizer

    torch.set_num_threads(args.threads)
    model, _ = load_causal_lm(args.student)
    tok = TextTokenizer.from_file(args.student / "tokenizer.json", [])  # no EOS: fixed-length decode
    texts, _ = default_eval_texts(load_recipe(args.recipe))
    ids = eval_token_ids(tok, list(texts.values()), args.eval_tokens + 1)
    wins = quality.windows(ids, args.max_seq - 1)
    t0 = time.perf_counter()
    ref_ppl = torch_perplexity(model, torch.tensor(wins))
    print(f"PyTorch fp32 student: perplexity {ref_ppl:.3f} on {sum(len(w) - 1 for w in wins)} held-out tokens "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    exported = {}
    for fmt, export in (("onnx", onnx_export.export_onnx), ("tflite", tflite_export.export_tflite)):
        d = args.work / f"{fmt}-export"
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        sig = export(model, d / f"model.{fmt}", args.max_seq, args.prefill)
        exported[fmt] = (d / f"model.{fmt}", sig, time.perf_counter() - t0)
        print(f"exported {fmt} in {exported[fmt][2]:.0f} s", flush=True)

    rows, models = [], {}
    for name, fmt, precision in VARIANTS:
        src, sig, _ = exported[fmt]
        d = args.work / name
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        quant = onnx_quantize.quantize_onnx if fmt == "onnx" else tflite_quantize.quantize_tflite
        quant(src, d / src.name, precision, None)
        q_seconds = time.perf_counter() - t0
        manifest = {"model": {"max_sequence_length": args.max_seq}, "signature": sig}
        dev = (open_onnx if fmt == "onnx" else open_tflite)(d / src.name, manifest, threads=args.threads)
        t0 = time.perf_counter()
        ppl = quality.perplexity(dev, wins)
        models[name] = dev
        rows.append({"variant": name, "format": fmt, "precision": precision, "bytes": _bytes(d),
                     "quantize_seconds": round(q_seconds, 1), "perplexity": round(ppl, 4),
                     "perplexity_ratio": round(ppl / ref_ppl, 4), "eval_seconds": round(time.perf_counter() - t0, 1)})
        print(f"{name}: {rows[-1]['bytes'] / 1e6:.1f} MB, perplexity {ppl:.3f} ({ppl / ref_ppl:.4f}x)", flush=True)

    prompt = tok.encode("Once upon a time, there was a little robot who")
    speeds: dict[str, list[float]] = {r["variant"]: [] for r in rows}
    prefill_ms: dict[str, list[float]] = {r["variant"]: [] for r in rows}
    for r in range(args.rounds):
        for name, dev in models.items():
            res = drain(generate(dev, tok, prompt, args.new_tokens, Sampler(0.0)))
            speeds[name].append(res.decode_tokens_per_second)
            prefill_ms[name].append(res.prefill_seconds * 1000)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    base = statistics.median(speeds["onnx-int8"])
    fp32_bytes = {fmt: next(x["bytes"] for x in rows if x["variant"] == f"{fmt}-fp32") for fmt in ("onnx", "tflite")}
    for row in rows:
        s = speeds[row["variant"]]
        row.update({"decode_tokens_per_second": round(statistics.median(s), 1),
                    "decode_runs": [round(x, 1) for x in s],
                    "decode_vs_onnx_int8": round(statistics.median(s) / base, 3),
                    "prefill_ms": round(statistics.median(prefill_ms[row["variant"]]), 1),
                    "bytes_vs_fp32_same_format": round(row["bytes"] / fp32_bytes[row["format"]], 3)})

    print()
    print(f"{'variant':26} {'MB':>7} {'x fp32':>7} {'ppl':>8} {'x ref':>7} {'decode tok/s':>13} {'x onnx-int8':>11}"
          f" {'prefill ms':>10}")
    for row in rows:
        print(f"{row['variant']:26} {row['bytes'] / 1e6:7.1f} {row['bytes_vs_fp32_same_format']:7.3f} "
              f"{row['perplexity']:8.3f} {row['perplexity_ratio']:7.4f} {row['decode_tokens_per_second']:13.1f} "
              f"{row['decode_vs_onnx_int8']:11.3f} {row['prefill_ms']:10.1f}")
    result = {
        "student": str(args.student), "parameters": sum(p.numel() for p in model.parameters()),
        "reference_perplexity": round(ref_ppl, 4), "eval_tokens": sum(len(w) - 1 for w in wins),
        "threads": args.threads, "rounds": args.rounds, "new_tokens": args.new_tokens,
        "prompt_tokens": len(prompt), "max_sequence_length": args.max_seq, "prefill_length": args.prefill,
        "export_seconds": {k: round(v[2], 1) for k, v in exported.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
