"""Soak: many clients against one `edgekit serve` for a while; not a timed test.

    python bench/soak.py BUNDLE [--clients 64] [--requests 20 | --minutes M] [--max-tokens 16] [--threads 2]

Starts `edgekit serve` on a loopback port, then each client thread sends completions back to back
(plain and streamed alternately, a different prompt each time) until it has sent `--requests`, or
until `--minutes` have passed. Every tenth request of a client (`--hostile-every`) is a hostile one: a 4 MB body
(Content-Length) or a 1 MB prompt, which must get 413 / 400. Reports the requests, the status counts,
p50/p99 latency (seconds) of the normal requests, failed connections, whether the server process
survived, and its RSS (bytes, VmRSS) at start, after 10% (warm: threads, arenas and buffers
allocated), middle and end, plus its peak (VmHWM); growth is reported from start and from 10%.
Prints the numbers and writes bench/results/soak.json. Uses the stdlib HTTP client only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from _server import ServeProcess, health_status

ROOT = Path(__file__).resolve().parent.parent

WORDS = "once upon a time there was a little robot who liked to play in the park with friends".split()


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _request(port: int, body: bytes, headers: dict | None = None) -> tuple[int, float]:
    """(status, seconds) of one POST /v1/completions, reading the whole response; status 0 = failed."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/completions", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t0
    except OSError:
        return 0, time.perf_counter() - t0
    finally:
        conn.close()


def _client(i: int, port: int, args, stop_at: float, out: list) -> None:
    for n in range(args.requests if not args.minutes else 1 << 30):
        if time.monotonic() > stop_at:
            return
        if args.hostile_every and n % args.hostile_every == args.hostile_every - 1:  # a 4 MB body or a 1 MB prompt
            body = b"x" * (4 << 20) if (i + n) % 20 == 9 else json.dumps({"prompt": "a" * 1_000_000}).encode()
            out.append(("hostile",) + _request(port, body))
            continue
        prompt = " ".join(WORDS[(i + n + k) % len(WORDS)] for k in range(4 + (i + n) % 9))
        body = json.dumps({"prompt": prompt, "max_tokens": args.max_tokens, "stream": n % 2 == 1}).encode()
        out.append(("normal",) + _request(port, body))


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=20, help="per client (ignored with --minutes)")
    ap.add_argument("--minutes", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--hostile-every", type=int, default=10, help="every Nth request is hostile (0: none)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.json")
    args = ap.parse_args()
    server = ServeProcess(args.bundle, "--threads", args.threads, "--max-queue", args.max_queue, "--power", "none",
                          "--log-level", "warning", "--request-log", args.out.with_suffix(".requests.jsonl"))
    try:
        result = _soak(server.proc, server.port, args)
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _soak(proc, port: int, args) -> dict:
    out: list = []
    t0 = time.monotonic()
    stop_at = t0 + args.minutes * 60 if args.minutes else float("inf")
    threads = [threading.Thread(target=_client, args=(i, port, args, stop_at, out)) for i in range(args.clients)]
    rss = {"start": _status_kb(proc.pid, "VmRSS")}
    for t in threads:
        t.start()
    total = args.clients * args.requests if not args.minutes else None
    while any(t.is_alive() for t in threads):  # progress: share of requests done, or of the time
        done = len(out) / total if total else (time.monotonic() - t0) / (args.minutes * 60)
        for name, share in (("warm_10pct", 0.1), ("middle", 0.5)):
            if name not in rss and done >= share:
                rss[name] = _status_kb(proc.pid, "VmRSS")
        time.sleep(0.2)
    rss["end"], rss["peak"] = _status_kb(proc.pid, "VmRSS"), _status_kb(proc.pid, "VmHWM")
    normal = [s for kind, s, _ in out if kind == "normal"]
    latency = [sec for kind, s, sec in out if kind == "normal" and s == 200]
    return {
        "date": time.strftime("%Y-%m-%d"), "commit": _commit(), "clients": args.clients,
        "requests": len(out), "hostile_every": args.hostile_every, "seconds": round(time.monotonic() - t0, 1), "max_tokens": args.max_tokens,
        "status_normal": dict(Counter(map(str, normal))),
        "status_hostile": dict(Counter(str(s) for kind, s, _ in out if kind == "hostile")),
        "p50_seconds": round(statistics.median(latency), 3) if latency else None,
        "p99_seconds": round(_percentile(latency, 0.99), 3) if latency else None,
        "server_alive": proc.poll() is None and health_status(f"http://127.0.0.1:{port}") == 200,
        "rss_bytes": rss, "rss_growth_start_to_end": round(rss["end"] / rss["start"] - 1, 4),
        "rss_growth_10pct_to_end": round(rss["end"] / rss.get("warm_10pct", rss["start"]) - 1, 4),
    }


def _commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return run.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
