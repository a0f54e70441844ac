"""`edgekit report`: read the server's JSONL logs, summarize them, plot them, write report files.

Units: seconds, watts (W), joules (J), grams of CO2-eq (g), grid intensity in g/kWh; times in
the logs are unix seconds (UTC). Request lines carry "route"; power lines carry "unix" and
"watts"; one file may hold either kind. A torn or garbled line (a crash mid-write) is skipped and
counted, never fatal. Every energy figure keeps its source and whether it was measured or an
estimate, and the table says so next to each watt/joule figure. The PNG plots are drawn by
edgekit/cli/plots.py (matplotlib, an optional extra) from the series this module prepares
(busy_spans, joules_per_token_groups).

May import: stdlib, edgekit.core, edgekit.device (no matplotlib: a device install reports without it).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgekit.device.power.co2 import GridIntensity

GAP_SECONDS = 30.0  # power samples further apart than this (and 10x the median interval) are not bridged


@dataclass
class Logs:
    requests: list[dict] = field(default_factory=list)  # request lines, in file order
    power: list[dict] = field(default_factory=list)  # {"unix", "watts", "source", "measured"}, sorted by unix
    skipped: int = 0  # lines that were not valid JSON objects of either kind (e.g. a torn last line)
    files: dict[str, int] = field(default_factory=dict)  # path -> valid lines read from it


def _num(x) -> float | None:
    """A finite number, else None (bools, strings, NaN and inf are not figures)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        try:
            yield from f
        except EOFError:  # a truncated .gz: its tail is lost like a torn line
            yield "\0"


def read_logs(paths) -> Logs:
    """Read request and power lines from JSONL files (optionally .gz), in the order given."""
    logs = Logs()
    seen = set()
    for p in map(Path, paths):
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        valid = 0
        for line in _lines(p):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and "unix" in rec and "watts" in rec:
                unix, watts = _num(rec["unix"]), _num(rec["watts"])
                if unix is not None and watts is not None:  # a counter's first reading has watts null
                    logs.power.append({"unix": unix, "watts": watts, "source": str(rec.get("source", "?")),
                                       "measured": rec.get("measured") is True})
                valid += 1
            elif isinstance(rec, dict) and "route" in rec:
                logs.requests.append(rec)
                valid += 1
            else:
                logs.skipped += 1
        logs.files[str(p)] = valid
    logs.power.sort(key=lambda s: s["unix"])
    return logs


def _energy(req: dict) -> dict | None:
    e = req.get("energy")
    return e if isinstance(e, dict) and _num(e.get("joules")) is not None else None


def _request_jpt(req: dict) -> float | None:
    e = _energy(req)
    if e is None:
        return None
    jpt = _num(e.get("joules_per_token"))
    tokens = _num(req.get("completion_tokens")) or 0
    return jpt if jpt is not None else (e["joules"] / tokens if tokens > 0 else None)


def busy_spans(logs: Logs) -> list[list[float]]:
    """[start, end] unix seconds of the logged requests, overlapping ones merged, in time order."""
    spans = sorted((s, s + d) for r in logs.requests
                   if (s := _num(r.get("start_unix"))) is not None and (d := _num(r.get("seconds"))) is not None)
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def joules_per_token_groups(logs: Logs) -> tuple[dict[bool, list[float]], list[str]]:
    """Each request's joules per completion token, grouped by measured (True) / estimate (False), and the
    sources of those figures."""
    groups: dict[bool, list[float]] = {True: [], False: []}
    for r in logs.requests:
        if (v := _request_jpt(r)) is not None:
            groups[_energy(r).get("measured") is True].append(v)
    sources = sorted({str(_energy(r).get("source", "?")) for r in logs.requests if _request_jpt(r) is not None})
    return groups, sources


def _integrate(samples: list[dict]) -> tuple[float, float, int]:
    """Trapezoidal energy (J) and covered seconds of time-sorted power samples, not bridging gaps."""
    dts = [b["unix"] - a["unix"] for a, b in zip(samples, samples[1:])]
    gap = max(GAP_SECONDS, 10 * statistics.median(dts)) if dts else GAP_SECONDS
    joules = covered = 0.0
    gaps = 0
    for a, b, dt in zip(samples, samples[1:], dts):
        if dt > gap:
            gaps += 1
            continue
        joules += (a["watts"] + b["watts"]) / 2 * dt
        covered += dt
    return joules, covered, gaps


