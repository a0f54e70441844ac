"""Fakes for the device layer: a tiny deterministic model, tokenizer and onnxruntime-like session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.device.onnx_model import KVCache

VOCAB = 12  # ids 0 = BOS, 1 = EOS, 2.. = letters
LETTERS = "abcdefghij"


class FakeTokenizer:
    """Maps letters to ids 2..11; BOS (0) is prepended by encode, EOS is 1."""

    eos_token_ids = frozenset({1})

    def encode(self, text: str) -> list[int]:
        return [0] + [2 + LETTERS.index(c) for c in text if c in LETTERS]

    def decode(self, ids: list[int]) -> str:
        return "".join(LETTERS[i - 2] for i in ids if i >= 2)

    def completion_text(self, prompt_ids, new_ids, prompt_text=None) -> str:
        return self.decode(new_ids)


class ScriptedModel:
    """Always predicts the next token of `script` (cycling), counting forward calls."""

    def __init__(self, script: list[int], max_sequence_length: int = 64):
        self.script = script
        self.max_sequence_length = max_sequence_length
        self.calls: list[int] = []

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, token_ids, cache):
        self.calls.append(len(token_ids))
        rows = []
        for k in range(len(token_ids)):
            logits = np.zeros(VOCAB, dtype=np.float32)
            logits[self.script[(cache.length + k) % len(self.script)]] = 5.0
            rows.append(logits)
        cache.length += len(token_ids)
        return np.stack(rows)


@dataclass
class _Info:
    name: str
    shape: list


class FakeOrtSession:
    """Records feeds; returns logits favouring (position + 2) and presents grown by one per token."""

    def __init__(self, layers: int = 2, kv_heads: int = 2, head_dim: int = 4):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.feeds: list[dict] = []

    def get_inputs(self):
        names = ["input_ids", "attention_mask", "position_ids"]
        names += [f"past_{k}_{i}" for i in range(self.layers) for k in ("key", "value")]
        return [_Info(n, [1, self.kv_heads, "past", self.head_dim] if n.startswith("past") else [1, "s"]) for n in names]

    def get_outputs(self):
        return [_Info("logits", [])] + [_Info(f"present_{k}_{i}", []) for i in range(self.layers) for k in ("key", "value")]

    def run(self, output_names, feeds):
        self.feeds.append(feeds)
        s = feeds["input_ids"].shape[1]
        total = feeds["attention_mask"].shape[1]
        logits = np.zeros((1, s, VOCAB), dtype=np.float32)
        for k, pos in enumerate(feeds["position_ids"][0]):
            logits[0, k, 2 + (pos % 10)] = 1.0
        present = [np.full((1, self.kv_heads, total, self.head_dim), total, dtype=np.float32)
                   for _ in range(2 * self.layers)]
        return [logits, *present]
