"""Speculative decoding: a small draft model (the student edgekit distilled) proposes k tokens, the
model it was distilled from (the teacher) checks them all in one forward pass of k+1 positions.

Standard speculative sampling (Leviathan et al. 2023; Chen et al. 2023):
  greedy   accept the draft's tokens while they equal the model's argmax at that position, then
           add the model's own token there (the correction, or a bonus after k accepted): the
           output is the model's greedy output, token for token, as far as the runtime computes a
           k+1-position pass with the numbers of k+1 one-position steps. ONNX int8 (activations
           quantized per block at run time) does to ~1e-5, which can round an activation to the
           next int8 step: logits then move by up to ~0.1, enough to flip a near-tie.
  sampled  accept draft token y (drawn from the draft's distribution q) with probability
           min(1, p(y) / q(y)), p the model's distribution at that position (penalties, temperature,
           top-k and top-p applied, as without a draft); at the first rejection draw from
           norm(max(0, p - q)) instead. Every token is then distributed as the model alone would draw it.
The draft proposes from its raw logits with the request's temperature / top-k / top-p (repetition
penalties are the model's side only: the draft's choices can never change the output, only how much
of it is accepted). After a rejection both KV caches are rewound (`rewind(cache, length)`, which the
ONNX runner has) to the accepted tokens. Counts: drafted / accepted tokens and verify passes, per
generation (GenerationResult) and in total (Speculation, for /props and /metrics).
May import: stdlib, numpy, edgekit.device.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from edgekit.device.prefix_cache import prefill
from edgekit.device.sampling import Sampler

DEFAULT_DRAFT_TOKENS = 4


@dataclass
class Speculation:
    """A draft model and how many tokens it proposes per verify pass (`k`), with running totals."""

    draft: object
    k: int = DEFAULT_DRAFT_TOKENS
    name: str = "draft"
    layers: int | None = None
    drafted: int = 0
    accepted: int = 0
    passes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tokens(self, model, prompt_ids: list[int], sampler: Sampler, budget: int, result,
               prefix_cache=None) -> Iterator:
        """(token, the model's logits it was chosen from) pairs, as edgekit.device.generate's plain
        loop yields them; `budget` bounds how much is drafted, `result` (a GenerationResult) and these
        totals count drafted and accepted tokens. The model's prompt prefill reuses `prefix_cache`
        (result.cached_tokens) and closing the generator stores the prompt's cache there."""
        return _speculative_tokens(self, model, prompt_ids, sampler, budget, result, prefix_cache)

    def count(self, result, drafted: int, accepted: int) -> None:
        result.drafted_tokens += drafted
        result.accepted_tokens += accepted
        result.verify_passes += 1
        with self._lock:
            self.drafted += drafted
            self.accepted += accepted
            self.passes += 1

    def describe(self) -> dict:
        """/props "speculative": the draft, k and the acceptance so far."""
        with self._lock:
            rate = self.accepted / self.drafted if self.drafted else None
            return {"draft": self.name, "draft_layers": self.layers, "draft_tokens": self.k,
                    "drafted_tokens": self.drafted, "accepted_tokens": self.accepted, "verify_passes": self.passes,
                    "acceptance_rate": None if rate is None else round(rate, 4)}


def _room(spec: Speculation, model, context_length: int, produced: int, budget: int) -> int:
    """How many tokens to draft now: at most k, no more than the request can still use (the verify
    pass adds one token of its own), and within both models' context lengths."""
    return max(0, min(spec.k, budget - produced - 1, model.max_sequence_length - context_length,
                      spec.draft.max_sequence_length - context_length + 1))


def _draft(draft, cache, context: list[int], k: int, sampler: Sampler) -> tuple[list[int], list]:
    """k proposals after `context` (feeding the draft what its cache lacks first) and, when
    sampling, the distribution each was drawn from."""
    feed, proposals, dists = context[cache.length:], [], []
    for _ in range(k):
        row = draft.forward(feed, cache, last_only=True)[-1]
        if sampler.greedy:
            token, q = int(np.argmax(row)), None
        else:
            q = sampler.distribution(row)
            token = sampler.draw(q)
        proposals.append(token)
        dists.append(q)
        feed = [token]
    return proposals, dists


def _choose(sampler: Sampler, logits: np.ndarray, proposal: int | None, q) -> tuple[int, bool]:
    """(the token at this position, whether it is the draft's `proposal`), from the model's
    penalised `logits`; `proposal` None: the bonus position, a plain choice."""
    if sampler.greedy:
        token = int(np.argmax(logits))
        return token, token == proposal
    p = sampler.distribution(logits)
    if proposal is None:
        return sampler.draw(p), False
    if sampler.uniform() < min(1.0, p[proposal] / q[proposal]):
        return proposal, True
    residual = np.maximum(p - q, 0.0)
    return sampler.draw(residual if residual.sum() > 0 else p), False


def _speculative_tokens(spec: Speculation, model, prompt_ids: list[int], sampler: Sampler, budget: int, result,
                        prefix_cache=None):
    target, result.cached_tokens, logits = prefill(model, prompt_ids, prefix_cache)
    try:
        yield from _verified(spec, model, target, prompt_ids, logits, sampler, budget, result)
    finally:  # the model's cache always holds the whole prompt here (rewinds never go below it)
        if prefix_cache is not None:
            prefix_cache.store_generation(model, prompt_ids, result.token_ids, target)


def _verified(spec: Speculation, model, target, prompt_ids: list[int], logits, sampler: Sampler, budget: int,
              result):
    """The prefilled model's first token, then draft-and-verify passes (plain steps when there is no room)."""
    drafted = spec.draft.new_cache()
    history = sampler.penalties.track(prompt_ids, logits.shape[-1])
    token = sampler(history.apply(logits))
    context, produced = list(prompt_ids) + [token], 1
    yield token, logits
    history.add(token)
    while True:
        k = _room(spec, model, len(context), produced, budget)
        if k == 0:  # no room to draft: one plain step
            logits = model.forward([context[-1]], target)[-1]
            token = sampler(history.apply(logits))
            context.append(token)
            produced += 1
            yield token, logits
            history.add(token)
            continue
        proposals, dists = _draft(spec.draft, drafted, context, k, sampler)
        rows = model.forward([context[-1]] + proposals, target)  # k+1 positions in one pass
        base, out = len(context), []
        for j in range(k + 1):
            token, agreed = _choose(sampler, history.apply(rows[j]), proposals[j] if j < k else None,
                                    dists[j] if j < k else None)
            out.append((token, rows[j]))
            history.add(token)  # every token in `out` is yielded: the next position's penalties see it
            if not agreed:
                break
        accepted = len(out) - 1
        spec.count(result, k, accepted)
        model.rewind(target, base + accepted)  # the model's cache: everything but the newest token
        spec.draft.rewind(drafted, min(drafted.length, base + accepted))
        for token, row in out:
            context.append(token)
            produced += 1
            yield token, row
