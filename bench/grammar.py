"""Structured-output benchmark: the grammar's cost per token vs a decode step, on one bundle.

    python bench/grammar.py BUNDLE [--threads 2] [--rounds 3] [--max-tokens 64]

For each grammar (a small JSON schema, any JSON object, a call to one of two tools) and round, in one
process, side by side: an unconstrained generation and a constrained one from the same prompt.
- mask seconds per token: llguidance's mask (edgekit.device.constrain.Constraint.mask, applied to the
  logits) plus advance, timed around each call;
- decode step seconds: the unconstrained run's decode seconds per decoded token (model forward +
  sampling), and the constrained run's (which includes the mask);
- one-off costs: the engine's tokenizer view (once per model) and building each grammar's matcher.
Also checks each constrained reply parses as JSON. Prints the numbers, writes bench/results/grammar.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Write the details of a person as JSON."
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "city": {"type": "string", "maxLength": 24}, "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
                                                          "maxItems": 3}},
    "required": ["name", "age", "city", "pets"], "additionalProperties": False}
TOOLS = [{"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}},
    {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                                   "required": ["a", "b"], "additionalProperties": False}}]


class Timed:
    """A Constraint whose mask and advance calls are timed (seconds per generated token)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, []

    def mask(self, logits):
        t = time.perf_counter()
        out = self.inner.mask(logits)
        self.seconds.append(time.perf_counter() - t)
        return out

    def advance(self, token):
        t = time.perf_counter()
        self.inner.advance(token)
        self.seconds[-1] += time.perf_counter() - t


def _step_seconds(res) -> float:
    steps = max(res.completion_tokens - 1, 1)
    return res.decode_seconds / steps


def _grammars():
    from edgekit.device.constrain import JSON_OBJECT_SCHEMA, schema_grammar, tool_call_schema

    return {"schema": schema_grammar(SCHEMA), "json_object": schema_grammar(JSON_OBJECT_SCHEMA),
            "tool_call": schema_grammar(tool_call_schema(TOOLS))}


def run(bundle: str, threads: int, rounds: int, max_tokens: int) -> dict:
    from edgekit.device.constrain import Constraint, engine_tokenizer
    from edgekit.device.generate import drain, generate
    from edgekit.device.runtime import load
    from edgekit.device.sampling import Sampler

    m = load(bundle, threads=threads)
    ids = m.tokenizer.encode(PROMPT)
    vocab = m.model.forward(ids, m.model.new_cache(), last_only=True).shape[-1]
    t = time.perf_counter()
    engine_tokenizer(m.tokenizer, vocab)
    tokenizer_seconds = time.perf_counter() - t
    out = {"bundle": Path(bundle).name, "threads": threads, "vocab": vocab, "rounds": rounds,
           "engine_tokenizer_seconds": round(tokenizer_seconds, 4), "grammars": {}}
    for name, grammar in _grammars().items():
        masks, free_steps, constrained_steps, builds, parsed = [], [], [], [], 0
        for r in range(rounds):
            free = drain(generate(m.model, m.tokenizer, ids, max_tokens, Sampler(0.8, 1.0, 0, r)))
            t = time.perf_counter()
            timed = Timed(Constraint(grammar, m.tokenizer, vocab))
            builds.append(time.perf_counter() - t)
            res = drain(generate(m.model, m.tokenizer, ids, max_tokens, Sampler(0.8, 1.0, 0, r), constraint=timed))
            masks += timed.seconds
            free_steps.append(_step_seconds(free))
            constrained_steps.append(_step_seconds(res))
            try:
                json.loads(res.text)
                parsed += res.finish_reason == "stop"
            except ValueError:
                pass
        mask = statistics.median(masks)
        step = statistics.median(free_steps)
        out["grammars"][name] = {
            "mask_seconds_median": round(mask, 6), "mask_seconds_mean": round(statistics.fmean(masks), 6),
            "mask_seconds_p95": round(sorted(masks)[int(0.95 * (len(masks) - 1))], 6),
            "decode_step_seconds": round(step, 6), "constrained_step_seconds": round(statistics.median(constrained_steps), 6),
            "mask_over_step": round(mask / step, 4), "matcher_build_seconds": round(statistics.median(builds), 5),
            "tokens_masked": len(masks), "replies_complete_json": f"{parsed}/{rounds}"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    res = run(args.bundle, args.threads, args.rounds, args.max_tokens)
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    res.update(date=date.today().isoformat(), commit=commit.strip(),
               engine=f"llguidance {version('llguidance')}")
    print(json.dumps(res, indent=2))
    target = ROOT / "bench" / "results" / "grammar.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