def _share_label(share: float | None) -> str:
    if share is None:
        return "no energy figures"
    if share >= 1:
        return "100% measured"
    if share <= 0:
        return "0% measured (estimate)"
    pct = min(99, max(1, round(100 * share)))
    return f"{pct}% measured, {100 - pct}% ESTIMATE"


def summarize(logs: Logs, intensity: GridIntensity) -> dict:
    """Totals of the request log and the power log; see format_table() for how they read."""
    reqs = logs.requests
    by_status: dict[str, int] = {}
    for r in reqs:
        s = _num(r.get("status"))
        key = f"{int(s) // 100}xx" if s is not None else "unknown"
        by_status[key] = by_status.get(key, 0) + 1
    tokens = {k: int(sum(_num(r.get(f"{k}_tokens")) or 0 for r in reqs)) for k in ("prompt", "completion")}
    with_e = [(r, _energy(r)) for r in reqs if _energy(r) is not None]
    energy = _energy_summary(with_e, intensity)
    power = _power_summary(logs.power) if logs.power else None
    peak = _peak_watts(logs.power, with_e)
    sources = sorted({(str(e.get("source", "?")), e.get("measured") is True) for _, e in with_e}
                     | {(s["source"], s["measured"]) for s in logs.power})
    times = sorted(t for r in reqs if isinstance(t := r.get("time"), str))
    return {"files": dict(logs.files), "skipped_lines": logs.skipped,
            "period": {"first": times[0], "last": times[-1]} if times else None,
            "requests": {"total": len(reqs), "by_status": dict(sorted(by_status.items()))},
            "tokens": tokens, "energy": energy, "peak_watts": peak, "power_log": power,
            "sources": [{"source": s, "measured": m} for s, m in sources]}


def _energy_summary(with_e: list[tuple[dict, dict]], intensity: GridIntensity) -> dict:
    """Joules, J/token, watts and CO2 over the requests that carry an energy figure."""
    joules = sum(e["joules"] for _, e in with_e)
    measured_j = sum(e["joules"] for _, e in with_e if e.get("measured") is True)
    generating = [(r, e) for r, e in with_e if (_num(r.get("completion_tokens")) or 0) > 0]
    e_tokens = sum(_num(r.get("completion_tokens")) or 0 for r, _ in generating)
    gen_joules = sum(e["joules"] for _, e in generating)
    # seconds inside the energy windows (model work), not the request's wall time with queueing
    e_seconds = sum(_num(e.get("seconds")) or _num(r.get("seconds")) or 0 for r, e in with_e)
    share = None
    if with_e:  # share of joules; with 0 J logged, whether every request was measured
        share = measured_j / joules if joules > 0 else float(all(e.get("measured") is True for _, e in with_e))
    return {
        "requests": len(with_e), "joules": joules, "completion_tokens": int(e_tokens),
        "joules_per_token": gen_joules / e_tokens if generating and e_tokens > 0 else None,
        "generation_requests": len(generating),
        "seconds": e_seconds, "avg_watts": joules / e_seconds if with_e and e_seconds > 0 else None,
        "measured_share": share, "measured_label": _share_label(share),
        "sources": sorted({str(e.get("source", "?")) for _, e in with_e}),
        "idle_watts_subtracted": sorted({w for _, e in with_e if (w := _num(e.get("idle_watts_subtracted")))}),
        "co2_grams": intensity.grams(joules) if with_e else None,
        "grid_intensity": {"grams_per_kwh": intensity.grams_per_kwh, "origin": intensity.origin,
                           "label": intensity.label()},
    }


def _power_summary(samples: list[dict]) -> dict:
    """Samples, covered seconds, joules (trapezoidal) and mean watts of a non-empty power log."""
    pj, covered, gaps = _integrate(samples)
    return {"samples": len(samples), "duration_seconds": samples[-1]["unix"] - samples[0]["unix"],
            "covered_seconds": covered, "gaps": gaps, "joules": pj,
            "mean_watts": pj / covered if covered > 0 else statistics.fmean(s["watts"] for s in samples),
            "sources": sorted({s["source"] for s in samples}),
            "measured": _all_or_mixed([s["measured"] for s in samples]),
            "start_utc": utc_text(samples[0]["unix"])}


def _peak_watts(samples: list[dict], with_e: list[tuple[dict, dict]]) -> dict:
    """The highest power-log sample, else the highest per-request average watts."""
    if samples:
        top = max(samples, key=lambda s: s["watts"])
        return {"watts": top["watts"], "from": "power log samples", "sources": [top["source"]],
                "measured": top["measured"]}
    avg = [(e["joules"] / s, e) for r, e in with_e
           if (s := _num(e.get("seconds")) or _num(r.get("seconds")) or 0) > 0]
    w, e = max(avg, key=lambda t: t[0]) if avg else (None, {})
    return {"watts": w, "from": "highest per-request average (no power log)" if avg else "no data",
            "sources": [str(e.get("source", "?"))] if avg else [], "measured": e.get("measured") is True}


