"""`edgekit bench`: benchmark text-generation bundles on this device (speed, memory, energy/token).

May import: stdlib, click, edgekit.core, edgekit.device (torch never).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click

from edgekit.cli.power import pick_source, power_options


def _say(msg: str) -> None:
    click.echo(f"edgekit bench: {msg}", err=True)


def _load(path: Path, threads: int, allow_cpu_fallback: bool = False):
    """Verify (sha256 of every file) and open a text-generation bundle; ClickException otherwise."""
    from edgekit.core.bundle import load_bundle
    from edgekit.core.errors import EdgekitError
    from edgekit.device.runtime import open_model, runner_for

    try:
        b = load_bundle(path)
        task = b.manifest["task"]
        if task != "text-generation":
            raise click.ClickException(f"{path}: a '{task}' bundle; edgekit bench benchmarks text-generation "
                                       "bundles only")
        runner_for(b)
        loaded = open_model(b, threads=threads, allow_cpu_fallback=allow_cpu_fallback)
        if loaded.fallback_warning:  # one line: what the delegate took, and that the CPU runs it
            _say(loaded.fallback_warning)
        elif loaded.delegation is not None and loaded.delegation.hardware:
            _say(loaded.delegation.line())
        return loaded
    except EdgekitError as exc:
        raise click.ClickException(str(exc)) from None
    except ImportError as exc:
        raise click.ClickException(f"{path}: its runtime is not installed here ({exc})") from None


def _power_session(prefer, power: str, channels, board, hz: float):
    """The started PowerSession for `--power` (no power log), or None for `--power none`."""
    from edgekit.device.power.session import PowerSession

    source = pick_source(power, prefer, channels, board, log=_say)
    return None if source is None else PowerSession(source, hz=hz).start()


def _write(out: Path, doc: dict) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc}") from None
    _say(f"wrote {out}")


def _host() -> dict:
    return {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "node": platform.node()}


def _sustained(bundle: Path, seconds: float, interval_seconds: float, max_tokens: int, warmup: int, threads: int,
               power: tuple, out: Path, allow_cpu_fallback: bool = False) -> None:
    """`bench --sustained`: one bundle, generating back to back for `seconds`; a row per interval."""
    from edgekit import __version__
    from edgekit.device.benchmark import peak_rss_bytes, summarize, warm_up
    from edgekit.device.power.thermal import start_monitor
    from edgekit.device.sustained import format_sustained_table, run_sustained

    choice, channels, board, hz = power
    session = _power_session(_target_power_prefer(bundle), choice, channels, board, hz)
    thermal = start_monitor(say=_say)
    try:
        _say(f"loading {bundle}")
        loaded = _load(bundle, threads, allow_cpu_fallback)
        warm_up(loaded, warmup, max_tokens)
        _say(f"generating for {seconds / 60:g} min, a row every {interval_seconds:g} s")
        result, records = run_sustained(loaded, seconds, interval_seconds, session and session.meter, thermal,
                                        max_tokens, say=_say)
    finally:
        for part in (session, thermal):
            if part is not None:
                part.stop()
    click.echo(format_sustained_table(result))
    doc = {"edgekit_version": __version__, "created_unix": round(time.time(), 3), "host": _host(),
           "settings": {"sustained_seconds": seconds, "interval_seconds": interval_seconds, "max_tokens": max_tokens,
                        "warmup": warmup, "threads": threads, "sampling": "greedy"},
           "power": session.describe() if session is not None else None,
           "thermal": thermal.describe() if thermal is not None else None, "sustained": result,
           "bundles": [summarize(loaded, records, rss=peak_rss_bytes, max_tokens=max_tokens)]}
    _write(out, doc)


def _target_power_prefer(path: Path) -> list[str]:
    """The bundle target's preferred power sources, read from its manifest (no checksum yet)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        return list(manifest.get("target", {}).get("power", {}).get("prefer", []))
    except (OSError, ValueError, AttributeError):
        return []  # not a bundle: loading it will say so


