"""Parallel-sequences benchmark: one `edgekit serve --parallel 4` server, the same prompts sent by one
client (one request at a time) and by 4 concurrent clients, side by side in one run; a `--parallel 1`
server of the same bundle with one client beside them (the baseline without the batcher in the way).
The order of the three rotates every round.

    python bench/parallel.py BUNDLE [--name NAME] [--rounds 2] [--max-tokens 64] [--threads 2] [--parallel 4]
    python bench/parallel.py --rebundle OLD_BUNDLE --student HF_DIR --out-bundle DIR   (then the above)

Requests are streamed, greedy (temperature 0), with a fixed max_tokens, prefix cache off (the same
prompts would otherwise skip their prefill the second time). Total tokens/s = completion tokens of
all requests of a round / the round's wall time; per request: decode tokens/s (usage) and time to
first token (TTFT, seconds, from sending to the first chunk with text, as the client sees it).
Prints the medians over rounds and the ratio (4 clients / 1 client); writes docs/parallel-<name>.json.
`--rebundle` exports the HF student with edgekit's own export_onnx (batch axis) + int8-dynamic
quantization and writes OLD_BUNDLE's files with that model.onnx (tokenizer, template, generation
defaults unchanged; manifest checksums and signature updated). Uses the stdlib HTTP client only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from _server import ServeProcess, stream_chat

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a short story about a fox who learns to share.",
    "Explain how a bicycle stays upright when it moves.",
    "Give me three tips for keeping houseplants healthy.",
    "Describe a rainy afternoon in a small seaside town.",
]


def _server(bundle: Path, threads: int, parallel: int) -> ServeProcess:
    return ServeProcess(bundle, "--threads", threads, "--parallel", parallel, "--prefix-cache-mib", 0,
                        "--log-level", "warning", "--power", "none")


def _request(base: str, prompt: str, max_tokens: int) -> dict:
    """One streamed greedy chat request: {ttft_seconds, seconds, text, completion_tokens, decode_tps}."""
    r = stream_chat(base, [{"role": "user", "content": prompt}], max_tokens)
    return {"ttft_seconds": r["ttft_seconds"], "seconds": r["seconds"], "text": r["text"],
            "completion_tokens": r["usage"]["completion_tokens"], "decode_tps": r["usage"]["decode_tokens_per_second"]}


def _round(base: str, clients: int, max_tokens: int) -> dict:
    """Every prompt once, by `clients` concurrent clients (1: one after another)."""
    results: dict[int, dict] = {}

    def client(indices):
        for i in indices:
            results[i] = _request(base, PROMPTS[i], max_tokens)

    shares = [list(range(len(PROMPTS)))[k::clients] for k in range(clients)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rows = [results[i] for i in range(len(PROMPTS))]
    tokens = sum(r["completion_tokens"] for r in rows)
    return {"wall_seconds": wall, "tokens": tokens, "total_tps": tokens / wall, "requests": rows}


def _summary(rounds: list[dict]) -> dict:
    med = statistics.median
    return {"total_tokens_per_second": round(med(r["total_tps"] for r in rounds), 2),
            "total_tps_each_round": [round(r["total_tps"], 2) for r in rounds],
            "per_request_decode_tps_median": round(med(q["decode_tps"] for r in rounds for q in r["requests"]), 2),
            "ttft_seconds_median": round(med(q["ttft_seconds"] for r in rounds for q in r["requests"]), 4),
            "ttft_seconds_max": round(max(q["ttft_seconds"] for r in rounds for q in r["requests"]), 4),
            "completion_tokens_per_round": rounds[0]["tokens"]}


def rebundle(old: Path, student: Path, out: Path) -> None:
    """OLD bundle's files with `student` exported (batch axis) and quantized to int8-dynamic by edgekit."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.core.bundle import file_record
    from edgekit.workshop.onnx_export import export_onnx
    from edgekit.workshop.onnx_quantize import quantize_onnx

    manifest = json.loads((old / "manifest.json").read_text())
    shutil.copytree(old, out, ignore=shutil.ignore_patterns("manifest.sig", "model.onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
        signature = export_onnx(model, Path(tmp) / "fp32.onnx", manifest["model"]["max_sequence_length"])
        quantize_onnx(Path(tmp) / "fp32.onnx", out / manifest["model"]["file"], "int8-dynamic")
    manifest["signature"] = signature
    manifest["files"] = [file_record(out / f["path"], out) for f in manifest["files"]]
    manifest["name"] = manifest["name"] + "-batch"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?")
    ap.add_argument("--name", default="smollm2-int8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rebundle", type=Path, metavar="OLD_BUNDLE")
    ap.add_argument("--student", type=Path)
    ap.add_argument("--out-bundle", type=Path)
    args = ap.parse_args()
    if args.rebundle:
        return rebundle(args.rebundle, args.student, args.out_bundle)
    with _server(args.bundle, args.threads, args.parallel) as srv, _server(args.bundle, args.threads, 1) as srv1:
        base, base1 = srv.base, srv1.base
        for b in (base, base1):
            _request(b, "Hello.", 4)  # warm-up
        with urllib.request.urlopen(base + "/props", timeout=10) as r:
            props = json.loads(r.read())
        many = f"{args.parallel}_clients"
        modes = [("1_client", base, 1), (many, base, args.parallel), ("1_client_parallel_1", base1, 1)]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in modes}
        for k in range(args.rounds):
            for name, b, clients in modes[k % 3:] + modes[:k % 3]:
                runs[name].append(_round(b, clients, args.max_tokens))
        with urllib.request.urlopen(base + "/props", timeout=10) as r:
            parallel_props = json.loads(r.read())["parallel"]
    report(args, props, parallel_props, runs)


def report(args, props: dict, parallel_props: dict, runs: dict) -> None:
    one, many, plain = (_summary(r) for r in runs.values())
    same = all(a["text"] == b["text"] for r1, r4 in zip(*list(runs.values())[:2])
               for a, b in zip(r1["requests"], r4["requests"]))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    ratio = round(many["total_tokens_per_second"] / one["total_tokens_per_second"], 3)
    ratio_plain = round(many["total_tokens_per_second"] / plain["total_tokens_per_second"], 3)
    result = {"bundle": str(args.bundle), "name": props["name"], "precision": props["precision"],
              "threads": props["threads"], "slots": props["slots"], "parallel": parallel_props,
              "rounds": args.rounds, "max_tokens": args.max_tokens, "commit": commit,
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "one_client": one,
              f"{args.parallel}_clients": many, "one_client_parallel_1_server": plain, "ratio_total_tps": ratio,
              "ratio_total_tps_vs_parallel_1_server": ratio_plain, "same_text_as_one_client": same}
    for label, s in (("1 client", one), (f"{args.parallel} clients", many), ("1 client, --parallel 1 server", plain)):
        print(f"{label:>30}: total {s['total_tokens_per_second']:7.2f} tok/s (rounds {s['total_tps_each_round']}), "
              f"per request {s['per_request_decode_tps_median']:6.2f} tok/s, TTFT median "
              f"{s['ttft_seconds_median']:.3f} s max {s['ttft_seconds_max']:.3f} s")
    print(f"ratio {ratio} (vs the --parallel 1 server: {ratio_plain}; target >= 1.8); same greedy text as one "
          f"client: {same}; batcher {parallel_props}")
    out = ROOT / "docs" / f"parallel-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
