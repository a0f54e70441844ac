"""Distillation benchmark: SmolLM2-135M-Instruct -> the default 15-layer student.

    python bench/distill.py [--minutes 60] [--eval-every 5] [--out bench/results/distill-smollm2]

Trains with the `smollm2-135m` recipe for a training-time budget, evaluating held-out TinyStories
perplexity every few minutes (the curve), then reports teacher and student perplexity on the
held-out TinyStories and WikiText-2 tails. Writes <out>/distill.json and <out>/curve.png.
Resumable: running it again continues from the last checkpoint. Needs the `bench` extra
(matplotlib) for the plot. Minutes are training time measured on this machine's clock.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = metrics["curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["minutes"] for c in curve], [c["ratio"] for c in curve], marker="o")
    ax.axhline(1.30, color="grey", linestyle="--", label="target 1.30x")
    ax.set_yscale("log")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("student / teacher perplexity (held-out TinyStories)")
    ax.set_title("SmolLM2-135M -> 15-layer student")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="smollm2-135m")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between curve points")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distill-smollm2")
    ap.add_argument("--plot-only", action="store_true", help="redraw curve.png from an existing distill.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "distill.json").read_text()), args.out / "curve.png")
        print(f"wrote {args.out / 'curve.png'}")
        return 0

    from edgekit.build.distill import Budget, run_distill, settings_from_recipe
    from edgekit.core.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    settings = settings_from_recipe(recipe)
    budget = Budget(max_minutes=args.minutes, checkpoint_every=25, eval_every_minutes=args.eval_every)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    metrics = run_distill(settings, budget, args.out / "student", args.out / "checkpoints",
                          recipe.data["data"]["eval"], log=lambda m: print(m, flush=True), progress=False)
    metrics["wall_seconds_this_run"] = round(time.time() - t0, 1)
    metrics["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version()}
    (args.out / "distill.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name, p in metrics["perplexity"].items():
        print(f"{name}: teacher {p['teacher']:.3f}  student {p['student']:.3f}  ratio {p['ratio']:.3f}x")
    print(f"{metrics['steps']} steps, {metrics['train_minutes']:.1f} training minutes, "
          f"layer parameters {metrics['parameters']['layer_ratio']:.0%} of the teacher's")
    try:
        plot(metrics, args.out / "curve.png")
        print(f"wrote {args.out / 'distill.json'} and {args.out / 'curve.png'}")
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
