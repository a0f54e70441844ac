"""On-device benchmark of text-generation bundles: speed, memory and energy per generated token.

Units in results: milliseconds (ms) for prefill and per-token decode times, tokens per second
(tok/s) for throughput, bytes for sizes and memory, joules (J), watts (W) and seconds (s) for
energy. Generation is greedy over a fixed prompt set (PROMPTS). With a meter, each generation
(prefill + decode) is one energy window; J/token = window joules / generated tokens. Every energy
figure keeps its source and whether it was measured: an estimate has measured: false, a note in
the JSON, and ESTIMATE next to every energy number in the table. Quality is not measured here: it
is copied from the manifest's verify metrics, recorded when the bundle was built.

May import: stdlib, numpy, edgekit.core, edgekit.device. Plotting lives in edgekit/cli/plots.py (matplotlib).
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Callable

from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Sampler

PROMPTS = (
    "Once upon a time, a little robot found a shiny key in the garden.",
    "The capital of France is",
    "Write a short note thanking a neighbour for watering the plants.",
    "Q: Why do leaves change colour in autumn?\nA:",
    "Here are three simple ways to save energy at home:",
)
QUALITY_NOTE = "from the build's verify stage (manifest metrics.verify), not measured by bench"
ESTIMATE_NOTE = "ESTIMATE: power modelled from CPU utilisation and a board profile, not a measurement"
_windows = itertools.count()


def peak_rss_bytes(status_path: str = "/proc/self/status") -> int | None:
    """Peak resident set size (VmHWM) of this process in bytes, or None where /proc is unavailable."""
    try:
        for line in Path(status_path).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def model_bytes(manifest: dict) -> int:
    """Bytes of the bundle's model files (every listed file but tokenizer.json / generation.json)."""
    return sum(f["bytes"] for f in manifest.get("files", []) if f["path"] not in ("tokenizer.json", "generation.json"))


def quality(manifest: dict) -> dict:
    """Quality recorded by the build's verify stage (None where the manifest lacks a figure)."""
    v = manifest.get("metrics", {}).get("verify", {}) or {}
    ppl = v.get("perplexity") if isinstance(v.get("perplexity"), dict) else {}
    gate = manifest.get("gate", v.get("gate")) or {}
    return {"from": QUALITY_NOTE, "perplexity": ppl.get("exported"), "perplexity_reference": ppl.get("reference"),
            "perplexity_ratio": ppl.get("ratio"), "perplexity_eval_tokens": ppl.get("eval_tokens"),
            "greedy_agreement": v.get("greedy_agreement"), "gate_passed": gate.get("passed")}


def warm_up(loaded, generations: int = 1, max_tokens: int = 64, prompts=PROMPTS) -> None:
    """Untimed generations (cycling through `prompts`): weights paged in, runtime buffers allocated."""
    for i in range(generations):
        ids = loaded.tokenizer.encode(prompts[i % len(prompts)])
        drain(generate(loaded.model, loaded.tokenizer, ids, max_tokens, Sampler(0.0)))


def run_once(loaded, meter=None, prompts=PROMPTS, max_tokens: int = 64, clock: Callable[[], float] = time.perf_counter,
             run: int = 0) -> list[dict]:
    """One greedy generation per prompt; one record per generation (seconds, tokens, energy window)."""
    out = []
    for p, prompt in enumerate(prompts):
        ids = loaded.tokenizer.encode(prompt)
        name = f"bench-{next(_windows)}"
        def work():
            return drain(generate(loaded.model, loaded.tokenizer, ids, max_tokens, Sampler(0.0), clock=clock))

        res, measured = (work(), None) if meter is None else meter.measure(name, work)
        window = measured.as_dict() if measured is not None else None
        if window is not None:
            window["scope"] = getattr(meter.source, "scope", "")
        out.append({"run": run, "prompt": p, "prompt_tokens": res.prompt_tokens,
                    "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
                    "prefill_seconds": res.prefill_seconds, "decode_seconds": res.decode_seconds, "energy": window})
    return out


def _stat(values: list[float], digits: int = 3) -> dict | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def _energy(samples: list[dict]) -> dict | None:
    windows = [s["energy"] for s in samples if s["energy"] is not None]
    if not windows:
        return None
    joules, seconds = sum(w["joules"] for w in windows), sum(w["seconds"] for w in windows)
    tokens = sum(s["completion_tokens"] for s in samples if s["energy"] is not None)
    measured = all(w["measured"] for w in windows)
    e = {"joules": round(joules, 6), "joules_per_token": round(joules / tokens, 6) if tokens else None,
         "watts": round(joules / seconds, 4) if seconds > 0 else None, "seconds": round(seconds, 6),
         "generated_tokens": tokens, "windows": len(windows), "source": windows[0]["source"], "measured": measured,
         "method": "/".join(sorted({w["method"] for w in windows})), "scope": windows[0].get("scope", ""),
         "idle_watts_subtracted": windows[0]["idle_watts_subtracted"]}
    if not measured:
        e["note"] = ESTIMATE_NOTE
    return e


