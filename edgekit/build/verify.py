"""Verify an exported model through the *device* code path against the fp32 PyTorch model.

Checks (all recorded in the manifest):
- tokenizer parity: the bundle's tokenizer.json gives the same ids as the build tokenizer;
- prefill logits: max |logit difference| over the prompts;
- greedy agreement: leading greedy tokens that match PyTorch, as a share of the longer output;
- perplexity on held-out text (when the recipe's eval text is available), exported vs PyTorch.
May import: stdlib, numpy, torch, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Sampler


def _agreement(ref: list[int], got: list[int]) -> float:
    n = max(len(ref), len(got))
    if n == 0:
        return 1.0
    same = 0
    for a, b in zip(ref, got):
        if a != b:
            break
        same += 1
    return same / n


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


def _nll_numpy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood (nats) of `targets` under row-wise `logits`."""
    logits = logits.astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


def perplexity(ids: list[int], chunk: int, device_model=None, torch_model=None) -> float:
    """Perplexity over `ids` in independent chunks of `chunk` tokens (device model or torch model)."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        piece = ids[start:start + chunk + 1]
        if len(piece) < 2:
            break
        x, y = piece[:-1], np.asarray(piece[1:])
        if device_model is not None:
            logits = device_model.forward(x, device_model.new_cache())
        else:
            with torch.no_grad():
                logits = torch_model(torch.tensor([x])).logits[0].numpy()
        nll += _nll_numpy(logits, y)
        count += len(y)
    return math.exp(nll / count)


def eval_token_ids(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def verify_causal(torch_model, hf_tokenizer, device_model, device_tokenizer, prompts: list[str],
                  greedy_tokens: int, eval_texts: list[str], eval_tokens: int = 1024) -> dict:
    """Run every check; returns the metrics dict (no pass/fail decision here)."""
    eos = set(device_tokenizer.eos_token_ids)
    per_prompt, worst_agree, max_diff, tok_ok = [], 1.0, 0.0, True
    for prompt in prompts:
        ref_ids = hf_tokenizer(prompt).input_ids
        dev_ids = device_tokenizer.encode(prompt)
        tok_ok &= ref_ids == dev_ids
        with torch.no_grad():
            ref_logits = torch_model(torch.tensor([ref_ids])).logits[0].numpy()
        dev_logits = device_model.forward(dev_ids, device_model.new_cache())
        if ref_logits.shape == dev_logits.shape:
            max_diff = max(max_diff, float(np.abs(ref_logits - dev_logits).max()))
        ref_new = _torch_greedy(torch_model, ref_ids, greedy_tokens, eos)
        got = drain(generate(device_model, device_tokenizer, dev_ids, greedy_tokens, Sampler(0.0)))
        agree = _agreement(ref_new, got.token_ids)
        worst_agree = min(worst_agree, agree)
        per_prompt.append({
            "prompt": prompt,
            "reference": device_tokenizer.completion_text(ref_ids, ref_new),
            "exported": got.text,
            "agreement": round(agree, 4),
        })
    metrics = {
        "tokenizer_match": tok_ok,
        "max_logit_diff": round(max_diff, 6),
        "greedy_tokens": greedy_tokens,
        "greedy_agreement": round(worst_agree, 4),
        "prompts": per_prompt,
    }
    if eval_texts:
        ids = eval_token_ids(device_tokenizer, eval_texts, eval_tokens)
        chunk = min(256, device_model.max_sequence_length) - 1
        ref_ppl = perplexity(ids, chunk, torch_model=torch_model)
        dev_ppl = perplexity(ids, chunk, device_model=device_model)
        metrics["perplexity"] = {
            "eval_tokens": len(ids), "reference": round(ref_ppl, 4), "exported": round(dev_ppl, 4),
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


def read_texts(paths: list[Path]) -> list[str]:
    """Eval texts: CRLF normalised, `<|endoftext|>` document separators turned into blank lines."""
    texts = []
    for p in paths:
        raw = p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        texts.append(raw.replace("<|endoftext|>", "\n\n"))
    return texts
