"""Edge TPU benchmark: how much of each model the Edge TPU would run, and what full int8 costs.

    python bench/coral.py [--student bench/results/distill-smollm2/student]
                          [--encoder bench/results/minilm-student] [--eval-tokens 1020]

For the default SmolLM2 student and the MiniLM encoder student, both as one full-int8 graph (the
naive export) and as Edge TPU segments (edgekit's coral layout): ops and multiply-accumulates
predicted on the TPU (edgekit's predictor; no compiler here), parameter bytes vs the ~8 MiB
on-chip cache, and the quality cost measured through edgekit's device runtime on the CPU:
held-out perplexity (decoder) or STS-B test Spearman (encoder) vs the fp32 PyTorch student.
Prints a table and writes bench/results/coral.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _train_windows(recipe, tokenizer, length: int, count: int) -> list[list[int]]:
    from edgekit.workshop.textdata import expand_paths, read_text, split_heldout

    ids: list[int] = []
    for path in expand_paths(recipe.data["data"]["train"]):
        train, _ = split_heldout(read_text(path), recipe.data["distill"]["eval_fraction"])
        ids += tokenizer(train[: 6 * length * count], add_special_tokens=False, verbose=False).input_ids
        if len(ids) >= length * count:
            break
    return [ids[i:i + length] for i in range(0, length * count, length)]


def _prediction(files: list[Path], host_macs: int) -> dict:
    """Totals for one token: over every segment file, or over the `decode` subgraph of a single graph
    (its `prefill` subgraph handles 64 tokens at once)."""
    from edgekit.device.coral_check import predict

    preds = [p for f in files for p in predict(f)]
    if any(p.name == "decode" for p in preds):
        preds = [p for p in preds if p.name == "decode"]
    t = [p.totals() for p in preds]
    tpu = sum(x["macs_on_tpu"] for x in t)
    total = sum(x["macs"] for x in t) + host_macs
    return {"files": len(files), "ops": sum(x["ops"] for x in t), "ops_mapped": sum(x["ops_mapped"] for x in t),
            "macs_per_token": total, "mac_share_on_tpu": round(tpu / total, 4) if total else 0.0,
            "host_attention_macs": host_macs,
            "parameter_mib_on_tpu": round(sum(x["parameter_bytes_on_tpu"] for x in t) / 2**20, 2)}


def decoder_rows(args) -> list[dict]:
    import torch

    from edgekit.workshop import coral_segments, tflite_export, tflite_quantize
    from edgekit.workshop.evaluate import default_eval_texts
    from edgekit.workshop.teacher import load_causal_lm
    from edgekit.workshop.textdata import perplexity as torch_perplexity
    from edgekit.workshop.verify import eval_token_ids
    from edgekit.core.recipes import load_recipe
    from edgekit.device import quality
    from edgekit.device.segmented_model import host_macs, open_segmented
    from edgekit.device.tflite_model import open_tflite
    from edgekit.device.tokenizer import TextTokenizer

    torch.set_num_threads(args.threads)
    recipe = load_recipe("smollm2-135m")
    model, hf_tok = load_causal_lm(args.student)
    tok = TextTokenizer.from_file(args.student / "tokenizer.json", [])
    texts, _ = default_eval_texts(recipe)
    wins = quality.windows(eval_token_ids(tok, list(texts.values()), args.eval_tokens + 1), 127)
    ref = torch_perplexity(model, torch.tensor(wins))
    cal_windows = _train_windows(recipe, hf_tok, 96, args.calibration_windows)
    rows = []
    for layout in ("single", "tpu-segments"):
        t0 = time.perf_counter()
        src, dst = args.work / f"smollm2-{layout}-fp32", args.work / f"smollm2-{layout}-int8"
        src.mkdir(parents=True, exist_ok=True)
        dst.mkdir(parents=True, exist_ok=True)
        if layout == "single":
            sig = tflite_export.export_tflite(model, src / "model.tflite", args.max_seq, 64)
            cal = tflite_quantize.calibration_feeds(src / "model.tflite", sig, cal_windows)
            tflite_quantize.quantize_tflite(src / "model.tflite", dst / "model.tflite", "int8-full", cal)
            sig = dict(sig, mask_value=tflite_export.INT8_MASK_VALUE) | tflite_export.describe(dst / "model.tflite")
            dev = open_tflite(dst / "model.tflite", {"model": {}, "signature": sig}, threads=args.threads)
            host = 0
        else:
            sig = coral_segments.export_segments(model, src / "model.tflite", args.max_seq)
            cal = coral_segments.calibration_feeds_segments(src / "model.tflite", sig, cal_windows)
            coral_segments.quantize_segments(src / "model.tflite", dst / "model.tflite", "int8-full", cal)
            dev = open_segmented(dst / "model.tflite", {"signature": sig}, threads=args.threads)
            host = host_macs(sig)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ppl = quality.perplexity(dev, wins)
        row = {"model": "smollm2 student", "layout": layout, **_prediction(sorted(dst.glob("*.tflite")), host),
               "quality": {"metric": "perplexity", "fp32_pytorch": round(ref, 4), "int8": round(ppl, 4),
                           "ratio": round(ppl / ref, 4), "eval_tokens": sum(len(w) - 1 for w in wins)},
               "build_seconds": round(build_s, 1), "eval_seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def encoder_rows(args) -> list[dict]:
    from scipy.stats import spearmanr

    from edgekit.workshop import coral_segments, encoder_export, tflite_quantize
    from edgekit.workshop.encoder import load_encoder, read_sts, sts_spearman
    from edgekit.workshop.textdata import expand_paths
    from edgekit.core.recipes import load_recipe
    from edgekit.device.encoder_model import open_tflite_encoder
    from edgekit.device.segmented_model import encoder_host_macs, open_segmented_encoder
    from edgekit.device.tokenizer import TextTokenizer

    recipe = load_recipe("minilm-l6")
    model, hf_tok = load_encoder(args.encoder)
    (eval_file,) = expand_paths(recipe.data["data"]["eval"][:1])
    rows_sts = read_sts(eval_file)
    ref = sts_spearman(model, hf_tok, rows_sts)
    tok = TextTokenizer.from_file(args.encoder / "tokenizer.json", [])
    (train_file,) = expand_paths(recipe.data["data"]["train"][:1])
    cal_ids = [hf_tok(s).input_ids for r in read_sts(train_file)[:32] for s in r[:2]]
    out = []
    for layout in ("single", "tpu-segments"):
        t0 = time.perf_counter()
        src, dst = args.work / f"minilm-{layout}-fp32", args.work / f"minilm-{layout}-int8"
        src.mkdir(parents=True, exist_ok=True)
        dst.mkdir(parents=True, exist_ok=True)
        max_len = 128
        if layout == "single":
            sig = encoder_export.export_encoder_tflite(model, src / "model.tflite", max_len)
            cal = encoder_export.calibration_feeds_encoder(src / "model.tflite", sig, cal_ids)
            tflite_quantize.quantize_tflite(src / "model.tflite", dst / "model.tflite", "int8-full", cal)
            dev = open_tflite_encoder(dst / "model.tflite", {"model": {}, "signature": sig}, threads=args.threads)
            host = 0
        else:
            sig = coral_segments.export_encoder_segments(model, src / "model.tflite", max_len)
            cal = coral_segments.calibration_feeds_encoder_segments(src / "model.tflite", sig, cal_ids)
            coral_segments.quantize_segments(src / "model.tflite", dst / "model.tflite", "int8-full", cal)
            dev = open_segmented_encoder(dst / "model.tflite", {"signature": sig}, threads=args.threads)
            host = encoder_host_macs(sig)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        a = dev.embed([tok.encode(r[0])[:max_len] for r in rows_sts])
        b = dev.embed([tok.encode(r[1])[:max_len] for r in rows_sts])
        rho = float(spearmanr((a * b).sum(-1), [r[2] for r in rows_sts]).statistic)
        row = {"model": "minilm student", "layout": layout, **_prediction(sorted(dst.glob("*.tflite")), host),
               "quality": {"metric": "STS-B Spearman", "fp32_pytorch": round(ref, 4), "int8": round(rho, 4),
                           "ratio": round(rho / ref, 4), "pairs": len(rows_sts)},
               "build_seconds": round(build_s, 1), "eval_seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, default=ROOT / "bench/results/distill-smollm2/student")
    ap.add_argument("--encoder", type=Path, default=ROOT / "bench/results/minilm-student")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/results/coral-work")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=1020)
    ap.add_argument("--max-seq", type=int, default=128)
    ap.add_argument("--calibration-windows", type=int, default=24)
    ap.add_argument("--skip", choices=["decoder", "encoder"], default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/coral.json")
    args = ap.parse_args()
    for p, what in ((args.student, "decoder"), (args.encoder, "encoder")):
        if args.skip != what and not (p / "config.json").is_file():
            sys.exit(f"no {what} student at {p} (bench/distill.py, `edgekit distill --recipe minilm-l6`, "
                     f"or pass a folder; --skip {what} leaves it out)")
    rows = ([] if args.skip == "decoder" else decoder_rows(args)) + ([] if args.skip == "encoder" else encoder_rows(args))
    print()
    print(f"{'model':16} {'layout':13} {'ops on TPU':>12} {'MACs on TPU':>11} {'MiB on TPU':>10} "
          f"{'quality fp32 -> int8':>26} {'ratio':>7}")
    for r in rows:
        q = r["quality"]
        print(f"{r['model']:16} {r['layout']:13} {r['ops_mapped']:>5}/{r['ops']:<6} {100 * r['mac_share_on_tpu']:10.1f}% "
              f"{r['parameter_mib_on_tpu']:10.2f} {q['metric'][:10]:>10} {q['fp32_pytorch']:7.3f} -> {q['int8']:7.3f} "
              f"{q['ratio']:7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_sequence_length": args.max_seq, "threads": args.threads, "rows": rows},
                                   indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
