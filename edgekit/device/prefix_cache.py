"""A prompt/prefix cache for `edgekit serve`: the KV caches of recent generations, kept within a
memory budget (bytes, least recently used dropped first), so a prompt that starts with tokens run
before (a chat's system prompt and earlier turns) prefills only the rest.

An entry is the token ids a cache holds (prompt + the completion tokens fed back) and an
independent snapshot of that cache. A runner takes part when it has `cache_copy(cache, n_tokens)`
(an independent cache holding the first n tokens: snapshots are stored and restored with it) and
`cache_nbytes(cache)`; other runners (no such methods) simply get no reuse. A lookup always leaves
at least one prompt token to run: the next token's logits come from running it.

What is kept after a generation: the prompt's cache (default), or with `reuse_answers` the prompt's and
the completion tokens fed back (a next chat turn, which repeats the answer, then matches it too). The
answer's keys and values come from one-token decode steps, whose arithmetic can differ slightly from a
batched prefill of the same tokens (measured on an int8-dynamic ONNX graph: logits up to 0.4 apart), so
with `reuse_answers` greedy output can differ from an uncached run where two tokens nearly tie. Prompt
prefixes are exact: runners give the same values whatever the prefill's split (tested).
Sizes in bytes. Lookups and stores take the cache's own lock: with serve --parallel several requests
look up and store at once.
May import: stdlib, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass

MIB = 1024 * 1024


def _locked(method):
    """Run `method` under the PrefixCache's lock (requests of serve --parallel call it at once)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


def supports(model) -> bool:
    """Whether `model` can snapshot and restore its cache exactly (ONNX and LiteRT runners with float
    caches can; a runner whose `prefix_reuse_exact` is False, such as a full-int8 LiteRT graph whose
    cache is requantized on the way back in, cannot)."""
    return (callable(getattr(model, "cache_copy", None)) and callable(getattr(model, "cache_nbytes", None))
            and getattr(model, "prefix_reuse_exact", True))


def common_prefix(a, b) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    snapshot: object
    nbytes: int


class PrefixCache:
    """Snapshots of KV caches by the tokens they hold, within `budget_bytes` (LRU)."""

    def __init__(self, budget_bytes: int, reuse_answers: bool = False):
        if budget_bytes < 0:
            raise ValueError("the prefix cache budget cannot be negative")
        self.budget_bytes = int(budget_bytes)
        self.reuse_answers = reuse_answers
        self.entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()  # oldest use first
        self.used_bytes = self.tokens_held = 0  # kept as counts: /props reads them from another thread
        self.lookups = self.hits = self.tokens_reused = self.evictions = 0
        self._lock = threading.RLock()

    @_locked
    def lookup(self, model, prompt_ids: list[int]):
        """(a cache for `model` holding the longest stored prefix of `prompt_ids`, that prefix's length
        in tokens); (model.new_cache(), 0) when nothing matches or the runner cannot restore caches.
        At most len(prompt_ids) - 1 tokens are reused."""
        self.lookups += 1
        best, best_n = None, 0
        if supports(model):
            for entry in self.entries.values():
                n = min(common_prefix(entry.tokens, prompt_ids), len(prompt_ids) - 1)
                if n > best_n:
                    best, best_n = entry, n
        if best is None:
            return model.new_cache(), 0
        self.entries.move_to_end(best.tokens)
        self.hits += 1
        self.tokens_reused += best_n
        return model.cache_copy(best.snapshot, best_n), best_n

    @_locked
    def store(self, model, token_ids: list[int], cache) -> bool:
        """Keep a snapshot of `cache`, which holds `token_ids` (all of them, in order), unless an entry
        already holds them. Entries whose tokens are a prefix of these are dropped (this one covers
        them); the least recently used go until it fits. False when it was not kept (no support, empty, or larger than the budget)."""
        tokens = tuple(token_ids)
        if not tokens or not supports(model) or self.budget_bytes == 0:
            return False
        covering = next((k for k in self.entries if common_prefix(k, tokens) == len(tokens)), None)
        if covering is not None:  # already held (by this entry or a longer one): no copy needed
            self.entries.move_to_end(covering)
            return True
        snapshot = model.cache_copy(cache, len(tokens))
        nbytes = int(model.cache_nbytes(snapshot))
        if nbytes > self.budget_bytes:
            return False
        for key in [k for k in self.entries if common_prefix(k, tokens) == len(k)]:
            self._drop(key)
        while self.used_bytes + nbytes > self.budget_bytes:
            self._drop(next(iter(self.entries)))
            self.evictions += 1
        self.entries[tokens] = _Entry(tokens, snapshot, nbytes)
        self.used_bytes += nbytes
        self.tokens_held += len(tokens)
        return True

    def store_generation(self, model, prompt_ids: list[int], completion_ids: list[int], cache) -> bool:
        """After a generation: keep the prompt's cache, or (reuse_answers) the prompt's and the completion
        tokens fed back (the cache's `length` says how many were)."""
        fed = getattr(cache, "length", 0)
        n = fed if self.reuse_answers else min(len(prompt_ids), fed)
        return self.store(model, (list(prompt_ids) + list(completion_ids))[:n], cache)

    def _drop(self, key) -> None:
        entry = self.entries.pop(key)
        self.used_bytes -= entry.nbytes
        self.tokens_held -= len(entry.tokens)

    @_locked
    def clear(self) -> None:
        self.entries.clear()
        self.used_bytes = self.tokens_held = 0

    def describe(self) -> dict:
        """/props "prefix_cache": the budget and its use, and the reuse so far (plain counters: safe to
        read while a generation thread stores)."""
        return {"budget_bytes": self.budget_bytes, "reuse_answers": self.reuse_answers, "used_bytes": self.used_bytes, "entries": len(self.entries),
                "tokens_held": self.tokens_held, "lookups": self.lookups, "hits": self.hits,
                "tokens_reused": self.tokens_reused, "evictions": self.evictions}


def prefill(model, prompt_ids: list[int], prefix_cache: PrefixCache | None):
    """(the cache after the prompt, prompt tokens taken from `prefix_cache`, the last token's logits).
    The prompt's longest stored prefix is not run again; its lookup counts in prefill_seconds."""
    cache, reused = prefix_cache.lookup(model, prompt_ids) if prefix_cache is not None else (model.new_cache(), 0)
    return cache, reused, model.forward(prompt_ids[reused:], cache, last_only=True)[-1]
