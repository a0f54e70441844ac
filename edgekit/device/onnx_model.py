"""A KV-cache causal LM running on onnxruntime.

The exported graph (see edgekit/workshop/onnx_export.py) has inputs
  input_ids [1, S] int64, attention_mask [1, P+S] int64, position_ids [1, S] int64,
  past_key_i / past_value_i [1, kv_heads, P, head_dim] float32 for each layer i
and outputs logits [1, S, vocab] float32 and present_key_i / present_value_i [1, kv_heads, P+S, head_dim].
Current exports also take logits_rows [R] int64 and return logits [1, R, vocab] for those positions
only: forward(..., last_only=True) asks for the last one. Older bundles without it still load.
Prefill runs once over the prompt (P = 0); each decode step feeds one token and the cache.

The session is injected (anything with onnxruntime's `run(output_names, feeds)` and
`get_inputs()`), so tests can pass a fake. May import: stdlib, numpy, onnxruntime (lazily).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class KVCache:
    """Per-request cache: one (key, value) pair of arrays per layer; `length` tokens so far."""

    past: list[np.ndarray] = field(default_factory=list)
    length: int = 0


class OnnxCausalLM:
    """Runs prefill/decode steps of an exported decoder on an onnxruntime-like session."""

    def __init__(self, session, max_sequence_length: int):
        self.session = session
        self.max_sequence_length = max_sequence_length
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = sorted(
            (n for n in inputs if n.startswith("past_")),
            key=lambda n: (int(n.rsplit("_", 1)[1]), n.startswith("past_value")),
        )
        first = inputs[self.past_names[0]].shape
        self.kv_heads, self.head_dim = int(first[1]), int(first[3])
        self.output_names = [o.name for o in session.get_outputs()]
        self.selects = "logits_rows" in inputs  # the graph computes only the rows asked for

    def new_cache(self) -> KVCache:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return KVCache(past=[empty] * len(self.past_names), length=0)

    def cache_copy(self, cache: KVCache, n_tokens: int) -> KVCache:
        """An independent cache holding the first `n_tokens` of `cache` (edgekit.device.prefix_cache)."""
        if not 0 <= n_tokens <= cache.length:
            raise ValueError(f"cannot copy {n_tokens} tokens of a cache holding {cache.length}")
        return KVCache(past=[np.array(a[:, :, :n_tokens]) for a in cache.past], length=n_tokens)

    def cache_nbytes(self, cache: KVCache) -> int:
        return sum(a.nbytes for a in cache.past)

    def rewind(self, cache: KVCache, length: int) -> None:
        """Forget every cached token after the first `length` (speculative decoding's rejected drafts)."""
        if not 0 <= length <= cache.length:
            raise ValueError(f"cannot rewind a cache of {cache.length} tokens to {length}")
        cache.past = [np.ascontiguousarray(p[:, :, :length]) for p in cache.past]
        cache.length = length

    def forward(self, token_ids: list[int], cache: KVCache, last_only: bool = False) -> np.ndarray:
        """Run `token_ids` after the cached tokens; returns logits [len(token_ids), vocab] ([1, vocab]
        of the last token with `last_only`, the only row computed when the graph selects); updates cache."""
        n = len(token_ids)
        if n == 0:
            raise ValueError("forward needs at least one token")
        total = cache.length + n
        if total > self.max_sequence_length:
            raise ValueError(f"sequence of {total} tokens exceeds the model's {self.max_sequence_length}")
        feeds = {
            "input_ids": np.asarray([token_ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(cache.length, total, dtype=np.int64)[None, :],
        }
        if self.selects:
            feeds["logits_rows"] = np.arange(n - 1 if last_only else 0, n, dtype=np.int64)
        feeds.update(zip(self.past_names, cache.past))
        outputs = self.session.run(self.output_names, feeds)
        cache.past = list(outputs[1:])
        cache.length = total
        return outputs[0][0][-1:] if last_only else outputs[0][0]  # (a selecting graph gave 1 row)


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off (unless the user set ORT_DISABLE_TELEMETRY): an
    offline device server sends nothing, and onnxruntime 1.32 otherwise writes a session-id file
    `$TMPDIR/.ses` at import, which outlives every `edgekit serve`."""
    import os

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def ort_session(model_path, threads: int = 0, spin: bool = True):
    """An onnxruntime CPU session (threads 0 = onnxruntime's default). `spin` False: its idle threads
    sleep instead of spinning (two sessions taking turns, a model and its draft, would otherwise
    spin on the cores the other one needs)."""
    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])


def open_onnx(model_path, manifest: dict, threads: int = 0, session=None) -> OnnxCausalLM:
    """An OnnxCausalLM for the bundle's model file; `session` overrides the real one (tests)."""
    if session is None:  # a model paired with a draft (manifest "draft"): sessions take turns, no spinning
        session = ort_session(model_path, threads, spin=not manifest.get("paired", False))
    lm = OnnxCausalLM(session, manifest["model"]["max_sequence_length"])
    lm.accelerator = "cpu (onnxruntime)"
    return lm
