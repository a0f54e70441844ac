"""Power-sampling overhead: decode tokens/s with the power sampler running at 10 Hz vs without.

    python bench/energy.py BUNDLE [--rounds 8] [--max-tokens 64] [--threads 2] [--hz 10] [--power auto]

Rounds alternate (without, with, with, without, ...) in one process, same prompt, greedy; medians
and their ratio (target >= 0.98). With the sampler on, each generation is also an energy window,
so the run reports joules per token with the source and whether it was measured.
Prints the numbers and writes bench/results/energy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Once upon a time, there was a little robot who"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--power", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/energy.json")
    args = ap.parse_args()

    from edgekit.device.generate import drain, generate
    from edgekit.device.power.meter import EnergyMeter, Sampler
    from edgekit.device.power.probe import choose
    from edgekit.device.runtime import load
    from edgekit.device.sampling import Sampler as TokenSampler

    loaded = load(args.bundle, threads=args.threads)
    prefer = loaded.bundle.manifest["target"].get("power", {}).get("prefer", [])
    source = choose(args.power, prefer=prefer, log=print)
    ids = loaded.tokenizer.encode(PROMPT)

    def one():
        return drain(generate(loaded.model, loaded.tokenizer, ids, args.max_tokens, TokenSampler(0.0)))

    one()  # warm-up
    without, with_sampler, windows = [], [], []
    for r in range(args.rounds):
        for sampled in ((False, True) if r % 2 == 0 else (True, False)):
            if not sampled:
                without.append(one().decode_tokens_per_second)
                continue
            meter = EnergyMeter(source)
            sampler = Sampler(meter, args.hz).start()
            meter.begin("gen")
            res = one()
            window = meter.end("gen")
            sampler.stop()
            with_sampler.append(res.decode_tokens_per_second)
            windows.append((window, res.completion_tokens))
    joules = sum(w.joules for w, _ in windows)
    tokens = sum(n for _, n in windows)
    result = {
        "bundle": str(args.bundle), "threads": args.threads, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "sampler_hz": args.hz, "source": source.name, "measured": source.measured, "scope": source.scope,
        "decode_tokens_per_second_without_sampler": round(statistics.median(without), 1),
        "decode_tokens_per_second_with_sampler": round(statistics.median(with_sampler), 1),
        "with_vs_without": round(statistics.median(with_sampler) / statistics.median(without), 3),
        "joules_per_token": round(joules / tokens, 6) if tokens else None,
        "watts": round(joules / sum(w.seconds for w, _ in windows), 3),
        "readings_per_window": statistics.median(w.samples for w, _ in windows),
        "runs": {"without": [round(x, 1) for x in without], "with": [round(x, 1) for x in with_sampler]},
    }
    for k, v in result.items():
        print(f"{k:42} {v}")
    if not source.measured:
        print("energy figures above are an ESTIMATE (CPU utilisation x board profile), not a measurement")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
