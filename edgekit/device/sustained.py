"""`edgekit bench --sustained`: generate continuously for a while and report how speed, energy and
temperature evolve, interval by interval (what a fanless board does after ten minutes).

Units: seconds (the injected `clock`), tokens per second, joules (J), joules per token, watts (W),
degrees Celsius. Generations are greedy over PROMPTS, back to back, each one energy window (as in
benchmark.run_once). A generation belongs to the interval in which it started; the generation
running at the deadline finishes, so a run overshoots by at most one generation. Temperature and
throttle state per interval come from a thermal.ThermalMonitor polled on its own thread (the
`thermal` argument; None = not reported).

May import: stdlib, edgekit.device.
"""

from __future__ import annotations

import time
from typing import Callable

from edgekit.device.benchmark import ESTIMATE_NOTE, PROMPTS, run_once


def _interval_row(index: int, offset: float, records: list[dict], heat: dict | None) -> dict:
    """One interval's figures from its generations' run_once records."""
    tokens = sum(r["completion_tokens"] for r in records)
    steps = sum(max(r["completion_tokens"] - 1, 0) for r in records)
    decode = sum(r["decode_seconds"] for r in records)
    seconds = sum(r["prefill_seconds"] + r["decode_seconds"] for r in records)
    windows = [r["energy"] for r in records if r["energy"] is not None]
    joules = sum(w["joules"] for w in windows) if windows else None
    metered_tokens = sum(r["completion_tokens"] for r in records if r["energy"] is not None)
    window_seconds = sum(w["seconds"] for w in windows)
    heat = heat or {}
    return {
        "interval": index, "start_seconds": round(offset, 3), "generations": len(records), "tokens": tokens,
        "generation_seconds": round(seconds, 4),
        "decode_tokens_per_second": round(steps / decode, 2) if decode > 0 else None,
        "joules": None if joules is None else round(joules, 6),
        "joules_per_token": round(joules / metered_tokens, 6) if joules is not None and metered_tokens else None,
        "watts": round(joules / window_seconds, 4) if joules is not None and window_seconds > 0 else None,
        "measured": all(w["measured"] for w in windows) if windows else None,
        "celsius_start": heat.get("celsius_start"), "celsius_end": heat.get("celsius_end"),
        "throttled": heat.get("throttled"), "flags": heat.get("flags"),
    }


def run_sustained(loaded, seconds: float, interval_seconds: float = 30.0, meter=None, thermal=None,
                  max_tokens: int = 64, prompts=PROMPTS, clock: Callable[[], float] = time.perf_counter,
                  say: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """(the sustained result: settings and one row per interval, every generation's record)."""
    if not seconds > 0 or not interval_seconds > 0:
        raise ValueError("sustained seconds and interval seconds must be > 0")
    t0 = clock()
    rows: list[dict] = []
    records: list[dict] = []
    current: list[dict] = []
    mark = thermal.mark() if thermal is not None else None

    def close(index: int) -> None:
        nonlocal mark
        heat = thermal.summary(mark) if thermal is not None else None
        rows.append(_interval_row(index, index * interval_seconds, current, heat))
        if say is not None:
            say(format_row(rows[-1]))
        current.clear()
        mark = thermal.mark() if thermal is not None else None

    index, g = 0, 0
    while clock() - t0 < seconds:
        started = clock() - t0
        while started >= (index + 1) * interval_seconds:  # a new interval (an empty one if a generation spanned it)
            close(index)
            index += 1
        rec = run_once(loaded, meter, [prompts[g % len(prompts)]], max_tokens, clock, run=g)[0]
        rec.update(prompt=g % len(prompts), start_seconds=round(started, 4))
        current.append(rec)
        records.append(rec)
        g += 1
    close(index)
    result = {"seconds": seconds, "interval_seconds": interval_seconds,
              "elapsed_seconds": round(clock() - t0, 3), "generations": len(records), "intervals": rows}
    if any(r["measured"] is False for r in rows):
        result["note"] = ESTIMATE_NOTE
    return result, records


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


COLUMNS = ("interval", "start", "gens", "tokens", "tok/s", "J/token", "avg W", "C start", "C end", "throttled")


def format_row(r: dict) -> str:
    """One interval as a line (also the progress line while the run goes on)."""
    est = "" if r["measured"] in (True, None) else " ESTIMATE"
    throttled = "-" if r["throttled"] is None else ("YES " + ",".join(f for f in r["flags"] if "occurred" not in f)
                                                    if r["throttled"] else "no")
    cells = (str(r["interval"]), f"{r['start_seconds']:g}s", str(r["generations"]), str(r["tokens"]),
             _f(r["decode_tokens_per_second"], ".1f"), _f(r["joules_per_token"], ".4g") + est,
             _f(r["watts"], ".3g") + est, _f(r["celsius_start"], ".1f"), _f(r["celsius_end"], ".1f"), throttled)
    return "  ".join(f"{c:>{max(len(h), 8)}}" for c, h in zip(cells, COLUMNS)).rstrip()


def format_sustained_table(result: dict) -> str:
    """The intervals as a table, first vs last interval's speed and J/token under it."""
    header = "  ".join(f"{h:>{max(len(h), 8)}}" for h in COLUMNS)
    lines = [f"sustained {result['seconds'] / 60:g} min, intervals of {result['interval_seconds']:g} s "
             f"({result['generations']} generations)", header]
    rows = result["intervals"]
    lines += [format_row(r) for r in rows]
    full = [r for r in rows if r["decode_tokens_per_second"]]
    if len(full) > 1:
        first, last = full[0], full[-1]
        speed = last["decode_tokens_per_second"] / first["decode_tokens_per_second"]
        line = f"last vs first interval: decode tok/s x{speed:.2f}"
        if first["joules_per_token"] and last["joules_per_token"] is not None:
            line += f", J/token x{last['joules_per_token'] / first['joules_per_token']:.2f}"
        lines.append(line)
    if result.get("note"):
        lines.append(result["note"])
    return "\n".join(lines)
