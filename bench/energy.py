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
that cost, and a control arm samples an in-process constant at the same rate (a sampler thread
waking, no fork). Besides decode tok/s (timed inside generation) it reports request seconds (begin + generation +
end, what a client waits for) and CPU milliseconds per token (this process and the vcgencmd
children over the window: unlike tok/s, barely moved by other processes on a shared machine).
Prints the numbers and writes bench/results/energy.json.
"""

from __future__ import annotations

import argparse
import json
import resource
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


class _InProcess:
    """The control arm's source: a constant read in-process (no fork), so a sampler thread waking at
    the same rate is compared without the cost of vcgencmd."""

    name, measured, scope, detail, read_seconds, slow = "in-process", True, "control: no hardware", "", 0.0, False

    def read(self):
        from edgekit.device.power.base import Sample
        return Sample(watts=1.0)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the vcgencmd calls)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def _arm(name, one, source, hz, thermal_run, sampler_edges):
    """One generation under arm `name`: (decode tok/s, request seconds, window or None, tokens, CPU s)."""
    from edgekit.device.power.meter import EnergyMeter, Sampler
    from edgekit.device.power.thermal import ThermalMonitor

    if name == "none":
        time.sleep(2.5 / hz)  # the same pause as the other arms, so each generation starts alike
        t, cpu = time.perf_counter(), _cpu_seconds()
        res = one()
        return (res.decode_tokens_per_second, time.perf_counter() - t, None, res.completion_tokens,
                _cpu_seconds() - cpu)
    if name == "control":
        source, thermal_run = _InProcess(), None
    meter = EnergyMeter(source, sampler_edges=sampler_edges)
    sampler = Sampler(meter, hz).start()
    thermal = ThermalMonitor(run=thermal_run, hz=1.0, say=lambda line: None).start() if thermal_run else None
    time.sleep(2.5 / hz)  # a serving process has been sampling for a while: readings before the window
    t, cpu = time.perf_counter(), _cpu_seconds()
    res, window = meter.measure("gen", one)
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    sampler.stop()
    if thermal is not None:
        thermal.stop()
    return res.decode_tokens_per_second, seconds, window, res.completion_tokens, cpu


def _idle_sampler_cpu(source, hz, thermal_run, seconds=5.0) -> float:
    """CPU milliseconds per second that the sampler (and thermal monitor) cost with nothing else running."""
    from edgekit.device.power.meter import EnergyMeter, Sampler
    from edgekit.device.power.thermal import ThermalMonitor

    cpu = _cpu_seconds()
    sampler = Sampler(EnergyMeter(source), hz).start()
    thermal = ThermalMonitor(run=thermal_run, hz=1.0, say=lambda line: None).start() if thermal_run else None
    time.sleep(seconds)
    sampler.stop()
    if thermal is not None:
        thermal.stop()
    return (_cpu_seconds() - cpu) * 1e3 / seconds


def _summary(args, source, arms, runs, timed) -> dict:
    base_tps = statistics.median(runs["none"]["tps"])
    base_req = statistics.median(runs["none"]["req"])
    base_cpu = statistics.median(runs["none"]["cpu_per_token"])
    out = {"bundle": str(args.bundle), "threads": args.threads, "rounds": args.rounds, "max_tokens": args.max_tokens,
           "sampler_hz": args.hz, "source": source.name, "measured": source.measured, "scope": source.scope,
           "read_seconds_assumed": getattr(source, "read_seconds", 0.0)}
    if timed is not None:
        out["vcgencmd"] = str(args.vcgencmd)
        out["vcgencmd_call_ms_median_here"] = round(statistics.median(timed.seconds) * 1e3, 2)
        out["vcgencmd_calls"] = len(timed.seconds)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["child_cpu_ms_per_call_here"] = round((children.ru_utime + children.ru_stime) * 1e3 / len(timed.seconds), 2)
    for arm in arms:
        r = runs[arm]
        tps, req = statistics.median(r["tps"]), statistics.median(r["req"])
        paired = [a / b for a, b in zip(r["tps"], runs["none"]["tps"])]  # same round: less drift
        q = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        out[arm] = {"decode_tokens_per_second": round(tps, 1), "decode_vs_none": round(tps / base_tps, 3),
                    "decode_vs_none_paired_median": round(q[1], 3),
                    "decode_vs_none_paired_quartiles": [round(q[0], 3), round(q[2], 3)],
                    "request_seconds": round(req, 4), "request_seconds_vs_none": round(req / base_req, 3),
                    "cpu_ms_per_token": round(statistics.median(r["cpu_per_token"]) * 1e3, 4),
                    "cpu_per_token_vs_none": round(statistics.median(r["cpu_per_token"]) / base_cpu, 3),
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
    arms = ["none"] + (["control"] if source.slow else [])
    arms += ["sampler-edges" if source.slow else "with"] + (["read-edges"] if args.read_edges_too else [])
    runs = {a: {"tps": [], "req": [], "windows": [], "cpu_per_token": []} for a in arms}
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            edges = None if arm in ("none", "with", "control") else arm == "sampler-edges"
            tps, seconds, window, tokens, cpu = _arm(arm, one, source, args.hz,
                                                     thermal_run if arm != "none" else None, edges)
            runs[arm]["cpu_per_token"].append(cpu / max(tokens, 1))
            runs[arm]["tps"].append(tps)
            runs[arm]["req"].append(seconds)
            if window is not None:
                runs[arm]["windows"].append((window, tokens))
    result = _summary(args, source, arms, runs, timed)
    result["idle_sampler_cpu_ms_per_second"] = round(_idle_sampler_cpu(source, args.hz, thermal_run), 2)
    for k, v in result.items():
        print(f"{k:32} {v}")
    if not source.measured:
        print("energy figures above are an ESTIMATE (CPU utilisation x board profile), not a measurement")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
