"""Power-sampling overhead: decode tokens/s with the power sampler running at 10 Hz vs without.

    python bench/energy.py BUNDLE [--rounds 8] [--max-tokens 64] [--threads 2] [--hz 10] [--power auto]
    python bench/energy.py BUNDLE --vcgencmd bench/pi5/vcgencmd [--read-edges-too]

Rounds rotate the arms (none, with, ... then reversed) in one process, same prompt, greedy; medians
and their ratio to "none" (target >= 0.98). With the sampler on, each generation is also an energy
window, so the run reports joules per token with the source and whether it was measured.

--vcgencmd PATH uses the `rpi-pmic` source through that executable (bench/pi5/vcgencmd is a
stand-in that sleeps as long as a real Pi 5 call and prints recorded output) and runs the thermal
monitor at 1 Hz through it too (`get_throttled`), as `edgekit serve` does on a Pi. Its arm takes
window edges from the sampler (no read in the request). --read-edges-too adds the old way as a
third arm (the source read at each window's begin and end, in the request's thread), to show what
that cost. Besides decode tok/s (timed inside generation) it reports request seconds: begin +
generation + end, what a client waits for.
Prints the numbers and writes bench/results/energy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Once upon a time, there was a little robot who"


def _args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--power", default="auto")
    ap.add_argument("--vcgencmd", type=Path, default=None, help="rpi-pmic through this executable (a stand-in)")
    ap.add_argument("--read-edges-too", action="store_true", help="add the old read-at-the-edges arm")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/energy.json")
    return ap.parse_args()


class TimedRun:
    """Wraps a command runner, recording each call's seconds (what one stand-in read costs here)."""

    def __init__(self, run):
        self.run, self.seconds = run, []

    def __call__(self):
        t = time.perf_counter()
        try:
            return self.run()
        finally:
            self.seconds.append(time.perf_counter() - t)


def _source(args, loaded):
    from edgekit.device.power.probe import choose

    if args.vcgencmd is None:
        prefer = loaded.bundle.manifest["target"].get("power", {}).get("prefer", [])
        return choose(args.power, prefer=prefer, log=print), None
    from edgekit.device.power.pmic import RpiPmicSource, vcgencmd_runner

    timed = TimedRun(vcgencmd_runner(str(args.vcgencmd)))
    return RpiPmicSource(run=timed), timed


def _arm(name, one, source, hz, thermal_run, sampler_edges):
    """One generation under arm `name`: (decode tok/s, request seconds, window or None, tokens)."""
    from edgekit.device.power.meter import EnergyMeter, Sampler
    from edgekit.device.power.thermal import ThermalMonitor

    if name == "none":
        t = time.perf_counter()
        res = one()
        return res.decode_tokens_per_second, time.perf_counter() - t, None, res.completion_tokens
    meter = EnergyMeter(source, sampler_edges=sampler_edges)
    sampler = Sampler(meter, hz).start()
    thermal = ThermalMonitor(run=thermal_run, hz=1.0, say=lambda line: None).start() if thermal_run else None
    time.sleep(2.5 / hz)  # a serving process has been sampling for a while: readings before the window
    t = time.perf_counter()
    res, window = meter.measure("gen", one)
    seconds = time.perf_counter() - t
    sampler.stop()
    if thermal is not None:
        thermal.stop()
    return res.decode_tokens_per_second, seconds, window, res.completion_tokens


def _summary(args, source, arms, runs, timed) -> dict:
    base_tps = statistics.median(runs["none"]["tps"])
    base_req = statistics.median(runs["none"]["req"])
    out = {"bundle": str(args.bundle), "threads": args.threads, "rounds": args.rounds, "max_tokens": args.max_tokens,
           "sampler_hz": args.hz, "source": source.name, "measured": source.measured, "scope": source.scope,
           "read_seconds_assumed": getattr(source, "read_seconds", 0.0)}
    if timed is not None:
        out["vcgencmd"] = str(args.vcgencmd)
        out["vcgencmd_call_ms_median_here"] = round(statistics.median(timed.seconds) * 1e3, 2)
        out["vcgencmd_calls"] = len(timed.seconds)
    for arm in arms:
        r = runs[arm]
        tps, req = statistics.median(r["tps"]), statistics.median(r["req"])
        out[arm] = {"decode_tokens_per_second": round(tps, 1), "decode_vs_none": round(tps / base_tps, 3),
                    "request_seconds": round(req, 4), "request_seconds_vs_none": round(req / base_req, 3),
                    "runs_tps": [round(x, 1) for x in r["tps"]]}
        windows = r["windows"]
        if windows:
            joules, tokens = sum(w.joules for w, _ in windows), sum(n for _, n in windows)
            out[arm].update(joules_per_token=round(joules / tokens, 6) if tokens else None,
                            watts=round(joules / sum(w.seconds for w, _ in windows), 3),
                            edges=windows[0][0].edges,
                            readings_per_window=statistics.median(w.samples for w, _ in windows),
                            held_seconds_median=None if windows[0][0].held_seconds is None else
                            round(statistics.median(w.held_seconds for w, _ in windows), 4))
        elif arm != "none":
            out[arm]["windows"] = "none (source failed)"
    return out


def main() -> None:
    args = _args()
    from edgekit.device.generate import drain, generate
    from edgekit.device.runtime import load
    from edgekit.device.sampling import Sampler as TokenSampler

    loaded = load(args.bundle, threads=args.threads)
    source, timed = _source(args, loaded)
    thermal_run = None
    if args.vcgencmd is not None:
        from edgekit.device.power.thermal import throttled_runner
        thermal_run = throttled_runner(str(args.vcgencmd))
    ids = loaded.tokenizer.encode(PROMPT)

    def one():
        return drain(generate(loaded.model, loaded.tokenizer, ids, args.max_tokens, TokenSampler(0.0)))

    one()  # warm-up
    arms = ["none", "sampler-edges" if source.slow else "with"] + (["read-edges"] if args.read_edges_too else [])
    runs = {a: {"tps": [], "req": [], "windows": []} for a in arms}
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            edges = None if arm in ("none", "with") else arm == "sampler-edges"
            tps, seconds, window, tokens = _arm(arm, one, source, args.hz, thermal_run if arm != "none" else None,
                                                edges)
            runs[arm]["tps"].append(tps)
            runs[arm]["req"].append(seconds)
            if window is not None:
                runs[arm]["windows"].append((window, tokens))
    result = _summary(args, source, arms, runs, timed)
    for k, v in result.items():
        print(f"{k:32} {v}")
    if not source.measured:
        print("energy figures above are an ESTIMATE (CPU utilisation x board profile), not a measurement")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
