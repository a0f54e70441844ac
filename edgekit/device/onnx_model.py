"""A KV-cache causal LM running on onnxruntime.

The exported graph (see edgekit/workshop/onnx_export.py) has inputs
  input_ids [1, S] int64, attention_mask [1, P+S] int64, position_ids [1, S] int64,
  past_key_i / past_value_i [1, kv_heads, P, head_dim] float32 for each layer i
and outputs logits [1, S, vocab] float32 and present_key_i / present_value_i [1, kv_heads, P+S, head_dim].
Current exports also take logits_rows [R] int64 and return logits [1, R, vocab] for those positions
only: forward(..., last_only=True) asks for the last one. Older bundles without it still load.
Prefill runs once over the prompt (P = 0); each decode step feeds one token and the cache.
Current exports have a dynamic batch axis (dim 0 `batch`): forward_batch() runs one decode step of
several requests' caches at once (serve --parallel; each row's past left-padded to the longest with
attention_mask 0, position_ids its own length). Older exports fixed at batch 1: `batch_refusal` says so.
Exports whose attention is GroupQueryAttention (input `seqlens_k`, edgekit/workshop/onnx_gqa.py) keep
each cache in buffers of the full capacity that onnxruntime updates in place (edgekit/device/onnx_inplace.py):
no growing copy per step; older bundles keep the copying path.

The session is injected (anything with onnxruntime's `run(output_names, feeds)` and
`get_inputs()`), so tests can pass a fake. May import: stdlib, numpy, onnxruntime (lazily).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.device import onnx_inplace


@dataclass
class KVCache:
    """Per-request cache: one (key, value) pair of arrays per layer; `length` tokens so far."""

    past: list[np.ndarray] = field(default_factory=list)
    length: int = 0
    bound: tuple | None = field(default=None, repr=False)  # in-place graphs: (past[0], IOBinding over past)


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
        self.inplace = "seqlens_k" in inputs  # GroupQueryAttention: caches updated in place
        self.selects = "logits_rows" in inputs  # the graph computes only the rows asked for
        batch = inputs["input_ids"].shape[0] if inputs["input_ids"].shape else 1
        # None when forward_batch can run several rows, else why not (a graph exported with batch fixed at 1)
        self.batch_refusal = None if isinstance(batch, str) or batch is None else (
            f"this bundle's ONNX graph has its batch fixed at {batch} (exported before edgekit had a batch "
            "axis): rebuild it to decode requests together")
        # the last batched step's rows, kept so the same caches' next step reuses its work:
        # copying graphs ([(cache, first past view, length)], attention mask, presents);
        # in-place graphs ([(cache, first past view)], the IOBinding of the rows' buffers)
        self._batch_copied = None
        self._batch_bound = None

    def new_cache(self) -> KVCache:
        if self.inplace:
            shape = (1, self.kv_heads, self.max_sequence_length, self.head_dim)
            return KVCache(past=[np.zeros(shape, dtype=np.float32) for _ in self.past_names])
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
        if self.inplace:  # the slots after `length` are overwritten by the next step
            cache.length = length
            return
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
        if self.inplace:
            return self._forward_inplace(token_ids, cache, last_only)
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

    def forward_batch(self, token_ids: list[int], caches: list[KVCache]) -> np.ndarray:
        """One decode step of several requests: token_ids[i] after caches[i] (any lengths); returns
        logits [len(caches), vocab] and updates every cache (each keeps only its own tokens: views of
        the batched presents). The same caches in the same order as the last step (nothing else ran
        on them) reuse that step's presents and mask as they are: no copy, no re-padding."""
        if self.batch_refusal is not None:
            raise ValueError(self.batch_refusal)
        if len(token_ids) != len(caches) or not caches:
            raise ValueError("forward_batch needs one token per cache")
        lengths = [c.length for c in caches]
        if max(lengths) + 1 > self.max_sequence_length:
            raise ValueError(f"sequence of {max(lengths) + 1} tokens exceeds the model's {self.max_sequence_length}")
        if self.inplace:
            return self._forward_batch_inplace(token_ids, caches)
        kept = self._kept_batch(caches)
        feeds = batch_feeds(token_ids, lengths, None if kept is None else kept[0])
        if self.selects:
            feeds["logits_rows"] = np.zeros(1, dtype=np.int64)
        feeds.update(zip(self.past_names, self._padded(caches) if kept is None else kept[1]))
        outputs = self.session.run(self.output_names, feeds)
        total = feeds["attention_mask"].shape[1]
        for i, c in enumerate(caches):  # each row's tokens end at the right edge; the pads left out
            c.length += 1
            c.past = [o[i:i + 1, :, total - c.length:] for o in outputs[1:]]
        self._batch_copied = ([(c, c.past[0], c.length) for c in caches], feeds["attention_mask"], outputs[1:])
        return outputs[0][:, -1]

    def _forward_inplace(self, token_ids: list[int], cache: KVCache, last_only: bool) -> np.ndarray:
        n = len(token_ids)
        onnx_inplace.ensure_full(cache, (self.kv_heads, self.head_dim), self.max_sequence_length)
        feeds = onnx_inplace.step_feeds([token_ids], [cache.length])
        if self.selects:
            feeds["logits_rows"] = np.arange(n - 1 if last_only else 0, n, dtype=np.int64)
        if cache.bound is None or cache.bound[0] is not cache.past[0]:
            cache.bound = (cache.past[0], onnx_inplace.bind_buffers(self.session, self.output_names, self.past_names,
                                                                   cache.past))
        logits = onnx_inplace.run_bound(self.session, cache.bound[1], self.output_names[0], feeds)
        cache.length += n
        return logits[0][-1:] if last_only else logits[0]

    def _forward_batch_inplace(self, token_ids: list[int], caches: list[KVCache]) -> np.ndarray:
        """Rows of one [B, ...] buffer per layer; each cache's past is a view of its row, so the same
        caches in the same order (whatever ran on each alone since) reuse the buffers as they are."""
        last = self._batch_bound
        if last is None or len(last[0]) != len(caches) or any(
                c is not ref or not c.past or c.past[0] is not view for c, (ref, view) in zip(caches, last[0])):
            buffers = onnx_inplace.full_buffers(caches, (self.kv_heads, self.head_dim), self.max_sequence_length)
            for i, c in enumerate(caches):
                c.past = [b[i:i + 1] for b in buffers]
            binding = onnx_inplace.bind_buffers(self.session, self.output_names, self.past_names, buffers)
            self._batch_bound = ([(c, c.past[0]) for c in caches], binding)
        binding = self._batch_bound[1]
        feeds = onnx_inplace.step_feeds([[t] for t in token_ids], [c.length for c in caches])
        if self.selects:
            feeds["logits_rows"] = np.zeros(1, dtype=np.int64)
        logits = onnx_inplace.run_bound(self.session, binding, self.output_names[0], feeds)
        for c in caches:
            c.length += 1
        return logits[:, -1]

    def _padded(self, caches: list[KVCache]) -> list[np.ndarray]:
        """Each layer's past of `caches` stacked, left-padded with zeros to the longest."""
        width, out = max(c.length for c in caches), []
        for j in range(len(self.past_names)):
            past = np.zeros((len(caches), self.kv_heads, width, self.head_dim), dtype=np.float32)
            for i, c in enumerate(caches):
                past[i, :, width - c.length:] = c.past[j][0, :, :c.length]
            out.append(past)
        return out

    def _kept_batch(self, caches: list[KVCache]):
        """(mask, presents) of the last batched step when `caches` are its rows, unchanged since."""
        last = self._batch_copied
        if last is None or len(last[0]) != len(caches):
            return None
        for c, (ref, view, n) in zip(caches, last[0]):
            if c is not ref or c.length != n or not c.past or c.past[0] is not view:
                return None
        return last[1], last[2]