def summarize(loaded, samples: list[dict], rss: Callable[[], int | None] | None = peak_rss_bytes,
              max_tokens: int | None = None) -> dict:
    """The result dict of one bundle from its run_once records (see the module docstring for units)."""
    m = loaded.bundle.manifest
    decode = [s for s in samples if s["completion_tokens"] > 1 and s["decode_seconds"] > 0]
    prefill = [s for s in samples if s["prefill_seconds"] > 0]
    return {
        "name": m["name"], "bundle": str(loaded.bundle.root), "task": m["task"], "target": m["target"]["name"],
        "precision": m["model"]["precision"], "format": m["model"]["format"], "runtime": m["model"]["runtime"],
        "accelerator": getattr(loaded.model, "accelerator", "cpu"), "threads": loaded.threads,
        "parameters": m["model"].get("parameters"), "model_bytes": model_bytes(m),
        "runs": len({s["run"] for s in samples}), "generations": len(samples), "max_tokens": max_tokens,
        "prompt_tokens": sum(s["prompt_tokens"] for s in samples),
        "completion_tokens": sum(s["completion_tokens"] for s in samples),
        "prefill_ms": _stat([s["prefill_seconds"] * 1e3 for s in prefill]),
        "decode_ms_per_token": _stat([s["decode_seconds"] * 1e3 / (s["completion_tokens"] - 1) for s in decode], 4),
        "decode_tokens_per_second": _stat([(s["completion_tokens"] - 1) / s["decode_seconds"] for s in decode], 2),
        "prompt_tokens_per_second": _stat([s["prompt_tokens"] / s["prefill_seconds"] for s in prefill], 2),
        "peak_rss_bytes": rss() if rss is not None else None,
        "energy": _energy(samples),
        "quality": quality(m),
        "samples": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items() if k != "energy"}
                    | {"joules": None if s["energy"] is None else round(s["energy"]["joules"], 6)} for s in samples],
    }


def run_bench(loaded, meter=None, runs: int = 3, max_tokens: int = 64, warmup: int = 1,
              rss: Callable[[], int | None] | None = peak_rss_bytes, prompts=PROMPTS,
              clock: Callable[[], float] = time.perf_counter) -> dict:
    """Warm up, then `runs` passes over `prompts` (greedy, `max_tokens` each); the summary dict."""
    warm_up(loaded, warmup, max_tokens, prompts)
    samples = []
    for r in range(runs):
        samples += run_once(loaded, meter, prompts, max_tokens, clock, run=r)
    return summarize(loaded, samples, rss=rss, max_tokens=max_tokens)


def _med(stat: dict | None) -> float | None:
    return None if stat is None else stat["median"]


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _timing(stat: dict | None, spec: str) -> str:
    return "-" if stat is None else f"{stat['median']:{spec}} ({stat['min']:{spec}}-{stat['max']:{spec}})"


def _e(r: dict, key: str, spec: str = ".4g") -> str:
    e = r.get("energy")
    if e is None or e.get(key) is None:
        return "-"
    return format(e[key], spec) + ("" if e["measured"] else " ESTIMATE")


def _ratio(value, base, estimate: bool = False) -> str:
    if value is None or not base:
        return "-"
    return f"x{value / base:.2f}" + (" ESTIMATE" if estimate else "")


def format_bench_table(results: list[dict]) -> str:
    """Bundles side by side: one row per metric, one column per bundle (ratios vs the first)."""
    first = results[0]
    tps0, jpt0 = _med(first["decode_tokens_per_second"]), (first.get("energy") or {}).get("joules_per_token")
    est = [not (r.get("energy") or {}).get("measured", True) for r in results]

    def q(r, key, spec=".4g"):
        return _fmt(r["quality"].get(key), spec)

    def mb(x):
        return "-" if x is None else f"{x / 1e6:.1f}"

    rows = [
        ("", [r["name"] for r in results]),
        ("target / precision", [f"{r['target']} {r['precision']}" for r in results]),
        ("model MB", [mb(r["model_bytes"]) for r in results]),
        ("generations (tokens)", [f"{r['generations']} ({r['completion_tokens']})" for r in results]),
        ("decode tok/s median (min-max)", [_timing(r["decode_tokens_per_second"], ".1f") for r in results]),
        ("  decode tok/s vs first", [_ratio(_med(r["decode_tokens_per_second"]), tps0) for r in results]),
        ("decode ms/token", [_timing(r["decode_ms_per_token"], ".2f") for r in results]),
        ("prefill ms", [_timing(r["prefill_ms"], ".1f") for r in results]),
        ("prompt tok/s (prefill)", [_timing(r["prompt_tokens_per_second"], ".0f") for r in results]),
        ("peak RSS MB (process)", [mb(r["peak_rss_bytes"]) for r in results]),
        ("energy J (total)", [_e(r, "joules") for r in results]),
        ("J/token", [_e(r, "joules_per_token") for r in results]),
        ("  J/token vs first", [_ratio((r.get("energy") or {}).get("joules_per_token"), jpt0, est[0] or est[i])
                                for i, r in enumerate(results)]),
        ("avg W", [_e(r, "watts", ".3g") for r in results]),
        ("power source", ["none" if r.get("energy") is None else r["energy"]["source"]
                          + ("" if r["energy"]["measured"] else " (ESTIMATE)") for r in results]),
        ("perplexity ratio *", [q(r, "perplexity_ratio") for r in results]),
        ("perplexity *", [q(r, "perplexity") for r in results]),
        ("greedy agreement *", [q(r, "greedy_agreement", ".3f") for r in results]),
        ("gate passed *", [_fmt(r["quality"].get("gate_passed"), "") for r in results]),
    ]
    width = max(len(k) for k, _ in rows)
    cols = [max(len(cells[i]) for _, cells in rows) for i in range(len(results))]
    lines = ["  ".join([f"{k:<{width}}"] + [f"{c:<{w}}" for c, w in zip(cells, cols)]).rstrip() for k, cells in rows]
    lines.append(f"* quality {QUALITY_NOTE}")
    if any(est):
        lines.append(ESTIMATE_NOTE)
    if len(results) > 1:
        lines.append("peak RSS is the whole process, with every compared bundle loaded")
    return "\n".join(lines)
