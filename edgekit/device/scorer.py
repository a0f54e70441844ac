"""A bundle as a scorer: every row's logits for a list of ids, with its tokenizer and chat settings.

The interface edgekit.device.chat_quality and edgekit.device.sst2 score with (the build side has a
PyTorch equivalent in edgekit.workshop.evaluate): `logits(ids)` [len(ids), vocab] float, `encode(text,
add_special_tokens)`, `chat_template` (None: the plain default template), `bos_token`, `eos_token`,
`end_of_turn_id`, `perplexity(windows)` and a `kind` label.
May import: stdlib, numpy, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import numpy as np

from edgekit.device import quality
from edgekit.device.chat_quality import Scorer, end_of_turn_id


class BundleScorer(Scorer):
    """Scores with a loaded bundle (edgekit.device.runtime.load) on the device runtime."""

    def __init__(self, loaded):
        self._model = loaded.model
        self._tok = loaded.tokenizer
        gen = loaded.generation
        self.chat_template = gen.get("chat_template") or None
        self.bos_token = gen.get("bos_token", "")
        self.eos_token = gen.get("eos_token", "")
        self.end_of_turn_id = end_of_turn_id(self.eos_token, self._tok.token_to_id, sorted(self._tok.eos_token_ids))
        m = loaded.bundle.manifest["model"]
        self.kind = f"bundle ({m['precision']}, {m['runtime']} on {loaded.accelerator})"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def logits(self, ids: list[int]) -> np.ndarray:
        return np.asarray(self._model.forward(list(ids), self._model.new_cache()))

    def perplexity(self, wins: list[list[int]]) -> float:
        return quality.perplexity(self._model, wins)
