"""One engine of bench/compare.py, as a long-lived subprocess answering JSON lines on stdin/stdout.

    python bench/compare_worker.py edgekit BUNDLE_DIR THREADS
    LLAMA_VENV/bin/python bench/compare_worker.py llama FILE.gguf THREADS
    python bench/compare_worker.py transformers HF_DIR THREADS

Commands (one JSON object per line): {"cmd": "speed", "prompt": [ids], "new": N} -> prefill and
decode seconds of a batch-1 greedy generation of N tokens after the prompt (the first token comes
from the prefill, so decode covers N - 1 steps); {"cmd": "nll", "windows": [[ids]]} -> summed
next-token negative log-likelihood (nats) and count, from this engine's own logits;
{"cmd": "rss"} -> this process's peak resident memory (VmHWM, bytes); {"cmd": "quit"}.
All engines get the same token ids (no tokenization here) and the same thread count.
Each engine is driven through its own API:
- edgekit: the device runtime's runner (`forward(ids, cache)` -> logits), greedy argmax in numpy;
- llama: llama-cpp-python's `eval` (prompt in one batch) and `scores`, greedy argmax in numpy;
- transformers: `generate(do_sample=False)` with a streamer stamping each new token (eager).
Only numpy is imported at the top: the llama venv has nothing else. Times in seconds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def nll_sum(logits: np.ndarray, targets) -> float:
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(axis=1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


def peak_rss() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


class EdgekitEngine:
    def __init__(self, path: str, threads: int):
        root = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(root))
        from edgekit.device.runtime import load

        # allow_cpu_fallback: the mobile-gpu and coral bundles run on this CPU (no GPU delegate, no Edge TPU)
        self.model = load(Path(path), threads=threads, allow_cpu_fallback=True).model

    def speed(self, prompt: list[int], new: int) -> dict:
        cache = self.model.new_cache()
        t0 = time.perf_counter()
        logits = self.model.forward(prompt, cache, last_only=True)[-1]
        t1 = time.perf_counter()
        for _ in range(new - 1):
            logits = self.model.forward([int(np.argmax(logits))], cache)[-1]
        return {"prefill_seconds": t1 - t0, "decode_seconds": time.perf_counter() - t1}

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.forward(ids, self.model.new_cache())


class LlamaEngine:
    def __init__(self, path: str, threads: int):
        from llama_cpp import Llama

        self.kw = dict(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512,
                       verbose=False, seed=0)
        self.llm = Llama(**self.kw)
        self.scoring = None  # a second context with logits for every position, made on first use

    def speed(self, prompt: list[int], new: int) -> dict:
        llm = self.llm
        llm.reset()  # eval() drops cached positions past n_tokens (0 after reset)
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(new - 1):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return {"prefill_seconds": t1 - t0, "decode_seconds": time.perf_counter() - t1}

    def logits(self, ids: list[int]) -> np.ndarray:
        if self.scoring is None:
            from llama_cpp import Llama

            self.scoring = Llama(**self.kw, logits_all=True)
        s = self.scoring
        s.reset()
        s.eval(ids)
        return np.array(s.scores[: len(ids)])


class TransformersEngine:
    def __init__(self, path: str, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        self.model.eval()

    def speed(self, prompt: list[int], new: int) -> dict:
        torch = self.torch
        stamps: list[float] = []

        class Stamps:  # transformers' streamer protocol: put() once for the prompt, then per token
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        ids = torch.tensor([prompt])
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                do_sample=False, streamer=Stamps(), pad_token_id=0)
        # stamps[0]: prompt handed in; stamps[1]: first new token (after prefill); stamps[-1]: last token
        return {"prefill_seconds": stamps[1] - t0, "decode_seconds": stamps[-1] - stamps[1]}

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()


ENGINES = {"edgekit": EdgekitEngine, "llama": LlamaEngine, "transformers": TransformersEngine}


def main() -> None:
    kind, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = ENGINES[kind](path, threads)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            if cmd["cmd"] == "speed":
                out = engine.speed(cmd["prompt"], cmd["new"])
            elif cmd["cmd"] == "nll":
                nll, count = 0.0, 0
                for w in cmd["windows"]:
                    nll += nll_sum(engine.logits(w[:-1]), np.asarray(w[1:]))
                    count += len(w) - 1
                out = {"nll": nll, "count": count, "perplexity": math.exp(nll / count)}
            elif cmd["cmd"] == "rss":
                out = {"peak_rss_bytes": peak_rss()}
            else:
                out = {"error": f"unknown command {cmd['cmd']}"}
        except Exception as exc:  # reported to the coordinator, which stops with the message
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
