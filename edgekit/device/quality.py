"""Quality measures that run on the device runtime: perplexity from a runner's logits.

Perplexity = exp(mean next-token negative log-likelihood, in nats) over independent windows
of `window` + 1 tokens (the same windows the build side uses in edgekit/workshop/textdata.py).
May import: stdlib, numpy.
"""

from __future__ import annotations

import math

import numpy as np


def nll_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood (nats) of `targets` [N] under row-wise `logits` [N, V]."""
    logits = logits.astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


def windows(ids: list[int], window: int, max_windows: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of `window` + 1 tokens (input plus shifted target)."""
    n = (len(ids) - 1) // window
    if max_windows is not None:
        n = min(n, max_windows)
    return [ids[i * window: (i + 1) * window + 1] for i in range(n)]


def perplexity(model, wins: list[list[int]]) -> float:
    """Perplexity of a device runner (`new_cache()`, `forward(ids, cache)`) over token windows."""
    nll, count = 0.0, 0
    for w in wins:
        logits = model.forward(w[:-1], model.new_cache())
        nll += nll_sum(logits, np.asarray(w[1:]))
        count += len(w) - 1
    if count == 0:
        raise ValueError("no complete window to evaluate")
    return math.exp(nll / count)