def _label(loaded) -> str:
    m = loaded.bundle.manifest
    return f"{m['name']} [{m['target']['name']} {m['model']['precision']}]"


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path), metavar="BUNDLE",
              help="Another bundle to run side by side (repeatable). Runs are interleaved A B C A B C ...")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Timed passes over the prompt set per bundle.")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(1, 100_000),
              help="Tokens generated per prompt (greedy; fewer if the model stops).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0, 1000),
              help="Untimed generations per bundle before timing.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0, 256),
              help="Runtime intra-op threads (0 = the runtime's default).")
@power_options
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("edgekit-bench.json"),
              show_default=True, help="Write every figure (and each generation's record) here as JSON.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PNG of J/token vs quality [default with --compare: the --out path with .png].")
@click.option("--sustained", type=click.FloatRange(0.01, 24 * 60), default=None, metavar="MINUTES",
              help="Instead of --runs: generate continuously for MINUTES and report tok/s, J/token, "
                   "temperature and throttling per --interval (one bundle).")
@click.option("--interval", "interval_seconds", default=30.0, show_default=True, type=click.FloatRange(0.1, None),
              metavar="SECONDS", help="Interval length for --sustained.")
@click.option("--allow-cpu-fallback", is_flag=True,
              help="Benchmark on the CPU when a bundle's GPU / Edge TPU delegate is missing or takes no nodes "
                   "(otherwise that is an error).")
def bench(bundle, compare, runs, max_tokens, warmup, threads, power, power_channels, board, power_hz, out, plot,
          sustained, interval_seconds, allow_cpu_fallback):
    """Benchmark text-generation bundles on this device: speed, memory and energy per token.

    \b
    Each bundle is verified (sha256), loaded, warmed up, then generates greedily from a fixed set
    of 5 prompts, --runs times. All bundles share one process and one power session; with
    --compare, all are loaded first and runs are interleaved (A B C A B C ...) for fairness.
    \b
    Numbers (timings: median over every generation, (min-max) beside it):
      model MB           bytes of the model files in the bundle (not tokenizer/generation config)
      decode tok/s       generated tokens after the first / decode seconds; 'vs first' = ratio
                         to the first bundle's median (>1 is faster)
      decode ms/token    decode seconds per token after the first
      prefill ms         time to process the prompt and produce the first token's logits
      prompt tok/s       prompt tokens / prefill seconds
      peak RSS MB        peak resident memory (VmHWM) of this whole process, all bundles loaded
      energy J           joules over all timed generations (prefill + decode) from the power source
      J/token            energy J / generated tokens; 'vs first' = ratio (<1 uses less energy)
      avg W              energy J / seconds inside the generation windows
      power source       where watts came from. ESTIMATE marks a figure modelled from CPU
                         utilisation and a board profile: it is NOT a measurement, and the JSON
                         says measured: false (it follows system-wide CPU load, so other busy
                         processes inflate it). Measured sources cover what they see (e.g. RAPL:
                         the CPU package, not the wall), stated as scope in the JSON.
      perplexity ratio * exported / reference perplexity, perplexity *, greedy agreement * and
      gate passed *      are copied from the build's verify stage (manifest); bench does not
                         measure quality on the device.
    \b
    --sustained MINUTES generates back to back for that long (one bundle) and prints one row per
    --interval: generations, tokens, decode tok/s, J/token, avg W, SoC temperature at the
    interval's start and end, and whether a throttle condition (Raspberry Pi: vcgencmd
    get_throttled) was active; the rows are in the JSON under "sustained".
    """
    from edgekit.device.benchmark import format_bench_table, peak_rss_bytes, summarize

    paths = [bundle, *compare]
    for p in paths:
        if not p.exists():
            raise click.ClickException(f"bundle not found: {p}")
    if sustained is not None:
        if compare:
            raise click.BadParameter("takes one bundle; drop --compare", param_hint="--sustained")
        return _sustained(bundle, sustained * 60, interval_seconds, max_tokens, warmup, threads,
                          (power, list(power_channels), board, power_hz), out, allow_cpu_fallback)
    prefer = _target_power_prefer(paths[0])
    session = _power_session(prefer, power, list(power_channels), board, power_hz)  # fails fast, before loading
    loaded = _load_all(paths, threads, allow_cpu_fallback, session)
    try:
        samples = _timed_runs(loaded, session and session.meter, runs, max_tokens, warmup)
    finally:
        if session is not None:
            session.stop()
    results = [summarize(m, s, rss=peak_rss_bytes, max_tokens=max_tokens) for m, s in zip(loaded, samples)]
    click.echo(format_bench_table(results))
    _write(out, _bench_doc(results, session, runs, max_tokens, warmup, threads))
    if compare or plot is not None:
        _plot(results, plot or out.with_suffix(".png"))