def batch_feeds(token_ids: list[int], lengths: list[int], past_mask: np.ndarray | None = None) -> dict:
    """input_ids, attention_mask and position_ids (each row's own length) of one batched decode step
    over caches of `lengths` tokens: the mask is `past_mask` (the last step's, pads kept) or 0 on each
    row's left pads, and 1 for the new token."""
    if past_mask is None:
        width = max(lengths)
        past_mask = np.zeros((len(lengths), width), dtype=np.int64)
        for i, n in enumerate(lengths):
            past_mask[i, width - n:] = 1
    mask = np.concatenate([past_mask, np.ones((len(lengths), 1), dtype=np.int64)], axis=1)
    return {"input_ids": np.asarray(token_ids, dtype=np.int64)[:, None], "attention_mask": mask,
            "position_ids": np.asarray(lengths, dtype=np.int64)[:, None]}


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


def open_onnx(model_path, manifest: dict, threads: int = 0, session=None, *,
              allow_cpu_fallback: bool = True) -> OnnxCausalLM:
    """An OnnxCausalLM for the bundle's model file; `session` overrides the real one (tests).
    `allow_cpu_fallback`: the runners' common keyword (edgekit.device.runtime.RUNNERS); ONNX Runtime
    runs on the CPU only, so there is no fallback to allow or refuse."""
    if session is None:  # a model paired with a draft (manifest "draft"): sessions take turns, no spinning
        session = ort_session(model_path, threads, spin=not manifest.get("paired", False))
    lm = OnnxCausalLM(session, manifest["model"]["max_sequence_length"])
    lm.accelerator = "cpu (onnxruntime)"
    return lm
