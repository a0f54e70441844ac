"""Speculative decoding benchmark: the teacher alone vs the teacher with its distilled draft, side by
side in one run, on one bundle made by `edgekit build --with-draft`.

    python bench/speculative.py PAIR_BUNDLE [--threads 2] [--k 1,2,3,4,6] [--max-tokens 64] [--rounds 3]

- Decode tokens/s (tokens after the first / decode seconds, summed over the prompts) of the teacher
  alone (the pair's own model file, no draft) and with the draft proposing k tokens, for each k;
  rounds interleave the runs, medians are reported, and the ratio to the teacher alone.
- Greedy identity: how many prompts' tokens with the draft equal the teacher's alone (each k, each round),
  and where one differs, the teacher's own top-1 minus top-2 logit at the first differing token.
- Acceptance rate (accepted / drafted tokens) and tokens per teacher pass.
- Per-token costs (median seconds of one forward): the teacher on 1 token, the teacher on k+1 tokens
  (a verify pass) and the draft on 1 token, at a context of ~100 tokens. From them, for a draft of L
  layers (cost in proportion to its parameters, calibrated on the teacher's step) the
  acceptance rate it would need for a 1.5x speedup, assuming independent acceptances with rate a:
  speedup = (1 - a^(k+1)) / (1 - a) * t_teacher / (k * t_draft(L) + t_verify(k)).
Chat prompts go through the bundle's chat template. Prints, and writes bench/results/speculative.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "Explain why the sky is blue in two sentences.", "Give me three tips for staying focused.",
           "Once upon a time, there was a little robot who"]


def _prompts(loaded) -> list[list[int]]:
    from edgekit.device.chat import render

    gen = loaded.generation
    if not gen.get("chat_template"):
        return [loaded.tokenizer.encode(p) for p in PROMPTS]
    texts = [render([{"role": "user", "content": p}], gen["chat_template"], gen.get("bos_token", ""),
                    gen.get("eos_token", "")) for p in PROMPTS]
    return [loaded.tokenizer.encode(t, add_special_tokens=False) for t in texts]


class _Margins:
    """A generate() recorder keeping the model's top-1 minus top-2 logit of each token."""

    def __init__(self):
        self.margins = []

    def record(self, logits, token):
        top = np.sort(logits)[-2:]
        self.margins.append(float(top[1] - top[0]))


def _run(loaded, prompts, max_tokens, speculation):
    from edgekit.device.generate import drain, generate
    from edgekit.device.sampling import Sampler

    recorders = [_Margins() for _ in prompts]
    results = [drain(generate(loaded.model, loaded.tokenizer, ids, max_tokens, Sampler(0.0), speculation=speculation,
                              recorder=rec)) for ids, rec in zip(prompts, recorders)]
    tokens = sum(max(r.completion_tokens - 1, 0) for r in results)
    seconds = sum(r.decode_seconds for r in results)
    return {"tokens_per_second": tokens / seconds, "ids": [r.token_ids for r in results],
            "drafted": sum(r.drafted_tokens for r in results), "accepted": sum(r.accepted_tokens for r in results),
            "passes": sum(r.verify_passes for r in results), "tokens": sum(r.completion_tokens for r in results),
            "margins": [rec.margins for rec in recorders]}


def _divergences(alone: dict, fast: dict) -> list[dict]:
    """Where the output with the draft first differs from the model's alone, per differing prompt,
    with the model's own top-1 minus top-2 logit there (a near-tie, or a bug if large)."""
    out = []
    for n, (want, got) in enumerate(zip(alone["ids"], fast["ids"])):
        if want != got:
            i = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            margin = alone["margins"][n][i] if i < len(alone["margins"][n]) else None
            out.append({"prompt": n, "token": i, "teacher_top2_margin": margin})
    return out


