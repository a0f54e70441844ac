"""Steps of an ONNX decoder whose attention is GroupQueryAttention: the KV cache updated in place.

Graph form (edgekit/workshop/onnx_gqa.py; detected by its `seqlens_k` input): each layer's
past_key_i / past_value_i is a buffer [B, kv_heads, capacity, head_dim] holding row b's tokens at
0..length-1; the graph writes the new tokens' keys/values after them. Each buffer is bound
(onnxruntime IOBinding) as both the past input and the present output, so onnxruntime writes
into it (past_present_share_buffer) instead of allocating and copying a growing present.

A live cache holds buffers of the model's full capacity (max_sequence_length; np.zeros, so pages
are only touched as tokens fill them). A compact cache (cache_copy, for the prefix cache) is
copied into full buffers once, on its first step. Rewinding only moves `length`: slots after it
are overwritten by the next step. Batched decode keeps one [B, ...] buffer per layer whose rows
are the requests' caches (views), built once per batch composition.
May import: stdlib, numpy, onnxruntime (through the session).
"""

from __future__ import annotations

import numpy as np


def full_buffers(caches: list, kv_shape: tuple[int, int], capacity: int) -> list[np.ndarray]:
    """One [len(caches), kv_heads, capacity, head_dim] buffer per layer holding every cache's tokens."""
    heads, dim = kv_shape
    layers = len(caches[0].past)
    out = [np.zeros((len(caches), heads, capacity, dim), dtype=np.float32) for _ in range(layers)]
    for i, c in enumerate(caches):
        for j in range(layers):
            out[j][i, :, :c.length] = c.past[j][0, :, :c.length]
    return out


def ensure_full(cache, kv_shape: tuple[int, int], capacity: int) -> None:
    """Give `cache` writable buffers of the full capacity (a compact or read-only one is copied once)."""
    first = cache.past[0]
    if first.shape[2] >= capacity and first.flags.c_contiguous and first.flags.writeable:
        return
    bufs = full_buffers([cache], kv_shape, capacity)
    cache.past = bufs


def bind_buffers(session, output_names: list[str], past_names: list[str], buffers: list[np.ndarray]):
    """An IOBinding with each of `buffers` bound as past_names[j] and as the matching present (the
    same OrtValue, so onnxruntime writes the new tokens into it), and the logits to the CPU. Kept
    with the cache: later steps only rebind the small inputs."""
    import onnxruntime as ort  # already imported (telemetry off) by whoever made `session`

    binding = session.io_binding()
    binding.bind_output(output_names[0], "cpu")  # first: get_outputs() follows the binding order
    for past, present, buf in zip(past_names, output_names[1:], buffers):
        value = ort.OrtValue.ortvalue_from_numpy(buf)  # wraps buf's memory, no copy
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)
    return binding


def run_bound(session, binding, logits_name: str, feeds: dict) -> np.ndarray:
    """One step on `binding` (bind_buffers) with `feeds` as the other inputs; returns the logits."""
    binding.bind_output(logits_name, "cpu")  # unallocated again: its shape changes between steps
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    session.run_with_iobinding(binding)
    return binding.get_outputs()[0].numpy()


def step_feeds(token_rows: list[list[int]], lengths: list[int]) -> dict:
    """input_ids, position_ids, seqlens_k and total_sequence_length of rows of equal new-token counts
    after caches of `lengths` tokens (right-padded: no mask)."""
    n = len(token_rows[0])
    totals = [length + n for length in lengths]
    return {
        "input_ids": np.asarray(token_rows, dtype=np.int64),
        "position_ids": np.asarray([np.arange(length, length + n) for length in lengths], dtype=np.int64),
        "seqlens_k": np.asarray([t - 1 for t in totals], dtype=np.int32),
        "total_sequence_length": np.asarray(max(totals), dtype=np.int32),
    }
