"""Distillation benchmark: SmolLM2-135M-Instruct -> students, recipes side by side.

    python bench/distill.py [--minutes 60] [--eval-every 5] [--compare bench/recipes/smollm2-135m-text-only.toml]

Trains each recipe for the same training-time budget, evaluating every few minutes (the curve):
held-out text perplexity and, on the default recipe's held-out chat prompts (never trained on by
either), the perplexity of the teacher's answers and top-1 agreement with them. A recipe without
chat data is scored on the same held-out prompts (its chat fraction is 0: it never trains on them).
Writes <out>/distill.json (every run) and <out>/curve.png. Resumable per recipe. The teacher is the
Q4_1 GGUF dequantized to fp32: every ratio is against that teacher. Minutes are training time on
this machine's clock; the depth follows the budget as the recipe says (override: --layers N).
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


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, m in runs.items():
        curve = m["curve"]
        mins = [c["minutes"] for c in curve]
        axes[0].plot(mins, [c["ratio"] for c in curve], marker="o", label=name)
        if any("chat_agreement" in c for c in curve):
            axes[1].plot(mins, [c.get("chat_perplexity_ratio") for c in curve], marker="o", label=name)
            axes[2].plot(mins, [c.get("chat_agreement") for c in curve], marker="o", label=name)
    axes[0].set_ylabel(f"student / teacher perplexity ({curve[0]['eval_file']}, held out)")
    axes[1].set_ylabel("student / teacher perplexity of held-out chat answers")
    axes[2].set_ylabel("top-1 agreement with held-out chat answers")
    for ax, target in zip(axes, (1.30, 1.30, 0.75)):
        ax.axhline(target, color="grey", linestyle="--", label=f"target {target}")
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.legend()
    fig.suptitle("SmolLM2-135M-Instruct (Q4_1 GGUF -> fp32) teacher -> students")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_one(recipe_ref: str, chat_recipe, minutes: float, eval_every: float, out: Path, layers: int | None) -> dict:
    from edgekit.workshop.distill import Budget, chat_settings_from_recipe, run_distill, settings_from_recipe
    from edgekit.core.recipes import load_recipe

    recipe = load_recipe(recipe_ref)
    settings = settings_from_recipe(recipe, max_minutes=minutes, auto_layers=layers)
    trains_chat = recipe.data["chat"]["enabled"]
    chat = chat_settings_from_recipe(recipe if trains_chat else chat_recipe, settings)  # same held-out prompts
    if not trains_chat:
        settings.chat_fraction = 0.0
    budget = Budget(max_minutes=minutes, checkpoint_every=25, eval_every_minutes=eval_every)
    t0 = time.time()
    metrics = run_distill(settings, budget, out / recipe.name / "student", out / recipe.name / "checkpoints",
                          recipe.data["data"]["eval"], log=lambda m: print(m, flush=True), progress=False,
                          chat_settings=chat)
    metrics["wall_seconds_this_run"] = round(time.time() - t0, 1)
    return metrics


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(name: str, m: dict) -> None:
    print(f"== {name} ({m.get('budget_minutes', '?')}-minute budget): {len(m['keep_layers'])} layers ({m['layer_reason'] or 'recipe'}), {m['steps']} steps "
          f"({m.get('chat_steps', 0)} on chat), {m['train_minutes']:.1f} training minutes")
    for text, p in m["perplexity"].items():
        print(f"   {text}: teacher {p['teacher']:.3f}  student {p['student']:.3f}  ratio {p['ratio']:.3f}x")
    if "chat" in m:
        c = m["chat"]
        print(f"   held-out chat answers: perplexity ratio {c['perplexity_ratio']:.3f}x, top-1 agreement "
              f"{c['student']['agreement']:.3f} (teacher {c['teacher']['agreement']:.3f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="smollm2-135m")
    ap.add_argument("--compare", action="append", default=[], help="another recipe to run side by side")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--layers", type=int, default=None, help="keep N layers (default: as the recipe picks)")
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between curve points")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distill-smollm2")
    ap.add_argument("--plot-only", action="store_true", help="redraw curve.png from an existing distill.json")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this recipe (by name) now; the others' earlier results are kept")
    args = ap.parse_args()
    path = args.out / "distill.json"
    if args.plot_only:
        plot(json.loads(path.read_text())["runs"], args.out / "curve.png")
        return 0
    from edgekit.core.recipes import load_recipe

    chat_recipe = load_recipe(args.recipe)
    args.out.mkdir(parents=True, exist_ok=True)
    # Runs from earlier invocations are kept (each run records its own budget), so recipes can be run
    # one at a time (--only) and still land in one distill.json and one plot.
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    for ref in [args.recipe, *args.compare]:
        name = load_recipe(ref).name
        if args.only and name not in args.only:
            continue
        runs[name] = run_one(ref, chat_recipe, args.minutes, args.eval_every, args.out, args.layers)
        runs[name]["budget_minutes"] = args.minutes
        runs[name]["commit"] = _commit()
    result = {"teacher": "SmolLM2-135M-Instruct Q4_1 GGUF dequantized to fp32",
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version()}, "runs": runs}
    path.write_text(json.dumps(result, indent=2) + "\n")
    for name, m in runs.items():
        report(name, m)
    try:
        plot(runs, args.out / "curve.png")
        print(f"wrote {path} and {args.out / 'curve.png'}")
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