def _forward_seconds(model, context: list[int], n: int, repeats: int = 15) -> float:
    """Median seconds of one forward of `n` tokens after `context` (cache rewound between calls)."""
    cache = model.new_cache()
    model.forward(context, cache, last_only=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.forward(context[-n:], cache)
        times.append(time.perf_counter() - t0)
        model.rewind(cache, len(context))
    return statistics.median(times)


def _costs(loaded, spec, prompt: list[int], ks: list[int]) -> dict:
    context = (prompt * 8)[:100]
    return {"teacher_1": _forward_seconds(loaded.model, context, 1),
            "draft_1": _forward_seconds(spec.draft, context, 1),
            **{f"teacher_{k + 1}": _forward_seconds(loaded.model, context, k + 1) for k in ks}}


def _needed_acceptance(costs: dict, k: int, draft_seconds: float, target: float = 1.5) -> float | None:
    """Smallest acceptance rate a (0.01 steps) giving `target` speedup, None if even a = 0.99 does not."""
    for step in range(1, 100):
        a = step / 100
        per_pass = (1 - a ** (k + 1)) / (1 - a)
        if per_pass * costs["teacher_1"] / (k * draft_seconds + costs[f"teacher_{k + 1}"]) >= target:
            return a
    return None


def _depth_table(costs: dict, ks: list[int], draft_layers: int, teacher_layers: int, params: tuple) -> dict:
    """Per-token cost of an L-layer draft in proportion to its weights (a decode step reads each once):
    the teacher's measured step x (L x per-layer parameters + the rest) / the teacher's parameters,
    with per-layer parameters from the teacher's and the draft's counts; the rest is mostly the
    embedding / LM-head table, which every depth pays."""
    teacher_params, draft_params = params
    per_layer_params = (teacher_params - draft_params) / (teacher_layers - draft_layers)
    rest_params = teacher_params - per_layer_params * teacher_layers
    per_layer = costs["teacher_1"] * per_layer_params / teacher_params
    fixed = costs["teacher_1"] * rest_params / teacher_params
    rows = []
    for layers in sorted(n for n in {2, 4, 6, 8, 10, 12, 16, 20, draft_layers} if n < teacher_layers):
        t = fixed + per_layer * layers
        rows.append({"layers": layers, "draft_seconds_per_token": t,
                     "acceptance_needed_for_1_5x": {k: _needed_acceptance(costs, k, t) for k in ks}})
    return {"fixed_seconds": fixed, "per_layer_seconds": per_layer, "per_layer_parameters": per_layer_params,
            "other_parameters": rest_params, "measured_draft_seconds": costs["draft_1"], "rows": rows}


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", default="1,2,3,4,6")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speculative.json"))
    args = ap.parse_args()
    from edgekit.device.runtime import load
    from edgekit.device.speculative import Speculation

    ks = [int(k) for k in args.k.split(",")]
    loaded = load(args.bundle, threads=args.threads, draft=True)  # sessions that take turns: no spinning
    alone_model = load(args.bundle, threads=args.threads, draft=False)  # the teacher as served without a draft
    base = loaded.speculation
    prompts = _prompts(loaded)
    runs = {"teacher": []} | {f"k={k}": [] for k in ks}
    diverged = {f"k={k}": [] for k in ks}
    for _ in range(args.rounds):
        alone = _run(alone_model, prompts, args.max_tokens, None)
        runs["teacher"].append(alone)
        for k in ks:
            r = _run(loaded, prompts, args.max_tokens, Speculation(base.draft, k=k, name=base.name, layers=base.layers))
            runs[f"k={k}"].append(r)
            diverged[f"k={k}"] += _divergences(alone, r)
    teacher_rate = statistics.median(r["tokens_per_second"] for r in runs["teacher"])
    table = {}
    for name, rs in runs.items():
        rate = statistics.median(r["tokens_per_second"] for r in rs)
        row = {"decode_tokens_per_second": round(rate, 2), "speedup": round(rate / teacher_rate, 3),
               "completion_tokens": rs[0]["tokens"]}
        if name != "teacher":
            drafted, accepted, passes = (sum(r[key] for r in rs) for key in ("drafted", "accepted", "passes"))
            row.update(acceptance_rate=round(accepted / drafted, 4),
                       greedy_identical=f"{len(prompts) * len(rs) - len(diverged[name])}/{len(prompts) * len(rs)}",
                       divergences=diverged[name], tokens_per_teacher_pass=round((accepted + passes) / passes, 3))
        table[name] = row
        print(f"{name:8s} {rate:7.2f} tok/s  {row['speedup']:.3f}x  " + "  ".join(
            f"{key} {row[key]}" for key in ("acceptance_rate", "tokens_per_teacher_pass", "greedy_identical")
            if key in row))
    m = loaded.bundle.manifest
    teacher_layers, draft_layers = m["model"]["architecture"]["layers"], base.layers
    costs = _costs(loaded, base, prompts[0], ks)
    print("per-forward seconds: " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in costs.items()))
    depth = _depth_table(costs, ks, draft_layers, teacher_layers,
                         (m["model"]["parameters"], m["draft"]["parameters"]))
    print(f"model of draft cost: {depth['per_layer_seconds'] * 1000:.2f} ms per layer + {depth['fixed_seconds'] * 1000:.2f}"
          f" ms (LM head etc.); predicts {draft_layers} layers at "
          f"{(depth['fixed_seconds'] + draft_layers * depth['per_layer_seconds']) * 1000:.2f} ms, measured "
          f"{costs['draft_1'] * 1000:.2f} ms")
    for name, row in table.items():
        for d in row.get("divergences", []):
            print(f"{name}: prompt {d['prompt']} differs from token {d['token']} (teacher top-2 margin there "
                  f"{d['teacher_top2_margin']})")
    for row in depth["rows"]:
        print(f"draft of {row['layers']:2d} layers: {row['draft_seconds_per_token'] * 1000:.2f} ms/token, acceptance "
              f"needed for 1.5x: " + ", ".join(f"k={k} {a}" for k, a in row["acceptance_needed_for_1_5x"].items()))
    result = {"date": time.strftime("%Y-%m-%d"), "commit": _commit(), "bundle": str(args.bundle),
              "teacher": {"name": m["name"], "layers": teacher_layers, "precision": m["model"]["precision"]},
              "draft": {"name": base.name, "layers": draft_layers}, "threads": args.threads,
              "max_tokens": args.max_tokens, "rounds": args.rounds, "prompts": PROMPTS, "runs": table,
              "forward_seconds": costs, "draft_depth_estimate": depth}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
