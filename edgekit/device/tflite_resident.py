"""Zero-copy signature calls for TfliteCausalLM on a real LiteRT interpreter.

LiteRT's SignatureRunner copies every input in (SetTensor) and every output out (GetTensor) on
each call, after a resize + allocate check. For a decoder with a static KV cache that is the
whole cache twice per generated token (6 MB per token for the 15-layer SmolLM2 student, about a
fifth of its decode time). Here the cache stays in a signature's own input tensors between calls:
small inputs are written into the interpreter's buffers through numpy views, and after each call
only the cache rows the call wrote (its real tokens, positions start ..) are copied from the
output tensors back into the input tensors. Caches of other requests are swapped in and out in
full, and moving from the prefill to the decode signature copies the filled rows once. Slots past
a cache's length may hold another request's rows (finite values, always masked); they start as
zeros.

Used only when every cache tensor is float32 without quantization (int8-I/O graphs keep the
copying path) and the interpreter exposes its wrapper (ai-edge-litert / tflite_runtime).
Shapes are static: tensors are allocated once. May import: stdlib, numpy.
"""

from __future__ import annotations

import numpy as np


def order_names(names):
    return sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))


def split_inputs(ins: dict, outs: dict) -> tuple[list[str], list[str]]:
    """(small input names, cache input names) in positional order: 5 small inputs, one cache input
    per cache output, then any extra small ones (a selecting prefill's `sel`)."""
    names, n_kv = order_names(ins), len(outs) - 1
    return names[:5] + names[5 + n_kv:], names[5:5 + n_kv]


class ResidentSig:
    """One signature of a real interpreter, driven through views of its own tensors."""

    def __init__(self, interpreter, name: str):
        runner = interpreter.get_signature_runner(name)
        self.wrapper = runner._interpreter_wrapper
        self.subgraph = runner._subgraph_index
        ins, outs = runner.get_input_details(), runner.get_output_details()
        small, caches = split_inputs(ins, outs)
        self.small_in = [ins[n]["index"] for n in small]
        self.cache_in = [ins[n]["index"] for n in caches]
        self.out_index = [outs[n]["index"] for n in order_names(outs)]
        self.length = int(ins[order_names(ins)[1]]["shape"][0])  # tokens per call (input_pos [T])
        self.wrapper.AllocateTensors(self.subgraph)
        # Fresh tensor memory is uninitialised (it can hold NaN): masked cache slots are multiplied
        # by zero attention weights, and NaN * 0 is NaN. Zero every cache input once; from then on
        # slots only ever hold values the model wrote.
        for index in self.cache_in:
            self.view(index)[...] = 0.0

    def view(self, index: int) -> np.ndarray:
        """A numpy view of a tensor buffer (fetched per use: valid until the next allocation)."""
        return self.wrapper.tensor(self.wrapper, index, self.subgraph)

    def cache_views(self, which: list[int]) -> list[np.ndarray]:
        return [self.view(i) for i in which]


def supported(interpreter, signatures=("prefill", "decode")) -> bool:
    """Whether `interpreter` is a real LiteRT interpreter whose cache tensors are plain float32."""
    try:
        for name in signatures:
            runner = interpreter.get_signature_runner(name)
            if not hasattr(runner, "_interpreter_wrapper") or not hasattr(runner, "_subgraph_index"):
                return False
            if not hasattr(runner._interpreter_wrapper, "tensor"):
                return False
            ins, outs = runner.get_input_details(), runner.get_output_details()
            cache_tensors = [ins[n] for n in split_inputs(ins, outs)[1]] + [outs[n] for n in order_names(outs)[1:]]
            for d in cache_tensors:
                q = d.get("quantization_parameters") or {}
                if d["dtype"] != np.float32 or len(q.get("scales", [])):
                    return False
        return True
    except Exception:  # private internals of another shape: the public path
        return False


class ResidentCaches:
    """Keeps one StaticCache's contents inside the interpreter; others live in their own arrays."""

    def __init__(self, interpreter, names: dict):
        """`names`: {key: signature name}. A signature's tensors are allocated on its first use, so
        a runner that only scores (decode steps) never holds the prefill's arena."""
        self.interpreter = interpreter
        self.names = names
        self.sigs: dict = {}
        self.owner = None  # the StaticCache whose rows are in the interpreter
        self.where: ResidentSig | None = None  # the signature whose input tensors hold them

    def sig(self, key) -> ResidentSig:
        if key not in self.sigs:
            self.sigs[key] = ResidentSig(self.interpreter, self.names[key])
        return self.sigs[key]

    def _cache_inputs(self, sig: ResidentSig) -> list[np.ndarray]:
        return sig.cache_views(sig.cache_in)

    def bind(self, cache, sig: ResidentSig, start: int) -> None:
        """Make the interpreter hold `cache`'s first `start` rows in `sig`'s cache inputs."""
        if self.owner is not cache:
            if self.owner is not None and self.where is not None:  # park the previous request's cache
                self.owner.arrays = [v.copy() for v in self._cache_inputs(self.where)]
                self.owner.resident = False
            if start > 0:
                for dst, src in zip(self._cache_inputs(sig), cache.arrays):
                    dst[:, :, :start] = src[:, :, :start]
            self.owner, self.where = cache, sig
            cache.resident = True
        elif self.where is not sig:
            for dst, src in zip(self._cache_inputs(sig), self._cache_inputs(self.where)):
                dst[:, :, :start] = src[:, :, :start]
            self.where = sig

    def step(self, sig: ResidentSig, small: list[np.ndarray], cache, start: int, real: int) -> np.ndarray:
        """Run `sig` on the small inputs (embeds, pos, cos, sin, mask, then any extra ones) and the
        bound cache; returns a copy of the logits output; copies back only the `real` rows this call
        wrote (padding rows are left out: later tokens overwrite those slots anyway)."""
        self.bind(cache, sig, start)
        for index, value in zip(sig.small_in, small):
            sig.view(index)[...] = value
        sig.wrapper.Invoke(sig.subgraph)
        logits = sig.view(sig.out_index[0]).copy()
        for i_in, i_out in zip(sig.cache_in, sig.out_index[1:]):
            sig.view(i_in)[:, :, start:start + real] = sig.view(i_out)[:, :, start:start + real]
        return logits

    def export(self, cache) -> list[np.ndarray]:
        """The cache's arrays (copied out of the interpreter when it is the resident one)."""
        if self.owner is cache and self.where is not None:
            return [v.copy() for v in self._cache_inputs(self.where)]
        return cache.arrays
