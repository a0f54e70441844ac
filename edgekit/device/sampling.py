"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

May import: stdlib, numpy.
"""

from __future__ import annotations

import numpy as np


class Sampler:
    """Picks a token id from a 1-D logits vector.

    temperature 0 means greedy (argmax). top_k 0 and top_p 1.0 disable those filters.
    A seed makes the choice reproducible for the same logits sequence.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None):
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __call__(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
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
        return int(order[self.rng.choice(len(order), p=probs)])
