"""The generation loop: prefill once, then one token per step (or several per model pass with a
speculative draft, edgekit.device.speculative), with stop strings and timings.

Works with any model object that has `new_cache()` and `forward(ids, cache, last_only=False) ->
logits [S, V]` (with `last_only`, [1, V] of the last token: all a prompt's prefill needs).
Text is detokenized incrementally (edgekit.device.tokenizer.IncrementalText: a constant cost per
token) and only the held-back tail is searched for stop strings. The sampler's repetition
penalties (edgekit.device.sampling.Penalties) apply to every step's logits, greedy included.
Time comes from an injected clock (default time.perf_counter). Timings are seconds.
May import: stdlib, numpy, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from edgekit.device.prefix_cache import prefill
from edgekit.device.sampling import Sampler
from edgekit.device.tokenizer import IncrementalText


@dataclass
class GenerationResult:
    """Outcome of one generation. Times in seconds."""

    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    cached_tokens: int = 0  # prompt tokens whose KV cache came from the prefix cache (not run again)
    drafted_tokens: int = 0  # speculative decoding: tokens the draft proposed
    accepted_tokens: int = 0  # ... and the model accepted
    verify_passes: int = 0  # ... in this many forward passes of the model over the drafts

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(self.completion_tokens - 1, 0)  # the first token comes from prefill
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could still become a stop string (at most the longest
    stop string's length - 1: the request limits bound it)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class _Unconstrained:
    """Every token allowed (no `constraint`)."""

    def mask(self, logits):
        return logits

    def advance(self, token: int) -> None:
        pass


_UNCONSTRAINED = _Unconstrained()


def plain_tokens(model, prompt_ids: list[int], sampler: Sampler, result: GenerationResult,
                 constraint=_UNCONSTRAINED, prefix_cache=None) -> Iterator[tuple[int, np.ndarray]]:
    """(token, the model's logits it was chosen from) one at a time: prefill once (the longest prefix
    stored in `prefix_cache` is not run again: result.cached_tokens), then one forward per token; the
    `constraint` masks each step's logits after the penalties and advances past each token. The caller
    stops pulling when it is done (no forward runs after the last token); closing the generator stores
    the prompt's cache (and the answer's, with reuse_answers) for later requests."""
    cache, result.cached_tokens, logits = prefill(model, prompt_ids, prefix_cache)
    history = sampler.penalties.track(prompt_ids, logits.shape[-1])  # repetition penalties, before any choice
    try:
        while True:
            token = sampler(constraint.mask(history.apply(logits)))
            yield token, logits
            history.add(token)
            constraint.advance(token)
            logits = model.forward([token], cache)[-1]
    finally:
        if prefix_cache is not None:
            prefix_cache.store_generation(model, prompt_ids, result.token_ids, cache)


def generate(
    model, tokenizer, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler, stop: list[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    should_stop: Callable[[], bool] | None = None,
    recorder=None, constraint=None, prefix_cache=None, speculation=None,
) -> Iterator[str]:
    """Yield text deltas as tokens arrive; the generator's return value is a GenerationResult
    (`result = yield from generate(...)` or `drain(generate(...))`). `should_stop` lets a caller cancel
    (a client disconnected): finish_reason "cancelled". A `recorder` (edgekit.device.logprobs.
    LogprobRecorder) gets each generated token and the model's logits it came from (before penalties).
    With `speculation` (edgekit.device.speculative.Speculation) its draft proposes tokens that `model`
    verifies several at a time (greedy: the same tokens; sampled: the same distribution). `constraint`,
    `prefix_cache`: see plain_tokens; with a draft only the model's prompt is reused (the draft
    prefills its own cache; a constrained request decodes without the draft)."""
    stops, result = [s for s in (stop or []) if s], GenerationResult(prompt_tokens=len(prompt_ids))
    detok = IncrementalText(tokenizer, prompt_ids)
    budget = min(max_new_tokens, model.max_sequence_length - len(prompt_ids))
    if speculation is None or constraint is not None:
        source = plain_tokens(model, prompt_ids, sampler, result, constraint or _UNCONSTRAINED, prefix_cache)
    else:
        source = speculation.tokens(model, prompt_ids, sampler, budget, result, prefix_cache)
    sent, pending, hit = [], "", False  # text yielded; produced but held back (a possible stop string)
    t0 = clock()
    item = next(source)  # prefill and the first choice
    t_decode = clock()
    result.prefill_seconds = t_decode - t0
    while result.completion_tokens < budget:
        token, logits = item
        if token in tokenizer.eos_token_ids:
            result.finish_reason = "stop"
            break
        result.token_ids.append(token)
        if recorder is not None:
            recorder.record(logits, token)
        pending, hit = _cut_at_stop(pending + detok.add(token), stops)
        if hit:
            result.finish_reason = "stop"
            break
        safe = len(pending) - _held_back(pending, stops)
        if safe > 0:
            sent.append(pending[:safe])
            yield pending[:safe]
            pending = pending[safe:]
        if should_stop is not None and should_stop():
            result.finish_reason = "cancelled"
            break
        if result.completion_tokens >= budget:
            break
        item = next(source)
    result.decode_seconds = clock() - t_decode
    source.close()  # the source stores the prompt's cache for later requests
    if not hit:  # a character still split at the end, then the last check for a stop string
        pending, hit = _cut_at_stop(pending + detok.flush(), stops)
        result.finish_reason = "stop" if hit else result.finish_reason
    if pending:
        sent.append(pending)
        yield pending
    result.text = "".join(sent)
    return result


def _cut_at_stop(pending: str, stops: list[str]) -> tuple[str, bool]:
    """(`pending` up to the first stop string in it, whether there was one). Text already sent cannot
    hold the start of a stop string (it was held back), so only `pending` is searched."""
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    return (pending[: min(hits)], True) if hits else (pending, False)


def drain(gen: Iterator[str]) -> GenerationResult:
    """Run a `generate` generator to the end and return its GenerationResult."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