def _all_or_mixed(flags: list[bool]) -> bool | None:
    """True if all measured, False if none, None if mixed."""
    return True if all(flags) else False if not any(flags) else None


def utc_text(unix: float) -> str:
    """Unix seconds as an ISO 8601 UTC time to the second."""
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tag(sources: list[str], measured) -> str:
    kind = {True: "measured", False: "ESTIMATE"}.get(measured, "mixed measured/ESTIMATE")
    return f"[{kind}, {', '.join(sources) or '?'}]"


def _f(x, fmt: str, unit: str) -> str:
    return "n/a" if x is None else f"{x:{fmt}} {unit}"


def format_table(summary: dict) -> str:
    """The summary as a plain-text table; each watt/joule figure names its source and kind."""
    e, p, pk = summary["energy"], summary["power_log"], summary["peak_watts"]
    share = e["measured_share"]
    etag = _tag(e["sources"], None if share is None or 0 < share < 1 else share >= 1)
    status = ", ".join(f"{k} {v}" for k, v in summary["requests"]["by_status"].items())
    rows = [("requests", f"{summary['requests']['total']}" + (f" ({status})" if status else ""))]
    if summary["period"]:
        rows.append(("period", f"{summary['period']['first']} .. {summary['period']['last']}"))
    rows += [("tokens", f"{summary['tokens']['prompt']} prompt, {summary['tokens']['completion']} completion")]
    if e["requests"]:
        rows += [("energy (requests)", f"{_f(e['joules'], '.4g', 'J')}  over {e['requests']} requests with "
                  f"energy  {etag}"),
                 ("energy per token", f"{_f(e['joules_per_token'], '.4g', 'J/token')}  "
                  f"({e['completion_tokens']} tokens generated in {e['generation_requests']} requests)  {etag}"),
                 ("average power", f"{_f(e['avg_watts'], '.4g', 'W')}  (J / {e['seconds']:.4g} s of model work)  "
                  f"{etag}"),
                 ("measured share", e["measured_label"])]
        if e["idle_watts_subtracted"]:
            rows.append(("idle baseline", "subtracted: " + ", ".join(f"{w:g} W" for w in e["idle_watts_subtracted"])))
        rows.append(("CO2", f"{e['co2_grams']:.4g} g  (at {e['grid_intensity']['label']})"))
    else:
        rows.append(("energy (requests)", "none logged (power measurement off, or only failed requests)"))
    if pk["watts"] is not None:
        rows.append(("peak power", f"{pk['watts']:.4g} W  ({pk['from']})  {_tag(pk['sources'], pk['measured'])}"))
    if p:
        ptag = _tag(p["sources"], p["measured"])
        rows += [("power log", f"{p['samples']} samples over {p['duration_seconds']:.4g} s from {p['start_utc']}"
                  + (f" ({p['gaps']} gaps not bridged)" if p["gaps"] else "")),
                 ("  mean power", f"{p['mean_watts']:.4g} W  {ptag}"),
                 ("  energy", f"{p['joules']:.4g} J  (trapezoidal integral)  {ptag}")]
    else:
        rows.append(("power log", "no power samples given"))
    rows.append(("sources", ", ".join(f"{s['source']} ({'measured' if s['measured'] else 'ESTIMATE'})"
                                      for s in summary["sources"]) or "none"))
    if summary["skipped_lines"]:
        rows.append(("skipped lines", f"{summary['skipped_lines']} (torn or not JSON log lines)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_html(summary: dict, plots, out_dir) -> Path:
    """report.html: the table and the PNGs embedded as data URIs (one self-contained file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>edgekit report</title>',
             "<style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em}"
             "img{max-width:100%}</style></head><body>", "<h1>edgekit report</h1>",
             f"<p>Logs: {html.escape(', '.join(summary['files']))}</p>",
             f"<pre>{html.escape(format_table(summary))}</pre>"]
    for p in map(Path, plots):
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f'<h2>{html.escape(p.stem.replace("_", " "))}</h2>'
                     f'<img alt="{html.escape(p.name)}" src="data:image/png;base64,{data}">')
    if not plots:
        parts.append("<p>No plots (--no-plots, matplotlib missing, or no data to plot).</p>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_json(summary: dict, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
