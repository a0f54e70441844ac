"""Host work per token of an Edge TPU segmented bundle, measured on this machine: run greedy decode
steps on the CPU, time every segment invoke, and report (step time - invoke time) per segment call.
This is the figure accelerators/edgetpu.toml's host_seconds_per_segment_call records.
For a sentence-form encoder bundle (feature-extraction): embed STS-B-like sentences padded to --tokens,
one sentence per embed() call, and report (time - invoke time) per token per layer: the figure
host_seconds_per_encoder_token_layer records.

Usage: python bench/coral_host.py BUNDLE [--tokens 64] [--sentences 50]. Prints JSON. Seconds throughout.
"""

from __future__ import annotations

import argparse
import json
import time


class _Timed:
    def __init__(self, runner, clock):
        self.runner, self.clock, self.seconds = runner, clock, 0.0

    def __call__(self, feeds):
        t = self.clock()
        out = self.runner(feeds)
        self.seconds += self.clock() - t
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sentences", type=int, default=50)
    args = ap.parse_args()
    from edgekit.core.bundle import load_bundle
    from edgekit.device.segmented_model import open_segment_runners, open_segmented

    b = load_bundle(args.bundle)
    sig = b.manifest["signature"]
    if b.manifest.get("task") == "feature-extraction":
        print(json.dumps(_encoder(b, sig, args.tokens, args.sentences), indent=1))
        return
    runners = [_Timed(r, time.perf_counter) for r in open_segment_runners(b.root, sig, threads=1)]
    lm = open_segmented(b.path(b.manifest["model"]["file"]), b.manifest, session=runners)
    cache, token = lm.new_cache(), 1
    lm.forward([token], cache)  # warm-up
    for r in runners:
        r.seconds = 0.0
    steps = min(args.tokens, lm.max_sequence_length - 2)
    t0 = time.perf_counter()
    for _ in range(steps):
        token = int(lm.forward([token], cache)[-1].argmax())
    total = time.perf_counter() - t0
    invoke = sum(r.seconds for r in runners)
    calls = steps * len(runners)
    print(json.dumps({"bundle": str(b.root), "tokens": steps, "segments": len(runners),
                      "seconds_per_token": total / steps, "invoke_seconds_per_token": invoke / steps,
                      "host_seconds_per_token": (total - invoke) / steps,
                      "host_seconds_per_segment_call": (total - invoke) / calls}, indent=1))


def _encoder(b, sig: dict, tokens: int, sentences: int) -> dict:
    from edgekit.device.segmented_model import open_segment_runners, open_segmented_encoder

    runners = [_Timed(r, time.perf_counter) for r in open_segment_runners(b.root, sig, threads=1)]
    enc = open_segmented_encoder(b.path(b.manifest["model"]["file"]), b.manifest, session=runners)
    ids = [[101] + [1000 + (7 * k + j) % 20000 for j in range(tokens - 2)] + [102] for k in range(sentences + 1)]
    enc.embed(ids[:1])  # warm-up
    for r in runners:
        r.seconds = 0.0
    t0 = time.perf_counter()
    for one in ids[1:]:
        enc.embed([one])
    total = time.perf_counter() - t0
    invoke = sum(r.seconds for r in runners)
    layers = int(sig["layers"])
    return {"bundle": str(b.root), "segment_form": sig.get("segment_form", "token"), "rows": sig.get("rows", 1),
            "sentences": sentences, "tokens_per_sentence": tokens, "layers": layers,
            "seconds_per_sentence": total / sentences, "invoke_seconds_per_sentence": invoke / sentences,
            "host_seconds_per_sentence": (total - invoke) / sentences,
            "host_seconds_per_token_layer": (total - invoke) / sentences / tokens / layers}


if __name__ == "__main__":
    main()
