"""Resident memory and speed of `edgekit serve` on a LiteRT bundle: the Interpreter against the
CompiledModel with its XNNPACK weight cache (first start: the cache file is written; second start:
it is reused), side by side in one run.

    python bench/pack_rss.py BUNDLE [--threads 2] [--max-tokens 64] [--rounds 2]

Each server gets a fresh temporary EDGEKIT_HOME shared by the two CompiledModel starts (so the
first one packs and writes the cache, the second maps it). Per server: seconds to healthy (load,
packing included), peak resident memory (VmHWM of the server process, MiB) after the requests,
prefill tokens/s (prompt tokens / time to first token) and decode tokens/s ((completion tokens - 1)
/ (seconds - time to first token)), medians over `rounds` greedy streamed chats after one warm-up;
/props litert_api; the cache file's size. Writes bench/results/pack_rss.json. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _server import ServeProcess, stream_chat

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ("Tell me a short story about a small robot who learns to grow tomatoes in a garden behind an old "
          "house, and what the robot finds out about patience, sunlight and water along the way.")


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(bundle: Path, home: Path, compiled: bool, threads: int, max_tokens: int, rounds: int) -> dict:
    os.environ["EDGEKIT_HOME"] = str(home)
    os.environ["EDGEKIT_LITERT_COMPILED"] = "1" if compiled else "0"
    with ServeProcess(bundle, "--threads", threads) as server:
        with urllib.request.urlopen(server.base + "/props", timeout=30) as r:
            api = json.loads(r.read())["litert_api"]
        rss_loaded = _status_mib(server.pid, "VmRSS")
        runs = [stream_chat(server.base, [{"role": "user", "content": PROMPT}], max_tokens) for _ in range(rounds + 1)]
        runs = runs[1:]
        prefill = [r["usage"]["prompt_tokens"] / r["ttft_seconds"] for r in runs]
        decode = [(r["usage"]["completion_tokens"] - 1) / (r["seconds"] - r["ttft_seconds"]) for r in runs]
        return {"litert_api": api, "ready_seconds": round(server.ready_seconds, 2),
                "rss_loaded_mib": round(rss_loaded, 1), "peak_rss_mib": round(_status_mib(server.pid, "VmHWM"), 1),
                "rss_after_mib": round(_status_mib(server.pid, "VmRSS"), 1),
                "prefill_tokens_per_second": round(statistics.median(prefill), 1),
                "decode_tokens_per_second": round(statistics.median(decode), 2),
                "prompt_tokens": runs[0]["usage"]["prompt_tokens"], "completion_tokens": runs[0]["usage"]["completion_tokens"],
                "same_text_as_first_round": all(r["text"] == runs[0]["text"] for r in runs), "text": runs[0]["text"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    model = args.bundle / json.loads((args.bundle / "manifest.json").read_text())["model"]["file"]
    out = {"date": time.strftime("%Y-%m-%d"), "bundle": str(args.bundle), "threads": args.threads,
           "model_mib": round(model.stat().st_size / 2**20, 1),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    with tempfile.TemporaryDirectory() as plain, tempfile.TemporaryDirectory() as cached:
        for name, home, compiled in (("interpreter", plain, False), ("compiled_first_start", cached, True),
                                     ("compiled_cache_reused", cached, True)):
            out[name] = measure(args.bundle, Path(home), compiled, args.threads, args.max_tokens, args.rounds)
            print(name, json.dumps({k: v for k, v in out[name].items() if k != "text"}), flush=True)
        files = list((Path(cached) / "xnnpack").glob("*.xnn"))
        out["cache_file_mib"] = round(files[0].stat().st_size / 2**20, 1) if files else None
    out["same_text"] = out["interpreter"]["text"] == out["compiled_first_start"]["text"] == out["compiled_cache_reused"]["text"]
    print("cache file MiB", out["cache_file_mib"], "model MiB", out["model_mib"], "same text", out["same_text"])
    dest = ROOT / "bench" / "results" / "pack_rss.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
