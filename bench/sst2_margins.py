"""SST-2 beyond accuracy: the log-likelihood margin between a model's two label answers, per sentence.

    python bench/sst2_margins.py MODEL [MODEL ...] [--phrasing chat-question,plain] [--sentences 200]
                                 [--out bench/results/sst2_margins.json]

MODEL: anything `edgekit eval` takes (a bundle folder, a Hugging Face folder, `recipe` for the default
recipe's teacher: the Q4_1 GGUF dequantized to fp32). For each model and prompt phrasing (edgekit.device.sst2)
it prints accuracy, the share predicted positive, the mean margin (nats; > 0 favours "positive") and the AUC
of the margin against the labels: how well the model *ranks* reviews whatever its bias. An accuracy at the
majority baseline with an AUC well above 0.5 is a calibrated-away signal, not a lost one. Writes JSON with
every margin.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgekit.core.paths import resolve_data_ref  # noqa: E402
from edgekit.core.recipes import load_recipe  # noqa: E402
from edgekit.device import sst2  # noqa: E402
from edgekit.workshop.evaluate import open_scorer  # noqa: E402


def auc(margins: np.ndarray, labels: np.ndarray) -> float:
    """P(margin of a random positive > margin of a random negative), ties half."""
    pos, neg = margins[labels == 1], margins[labels == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def margins(scorer, rows, name: str) -> np.ndarray:
    return np.array([sst2.margin(scorer, sst2.PHRASINGS[name], sentence) for sentence, _ in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--phrasing", default="chat-question,plain")
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--recipe", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("bench/results/sst2_margins.json"))
    args = ap.parse_args()
    rows = sst2.read_sst2(resolve_data_ref(sst2.DATA_REF), args.sentences or None)
    labels = np.array([label for _, label in rows])
    report = {"sentences": len(rows), "positive_share": float(labels.mean()), "models": {}}
    for ref in args.models:
        scorer = open_scorer(ref, load_recipe(args.recipe))
        for name in sst2.phrasings_for(scorer, args.phrasing):
            m = margins(scorer, rows, name)
            fig = {"accuracy": round(float(((m > 0) == labels).mean()), 4),
                   "predicted_positive": round(float((m > 0).mean()), 4),
                   "mean_margin_nats": round(float(m.mean()), 4), "auc": round(auc(m, labels), 4),
                   "margins_nats": [round(float(x), 4) for x in m]}
            report["models"].setdefault(ref, {"evaluated_with": scorer.kind})[name] = fig
            print(f"{ref} [{name}]: accuracy {fig['accuracy']:.3f}, predicted positive {fig['predicted_positive']:.3f}, "
                  f"mean margin {fig['mean_margin_nats']:+.3f} nats, AUC {fig['auc']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
