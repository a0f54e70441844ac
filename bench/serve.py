"""Server benchmark: HTTP overhead, start-up time and peak memory of `edgekit serve`.

    python bench/serve.py BUNDLE [--rounds 7] [--max-tokens 64] [--threads 2]

- Start-up: seconds from launching `edgekit serve` to the first `/health` 200.
- Overhead, three ways, each vs the same bundle driven directly through edgekit's device runtime
  in this process (rounds rotate the order of the four runs; medians and ratios):
  streamed: decode tokens/s an HTTP client sees (tokens after the first chunk / time from first
  to last chunk; the client parses every chunk on the same cores);
  plain: a non-streamed request, decode tokens/s the server measured while serving it (`usage`);
  end-to-end: completion tokens / wall seconds of the whole HTTP request vs tokens / (prefill +
  decode) seconds direct, so request parsing, tokenization and the response are all charged.
- Peak RSS of the server process (VmHWM) vs the bundle's model bytes.
Prints the numbers and writes bench/results/serve.json. Uses the stdlib HTTP client only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _server import ServeProcess, sse_chunks

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Once upon a time, there was a little robot who"


def _stream_rate(base: str, max_tokens: int) -> tuple[float, int]:
    """(decode tokens/s between the first and the last chunk with text, completion tokens)."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    stamps, tokens = [], 0
    for arrived, chunk in sse_chunks(base, "/v1/completions", body, timeout_seconds=120):
        if chunk["choices"][0]["text"]:
            stamps.append(arrived)
        if "usage" in chunk:
            tokens = chunk["usage"]["completion_tokens"]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens


def _plain_rate(base: str, max_tokens: int) -> tuple[float, float]:
    """(server-measured decode tokens/s, completion tokens per wall second of the request)."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        usage = json.loads(resp.read())["usage"]
    wall = time.perf_counter() - t0
    return usage["decode_tokens_per_second"], usage["completion_tokens"] / wall


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def ratio(a: list[float], b: list[float]) -> float:
    return round(statistics.median(a) / statistics.median(b), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/serve.json")
    args = ap.parse_args()

    from edgekit.device.generate import drain, generate
    from edgekit.device.runtime import load
    from edgekit.device.sampling import Sampler

    server = ServeProcess(args.bundle, "--threads", args.threads, "--log-level", "warning")
    base, startup = server.base, server.ready_seconds
    try:
        direct_model = load(args.bundle, threads=args.threads)
        ids = direct_model.tokenizer.encode(PROMPT)
        runs = {k: [] for k in ("streamed", "plain", "end_to_end", "direct", "direct_end_to_end")}

        def direct():
            res = drain(generate(direct_model.model, direct_model.tokenizer, ids, args.max_tokens, Sampler(0.0)))
            runs["direct"].append(res.decode_tokens_per_second)
            runs["direct_end_to_end"].append(res.completion_tokens / (res.prefill_seconds + res.decode_seconds))

        def streamed():
            runs["streamed"].append(_stream_rate(base, args.max_tokens)[0])

        def plain():
            decode, e2e = _plain_rate(base, args.max_tokens)
            runs["plain"].append(decode)
            runs["end_to_end"].append(e2e)

        _stream_rate(base, 8)  # warm-up both paths once
        drain(generate(direct_model.model, direct_model.tokenizer, ids, 8, Sampler(0.0)))
        order = [streamed, direct, plain, direct]
        for r in range(args.rounds):
            for step in order[r % 4:] + order[:r % 4]:
                step()
        peak = _peak_rss(server.pid)
    finally:
        server.stop()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    from edgekit.device.benchmark import model_bytes as bundle_model_bytes

    model_bytes = bundle_model_bytes(manifest)
    result = {
        "bundle": str(args.bundle), "target": manifest["target"]["name"], "precision": manifest["model"]["precision"],
        "threads": args.threads, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "startup_seconds_to_health_200": round(startup, 3),
        **{f"{k}_tokens_per_second": round(statistics.median(v), 1) for k, v in runs.items()},
        "streamed_vs_direct": ratio(runs["streamed"], runs["direct"]),
        "plain_vs_direct": ratio(runs["plain"], runs["direct"]),
        "end_to_end_vs_direct": ratio(runs["end_to_end"], runs["direct_end_to_end"]),
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "server_peak_rss_bytes": peak, "model_bytes": model_bytes,
        "peak_rss_minus_model_mb": round((peak - model_bytes) / 1e6, 1),
    }
    for k, v in result.items():
        print(f"{k:34} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