def _load_all(paths: list[Path], threads: int, allow_cpu_fallback: bool, session) -> list:
    """Every bundle loaded before any timing; a failure stops the power session."""
    loaded = []
    try:
        for p in paths:
            _say(f"loading {p}")
            loaded.append(_load(p, threads, allow_cpu_fallback))
    except BaseException:
        if session is not None:
            session.stop()
        raise
    return loaded


def _timed_runs(loaded: list, meter, runs: int, max_tokens: int, warmup: int) -> list[list[dict]]:
    """Warm every bundle up, then `runs` rounds interleaved A B C A B C ...; each bundle's records."""
    from edgekit.device.benchmark import PROMPTS, run_once, warm_up

    samples: list[list[dict]] = [[] for _ in loaded]
    for m in loaded:
        warm_up(m, warmup, max_tokens)
    for r in range(runs):
        for i, m in enumerate(loaded):
            t0 = time.perf_counter()
            recs = run_once(m, meter, PROMPTS, max_tokens, run=r)
            samples[i] += recs
            _say(_run_line(r, runs, m, recs, time.perf_counter() - t0))
    return samples


def _run_line(r: int, runs: int, m, recs: list[dict], seconds: float) -> str:
    """One progress line: tokens, wall seconds, decode tok/s and J/token (ESTIMATE when not measured)."""
    tokens = sum(s["completion_tokens"] for s in recs)
    decode = sum(s["decode_seconds"] for s in recs)
    steps = sum(max(s["completion_tokens"] - 1, 0) for s in recs)
    line = f"run {r + 1}/{runs} {_label(m)}: {tokens} tokens in " \
           f"{seconds:.2f} s, decode {steps / decode if decode > 0 else 0:.1f} tok/s"
    windows = [s["energy"] for s in recs if s["energy"] is not None]
    if windows and tokens:
        jpt = sum(w["joules"] for w in windows) / tokens
        line += f", {jpt:.4g} J/token" + ("" if windows[0]["measured"] else " ESTIMATE")
    return line


def _bench_doc(results: list[dict], session, runs: int, max_tokens: int, warmup: int, threads: int) -> dict:
    from edgekit import __version__
    from edgekit.device.benchmark import PROMPTS

    return {"edgekit_version": __version__, "created_unix": round(time.time(), 3),
            "host": _host(),
            "settings": {"runs": runs, "max_tokens": max_tokens, "warmup": warmup, "threads": threads,
                         "interleaved": len(results) > 1, "prompts": list(PROMPTS), "sampling": "greedy"},
            "power": session.describe() if session is not None else None, "bundles": results}


def _plot(results: list[dict], target: Path) -> None:
    """J/token vs quality PNG; without matplotlib (or data) a note says why there is none."""
    from edgekit.cli.plots import PlotUnavailable, plot_compare

    try:
        written = plot_compare(results, target, note=_say)
    except PlotUnavailable as exc:
        _say(f"plot skipped: {exc}")
    else:
        if written is not None:
            _say(f"wrote {written}")
