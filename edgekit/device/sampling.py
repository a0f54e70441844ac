"""Choosing the next token from logits: repetition penalties, then greedy, temperature, top-k,
top-p, seeded.

Penalties (`Penalties`, applied by a per-generation `PenaltyState` before any choice, greedy too):
  frequency_penalty / presence_penalty: OpenAI's definition,
    logits[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty,
    c[j] = times token j was generated so far in this completion (the prompt does not count).
  repeat_penalty (llama.cpp's): a token among the last `repeat_last_n` tokens of the context
    (prompt included, as llama-server replays the prompt into its sampler) has a positive logit
    divided by the penalty, a logit <= 0 multiplied by it; once per token, however often it occurs.
    repeat_last_n: 0 disables it, -1 means the whole context. Applied before the OpenAI penalties
    (llama.cpp's order). 1.0 = off.
Counts live in numpy arrays updated once per token: the per-token cost is O(vocab), never a
rescan of the history.
May import: stdlib, numpy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Penalties:
    """Repetition penalty settings of one request; the defaults turn every penalty off."""

    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    @property
    def active(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.repeats)

    @property
    def repeats(self) -> bool:
        return self.repeat_penalty != 1.0 and self.repeat_last_n != 0

    def track(self, prompt_ids: list[int], vocab: int) -> "PenaltyState":
        """The state of one generation over a `vocab`-sized logits vector, after `prompt_ids`."""
        return PenaltyState(self, prompt_ids, vocab)


class PenaltyState:
    """Token counts of one generation: `apply` penalises a logits vector, `add` records a token."""

    def __init__(self, settings: Penalties, prompt_ids: list[int], vocab: int):
        self.settings = settings
        self.generated = np.zeros(vocab, dtype=np.int64)  # c[j]: this completion only
        self.in_window = np.zeros(vocab, dtype=np.int64)  # occurrences among the last repeat_last_n
        n = settings.repeat_last_n
        self.window: deque[int] = deque()
        self.window_size = None if n < 0 else n
        if settings.repeats:
            for token in prompt_ids[-n:] if n > 0 else prompt_ids:
                self._enter(token)

    def _enter(self, token: int) -> None:
        if not 0 <= token < len(self.in_window):
            return  # an id outside the logits (never produced by the model) cannot be penalised
        self.window.append(token)
        self.in_window[token] += 1
        if self.window_size is not None and len(self.window) > self.window_size:
            self.in_window[self.window.popleft()] -= 1

    def add(self, token: int) -> None:
        """Record a generated token."""
        if not self.settings.active:
            return
        if 0 <= token < len(self.generated):
            self.generated[token] += 1
        if self.settings.repeats:
            self._enter(token)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The penalised logits (a new float64 array), or `logits` itself when no penalty is on."""
        s = self.settings
        if not s.active:
            return logits
        out = logits.astype(np.float64)  # a copy: the model's buffer is never changed
        if s.repeats:
            seen = self.in_window > 0
            out = np.where(seen, np.where(out <= 0, out * s.repeat_penalty, out / s.repeat_penalty), out)
        if s.frequency_penalty or s.presence_penalty:
            out -= self.generated * s.frequency_penalty + (self.generated > 0) * s.presence_penalty
        return out


class Sampler:
    """Picks a token id from a 1-D logits vector.

    temperature 0 means greedy (argmax). top_k 0 and top_p 1.0 disable those filters.
    A seed makes the choice reproducible for the same logits sequence. `penalties` are applied by
    the generation loop (it owns the token counts: Penalties.track), before this call.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 penalties: Penalties | None = None):
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.rng = np.random.default_rng(seed)
        self.penalties = penalties or Penalties()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def _filtered(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids kept by top-k / top-p, most likely first; their probabilities at the temperature)."""
        scaled = logits.astype(np.float64) / self.temperature
        order = np.argsort(-scaled, kind="stable")
        if self.top_k > 0:
            order = order[: self.top_k]
        kept = scaled[order]
        probs = np.exp(kept - kept.max())
        probs /= probs.sum()
        if self.top_p < 1.0:
            cutoff = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            order, probs = order[:cutoff], probs[:cutoff] / probs[:cutoff].sum()
        return order, probs

    def __call__(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        order, probs = self._filtered(logits)
        return int(order[self.rng.choice(len(order), p=probs)])

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities over the whole vocabulary that `__call__` draws from (float64; greedy: a
        one-hot of the argmax): what speculative sampling compares between draft and model."""
        if self.greedy:
            out = np.zeros(logits.shape[-1], dtype=np.float64)
            out[int(np.argmax(logits))] = 1.0
            return out
        order, probs = self._filtered(logits)
        out = np.zeros(logits.shape[-1], dtype=np.float64)
        out[order] = probs
        return out

    def draw(self, probs: np.ndarray) -> int:
        """A token id drawn from `probs` (a distribution over the vocabulary) with this sampler's rng."""
        return int(self.rng.choice(len(probs), p=probs / probs.sum()))

    def uniform(self) -> float:
        """A number in [0, 1) from this sampler's rng (the accept test of speculative sampling)."""
        return float(self.rng.random())
