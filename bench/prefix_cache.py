"""Prefix-cache benchmark: a 5-turn chat against three `edgekit serve` processes of the same bundle,
without the prompt/prefix cache (--prefix-cache-mib 0), with it (prompts kept: exact) and with
--prefix-cache-answers (answers kept too), side by side in one run.

    python bench/prefix_cache.py BUNDLE [--rounds 3] [--max-tokens 40] [--threads 2] [--cache-mib 128]

Each round is one fresh chat (its own system message, so turn 1 finds nothing to reuse); each turn
is sent to every server in turn (the order rotates), streamed, greedy. Time to first token (TTFT,
seconds): from sending the request to the first chunk with text, as the client sees it. Whether each
cached server's answers equal the uncached one's is recorded; the next turn repeats the uncached
server's answer, as a chat client does (so all three see the same prompts). Prints per-turn median
TTFT, the ratios to no cache, prompt and cached tokens; writes bench/results/prefix_cache.json. Uses the stdlib HTTP client only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from _server import ServeProcess, stream_chat

ROOT = Path(__file__).resolve().parent.parent
USER_TURNS = [
    "I am planning a small vegetable garden behind my house. It gets sun in the morning and shade in the "
    "afternoon. Which vegetables would grow well there?",
    "Thanks. How often should I water them during a dry summer, and is it better to water in the morning or "
    "in the evening?",
    "Some of my lettuce leaves have small holes in them. What insects could cause that, and how can I deal "
    "with them without chemicals?",
    "Could I also plant some herbs between the vegetables? Which ones go well together and which should "
    "be kept apart?",
    "Please summarise your advice as a short checklist I can pin on the shed door.",
]


def _start(bundle: Path, threads: int, cache_mib: float, answers: bool) -> ServeProcess:
    return ServeProcess(bundle, "--threads", threads, "--prefix-cache-mib", cache_mib, "--log-level", "warning",
                        "--power", "none", *["--prefix-cache-answers"] * answers)


def _turn(base: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed greedy chat turn: {ttft_seconds, text, prompt_tokens, cached_tokens, prefill_ms}."""
    r = stream_chat(base, messages, max_tokens, timeout_seconds=300)
    usage = r["usage"]
    return {"ttft_seconds": r["ttft_seconds"], "text": r["text"], "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"], "prefill_ms": usage["prefill_ms"]}


def _chat(servers: dict, rnd: int, max_tokens: int, runs: dict, same: dict) -> None:
    """One 5-turn chat on every server; appends each turn's result to runs[name][turn]; same[name] turns
    False when an answer differs from the uncached server's."""
    messages = [{"role": "system", "content": f"Conversation {rnd + 1}. You are a helpful gardening assistant."}]
    for t, user in enumerate(USER_TURNS):
        messages.append({"role": "user", "content": user})
        k = (rnd + t) % len(servers)
        names = list(servers)[k:] + list(servers)[:k]
        got = {name: _turn(servers[name], messages, max_tokens) for name in names}
        for name, res in got.items():
            runs[name][t].append(res)
            same[name] = same.get(name, True) and res["text"] == got["no_cache"]["text"]
        messages.append({"role": "assistant", "content": got["no_cache"]["text"]})


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-mib", type=float, default=128.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/prefix_cache.json")
    args = ap.parse_args()
    procs, servers = [], {}
    try:
        for name, mib, answers in (("no_cache", 0, False), ("cache", args.cache_mib, False),
                                   ("cache_answers", args.cache_mib, True)):
            procs.append(_start(args.bundle, args.threads, mib, answers))
            servers[name] = procs[-1].base
        for base in servers.values():  # warm-up, in a conversation of its own
            _turn(base, [{"role": "user", "content": "Hello."}], 4)
        runs = {name: [[] for _ in USER_TURNS] for name in servers}
        identical: dict = {}
        for r in range(args.rounds):
            _chat(servers, r, args.max_tokens, runs, identical)
        props = {}
        for name in ("cache", "cache_answers"):
            with urllib.request.urlopen(servers[name] + "/props", timeout=10) as r:
                props[name] = json.loads(r.read())["prefix_cache"]
    finally:
        for proc in procs:
            proc.stop()
    turns = []
    off_all = runs["no_cache"]
    for t in range(len(USER_TURNS)):
        off = _median(off_all[t], "ttft_seconds")
        row = {"turn": t + 1, "prompt_tokens": off_all[t][0]["prompt_tokens"], "ttft_seconds_no_cache": round(off, 4),
               "prefill_ms_no_cache": round(_median(off_all[t], "prefill_ms"), 1)}
        for name in ("cache", "cache_answers"):
            on = runs[name][t]
            row.update({f"cached_tokens_{name}": _median(on, "cached_tokens"),
                        f"ttft_seconds_{name}": round(_median(on, "ttft_seconds"), 4),
                        f"ttft_ratio_{name}": round(_median(on, "ttft_seconds") / off, 3),
                        f"prefill_ms_{name}": round(_median(on, "prefill_ms"), 1)})
        turns.append(row)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    result = {"bundle": str(args.bundle), "name": manifest["name"], "target": manifest["target"]["name"],
              "precision": manifest["model"]["precision"], "threads": args.threads, "rounds": args.rounds,
              "max_tokens": args.max_tokens, "cache_mib": args.cache_mib, "commit": commit,
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "identical_to_no_cache": identical,
              "turn5_ttft_ratio_cache": turns[-1]["ttft_ratio_cache"],
              "turn5_ttft_ratio_cache_answers": turns[-1]["ttft_ratio_cache_answers"], "turns": turns,
              "prefix_cache_props": props}
    print("turn prompt | no cache TTFT s | cache: cached TTFT s ratio | cache+answers: cached TTFT s ratio")
    for t in turns:
        print(f"{t['turn']:>4} {t['prompt_tokens']:>6} | {t['ttft_seconds_no_cache']:>7.3f} | "
              + " | ".join(f"{t['cached_tokens_' + n]:>5} {t['ttft_seconds_' + n]:>7.3f} {t['ttft_ratio_' + n]:>6.3f}"
                           for n in ("cache", "cache_answers")))
    print(f"identical to no cache: {identical}; turn 5 TTFT ratio {result['turn5_ttft_ratio_cache']} (prompts "
          f"kept), {result['turn5_ttft_ratio_cache_answers']} (answers too); target <= 0.3")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
