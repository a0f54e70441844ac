"""Serve smoke + decode benchmark: start `edgekit serve BUNDLE`, wait for /health, send
completions over real HTTP, print what came back and the measured speed, write JSON, stop.

    python bench/serve_smoke.py dist/stories260k-onnx-cpu [--requests 5] [--max-tokens 64]

Numbers are wall-clock measurements on this machine (noisy: compare runs side by side).
Uses the stdlib HTTP client only. Exit status is non-zero if any request fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _server import ServeProcess, ServerFailed


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


DEFAULT_QUESTIONS = ("What is the capital of France?", "What is the opposite of hot?", "What language is spoken in Spain?",
                     "What is 2 plus 2?")  # held-out questions the teacher answers correctly


def _ask(base: str, args) -> list[dict]:
    """Greedy chat answers to held-out questions (never trained on), when the bundle is a chat model."""
    with urllib.request.urlopen(base + "/props", timeout=10) as r:
        props = json.loads(r.read())
    if args.ask is None and not props.get("chat_template"):
        return []
    out = []
    for q in args.ask or DEFAULT_QUESTIONS:
        body = _post(base + "/v1/chat/completions", {"messages": [{"role": "user", "content": q}],
                                                      "max_tokens": 40, "temperature": 0})
        answer = body["choices"][0]["message"]["content"]
        print(f"user: {q}\nassistant: {answer!r}")
        out.append({"question": q, "answer": answer})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--ask", action="append", default=None, metavar="QUESTION",
                    help="chat question(s) asked over /v1/chat/completions, greedy, answers printed "
                         "[default: two of the recipe's held-out questions; none for a bundle without a chat template]")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=Path("bench/results/serve_smoke.json"))
    args = ap.parse_args()

    try:
        server = ServeProcess(args.bundle, "--threads", args.threads, "--log-level", "warning", show_output=True)
    except ServerFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    base, ready_seconds = server.base, server.ready_seconds
    try:
        runs = []
        for i in range(args.requests):
            t0 = time.perf_counter()
            body = _post(base + "/v1/completions",
                         {"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0})
            wall = time.perf_counter() - t0
            u = body["usage"]
            runs.append({"wall_seconds": wall, **u})
            if i == 0:
                print(f"prompt: {args.prompt!r}\ncompletion: {body['choices'][0]['text']!r}")
        answers = _ask(base, args)
        decode = [r["decode_tokens_per_second"] for r in runs]
        result = {
            "bundle": str(args.bundle),
            "server_ready_seconds": round(ready_seconds, 3),
            "requests": len(runs),
            "completion_tokens": runs[0]["completion_tokens"],
            "prefill_ms_median": statistics.median(r["prefill_ms"] for r in runs),
            "decode_tokens_per_second_median": statistics.median(decode),
            "request_seconds_median": statistics.median(r["wall_seconds"] for r in runs),
            "runs": runs,
            "chat": answers,
        }
        print(f"server ready in {ready_seconds:.2f} s; {len(runs)} requests x {runs[0]['completion_tokens']} tokens: "
              f"prefill {result['prefill_ms_median']:.2f} ms, decode {result['decode_tokens_per_second_median']:.0f} "
              f"tokens/s, request {result['request_seconds_median'] * 1000:.0f} ms (medians)")
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
