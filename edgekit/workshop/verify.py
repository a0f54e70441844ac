"""Verify an exported model through the *device* code path against the fp32 PyTorch model.

Checks (all recorded in the manifest):
- tokenizer parity: the bundle's tokenizer.json gives the same ids as the build tokenizer;
- prefill logits: max |logit difference| over the prompts, on PyTorch's top-10 tokens at each
  position (gated) and over the whole vocabulary (recorded);
- greedy agreement: top-1 agreement with PyTorch's greedy tokens (teacher-forced), and the
  free-running shared prefix;
- perplexity on held-out text (when the recipe's eval text is available), exported vs PyTorch.
May import: stdlib, numpy, torch, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import numpy as np
import torch

from edgekit.device import quality
from edgekit.device.generate import drain, generate
from edgekit.device.reference import shared_prefix
from edgekit.device.sampling import Sampler

# max_logit_diff is measured on the reference's top tokens at each position: the full-vocabulary
# maximum is dominated by one of 49,152 rarely-sampled entries (SmolLM2 60-minute student, int8:
# 7.5 over the whole vocabulary while perplexity moved 0.2% and every flip was a near-tie).
TOP_K = 10


def _torch_greedy(model, ids: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        res = model.generate(
            torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
            eos_token_id=sorted(eos) or None, pad_token_id=sorted(eos)[0] if eos else 0,
        )
    for t in res[0, len(ids):].tolist():
        if t in eos:
            break
        out.append(t)
    return out


def eval_token_ids(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    """The first `max_tokens` ids of `texts`, tokenised without special tokens."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def _torch_perplexity(model, wins: list[list[int]]) -> float:
    from edgekit.workshop.textdata import perplexity as torch_ppl

    return torch_ppl(model, torch.tensor(wins))


def verify_causal(torch_model, hf_tokenizer, device_model, device_tokenizer, prompts: list[str],
                  greedy_tokens: int, eval_texts: list[str], eval_tokens: int = 1024) -> dict:
    """Run every check; returns the metrics dict (no pass/fail decision here).

    greedy_agreement: PyTorch generates `greedy_tokens` greedily; the exported model reads the same
      sequence and its top-1 prediction is compared at each of those steps (teacher-forced, so one
      near-tie does not fail every later token), pooled over all prompts' tokens.
    greedy_prefix: the free-running view, leading tokens of the exported model's own greedy
      output that equal PyTorch's, as a share of the longer output (worst prompt); 1.0 means the
      exported model's greedy tokens equal PyTorch's for every prompt.
    """
    eos = set(device_tokenizer.eos_token_ids)
    per_prompt, worst_prefix, max_diff, tok_ok = [], 1.0, 0.0, True
    flip_margins: list[float] = []
    max_diff_all = 0.0
    matched = total = 0
    for prompt in prompts:
        ref_ids = hf_tokenizer(prompt).input_ids
        dev_ids = device_tokenizer.encode(prompt)
        tok_ok &= ref_ids == dev_ids
        ref_new = _torch_greedy(torch_model, ref_ids, greedy_tokens, eos)
        seq = ref_ids + ref_new
        with torch.no_grad():
            ref_logits = torch_model(torch.tensor([seq])).logits[0].numpy()
        dev_logits = device_model.forward(seq, device_model.new_cache())
        diff = np.abs(ref_logits - dev_logits)
        max_diff_all = max(max_diff_all, float(diff.max()))
        top = np.argpartition(ref_logits, -TOP_K, axis=-1)[:, -TOP_K:]  # the tokens generation can pick
        max_diff = max(max_diff, float(np.take_along_axis(diff, top, axis=-1).max()))
        steps = slice(len(ref_ids) - 1, len(seq) - 1)
        same = dev_logits[steps].argmax(-1) == np.asarray(ref_new, dtype=np.int64)
        hits = int(same.sum())
        top2 = np.sort(ref_logits[steps], axis=-1)[:, -2:]
        for step in np.flatnonzero(~same):  # how close PyTorch itself was to choosing otherwise
            flip_margins.append(float(top2[step, 1] - top2[step, 0]))
        matched, total = matched + hits, total + len(ref_new)
        agree = hits / len(ref_new) if ref_new else 1.0
        got = drain(generate(device_model, device_tokenizer, dev_ids, greedy_tokens, Sampler(0.0)))
        prefix = shared_prefix(ref_new, got.token_ids)
        worst_prefix = min(worst_prefix, prefix)
        per_prompt.append({
            "prompt": prompt,
            "reference": device_tokenizer.completion_text(ref_ids, ref_new),
            "exported": got.text,
            "agreement": round(agree, 4),
            "prefix": round(prefix, 4),
        })
    metrics = {
        "tokenizer_match": tok_ok,
        "max_logit_diff": round(max_diff, 6),  # over PyTorch's top-TOP_K tokens at each position (gated)
        "max_logit_diff_all_vocab": round(max_diff_all, 6),  # over every vocabulary entry (recorded)
        "greedy_tokens": greedy_tokens,
        "greedy_agreement": round(matched / total, 4) if total else 1.0,
        "greedy_prefix": round(worst_prefix, 4),
        # PyTorch's own top-1 minus top-2 logit at each disagreement: flips where this is below
        # max_logit_diff are near-ties resolved the other way by quantization noise
        "flip_margins": [round(m, 4) for m in flip_margins],
        "prompts": per_prompt,
    }
    if eval_texts:
        ids = eval_token_ids(device_tokenizer, eval_texts, eval_tokens + 1)
        wins = quality.windows(ids, min(256, device_model.max_sequence_length - 1))
        ref_ppl = _torch_perplexity(torch_model, wins)
        dev_ppl = quality.perplexity(device_model, wins)
        metrics["perplexity"] = {
            "eval_tokens": sum(len(w) - 1 for w in wins), "reference": round(ref_ppl, 4), "exported": round(dev_ppl, 4),
            "ratio": round(dev_ppl / ref_ppl, 4),
        }
    return metrics


def gate_failures(metrics: dict, limits: dict) -> list[str]:
    """Human-readable reasons the metrics miss the target's limits (empty list = pass)."""
    fails = []
    if not metrics["tokenizer_match"]:
        fails.append("device tokenizer ids differ from the build tokenizer's")
    if metrics["greedy_agreement"] < limits["min_greedy_agreement"]:
        fails.append(f"greedy agreement {metrics['greedy_agreement']:.3f} < required {limits['min_greedy_agreement']:.3f}")
    if metrics["max_logit_diff"] > limits["max_logit_diff"]:
        fails.append(f"max |logit diff| {metrics['max_logit_diff']:.4f} > allowed {limits['max_logit_diff']:.4f}")
    ppl = metrics.get("perplexity")
    if ppl and ppl["ratio"] > limits["max_perplexity_ratio"]:
        fails.append(
            f"perplexity {ppl['exported']:.3f} vs fp32 {ppl['reference']:.3f} = {ppl['ratio']:.4f}x "
            f"> allowed {limits['max_perplexity_ratio']:.4f}x"
        )
    return fails


def apply_gate(metrics: dict, fails: list[str], limits: dict, enforced: bool, log) -> None:
    """Record the gate in `metrics`; raise BuildError when it fails and is enforced, else warn."""
    from edgekit.core.errors import BuildError

    metrics["gate"] = {"passed": not fails, "enforced": enforced, "failures": fails, "limits": limits}
    if fails and enforced:
        raise BuildError("quality gate failed: " + "; ".join(fails) + " (use --no-gate to package anyway)")
    for f in fails:
        log(f"warning: quality gate not met (packaged anyway, --no-gate): {f}")
