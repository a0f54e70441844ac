"""The predicted Edge TPU verdict table (model x link x board) for docs/coral.md.

Models: coral bundles given on the command line (their manifest's per-file Edge TPU prediction), plus
the SmolLM2 student and the MiniLM student of docs/coral.json, whose per-segment int8 parameters are
rebuilt from their architecture (one MAC per weight per token; int32 biases of 4 bytes) and checked
against the MiB totals coral.json recorded, and the Coral-sized SmolLM2 student of models/smollm2-coral.toml
(2 layers on the TPU, the LM head an int8 matmul on the host). Prints a markdown table and writes JSON (--out).
Sentence-form encoders (segments taking `rows` tokens per invoke) get a second table, per 32-token
sentence: embeddings/s on the TPU vs the board's CPU (edgekit/device/coral_sentence.py).
Every figure is predicted (edgekit/device/coral_latency.py, coral_sentence.py). Usage:
  python bench/coral_verdict.py [BUNDLE ...] [--out docs/coral_verdict.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgekit.core.accelerators import load_accelerator
from edgekit.core.boards import list_boards
from edgekit.core.coral_fit import head_bytes, layer_segment_bytes
from edgekit.device import coral_sentence
from edgekit.device.coral_latency import compact, segments_from_record, verdict_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def decoder_segments(layers, hidden, inter, heads, kv_heads, head_dim, vocab, head_on_host=False) -> list[dict]:
    """Bias-free Llama segments in execution order: qkv, o, up (gate + up), down per layer, then the head
    (none when it runs on the host)."""
    per = list(zip(("qkv", "o", "up", "down"), layer_segment_bytes(hidden, heads, kv_heads, head_dim, inter)))
    segs = [{"file": f"l{i:02d}_{r}", "parameter_bytes": n, "macs": n} for i in range(layers) for r, n in per]
    head = head_bytes(hidden, vocab)
    return segs if head_on_host else segs + [{"file": "head", "parameter_bytes": head, "macs": head}]


def encoder_segments(layers, hidden, inter) -> list[dict]:
    """BERT segments with int32 biases: qkv, o, up, down per layer."""
    per = [("qkv", hidden * 3 * hidden, 3 * hidden), ("o", hidden * hidden, hidden),
           ("up", hidden * inter, inter), ("down", inter * hidden, hidden)]
    return [{"file": f"l{i:02d}_{r}", "parameter_bytes": w + 4 * b, "macs": w}
            for i in range(layers) for r, w, b in per]


def sentence_encoder(layers, hidden, inter, heads, rows) -> tuple[list[dict], dict]:
    """The MiniLM student's sentence-form segments (rows tokens per call: MACs x rows, int8 activations
    rows x (in + out widths)) and the signature fields the predictor reads."""
    per = [("qkv", hidden, [hidden] * 3), ("o", hidden, [hidden]), ("up", hidden, [inter]), ("down", inter, [hidden])]
    sig = {"layers": layers, "hidden_size": hidden, "heads": heads, "rows": rows, "segment_form": "sentence",
           "segments": [{"file": f"l{i:02d}_{r}", "in_features": w, "out_features": o}
                        for i in range(layers) for r, w, o in per]}
    segs = [{"file": f"l{i:02d}_{r}", "parameter_bytes": w * sum(o) + 4 * sum(o), "macs": rows * w * sum(o),
             "io_bytes": rows * (w + sum(o))} for i in range(layers) for r, w, o in per]
    return segs, sig


def sentence_rows(models: dict, boards, acc) -> dict:
    print("\n| model | rows per invoke | board | link | invokes per sentence | TPU embeddings/s | TPU J/embedding | "
          "CPU embeddings/s | CPU J/embedding | TPU / CPU | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    out = {}
    for name, (segs, sig) in models.items():
        rows = [coral_sentence.compact(r) for r in coral_sentence.verdict_table(segs, sig, boards, ["usb2", "usb3", "pcie"], acc)]
        out[name] = rows
        for r in rows:
            print(f"| {name} | {sig['rows']} | {r['board']} | {r['link']} | {r['invokes_per_sentence']} | "
                  f"{r['tpu_embeddings_per_second']:.3g} | {r['tpu_joules_per_embedding']:.3g} | "
                  f"{r['cpu_embeddings_per_second']:.3g} | {r['cpu_joules_per_embedding']:.3g} | "
                  f"{r['tpu_vs_cpu']:.2g}x | {r['verdict'].split(': ')[-1]} |")
    return out


def known_models() -> dict:
    rows = {r["model"]: r for r in json.loads((DOCS / "coral.json").read_text())["rows"] if r["layout"] == "tpu-segments"}
    models = {"SmolLM2 student (15 layers)": (decoder_segments(15, 576, 1536, 9, 3, 64, 49152),
                                              rows["smollm2 student"]["parameter_mib_on_tpu"]),
              "MiniLM student (3 layers), one-token form, per token": (encoder_segments(3, 384, 1536),
                                                       rows["minilm student"]["parameter_mib_on_tpu"])}
    for name, (segs, mib) in models.items():
        got = sum(s["parameter_bytes"] for s in segs) / 2**20
        assert abs(got - mib) < 0.05, f"{name}: rebuilt {got:.2f} MiB vs coral.json {mib} MiB"
    out = {k: (v[0], 0) for k, v in models.items()}
    out["SmolLM2 Coral-sized (2 layers, LM head on host)"] = (decoder_segments(2, 576, 1536, 9, 3, 64, 49152, True),
                                                              head_bytes(576, 49152))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="*")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    models, sentence = {}, {}
    for b in args.bundles:
        m = json.loads((Path(b) / "manifest.json").read_text())
        tpu = m["metrics"]["edgetpu"]
        if m["signature"].get("segment_form") == "sentence":
            sentence[f"{m['name']} sentence form (bundle)"] = (coral_sentence.sentence_segments(tpu, m["signature"]),
                                                 m["signature"])
        else:
            models[f"{m['name']} (bundle)"] = (segments_from_record(tpu), tpu.get("host_weight_bytes", 0))
    sentence["MiniLM student (3 layers), sentence form"] = sentence_encoder(3, 384, 1536, 12, 32)
    models.update(known_models())
    acc = load_accelerator()
    boards = [b for b in list_boards() if b.name in ("rpi5", "rpi4")]
    out = {}
    print("| model | params MiB | board | link | cached segments | TPU tok/s | TPU J/token | CPU tok/s | CPU J/token | TPU / CPU | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (segs, host_bytes) in models.items():
        rows = [compact(r) for r in verdict_table(segs, boards, ["usb2", "usb3", "pcie"], acc, host_bytes)]
        out[name] = rows
        mib = (sum(s["parameter_bytes"] for s in segs) + host_bytes) / 2**20
        for r in rows:
            print(f"| {name} | {mib:.2f} | {r['board']} | {r['link']} | {r['cached_segments']} of {len(segs)} | "
                  f"{r['tpu_tokens_per_second']:.3g} | {r['tpu_joules_per_token']:.3g} | {r['cpu_tokens_per_second']:.3g} | "
                  f"{r['cpu_joules_per_token']:.3g} | {r['tpu_vs_cpu']:.2g}x | {r['verdict'].split(': ')[-1]} |")
    out_sentence = sentence_rows(sentence, boards, acc)
    if args.out:
        Path(args.out).write_text(json.dumps({"predicted": True, "models": out, "per_sentence": out_sentence}, indent=1))


if __name__ == "__main__":
    main()
