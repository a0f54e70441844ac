"""A static-KV-cache causal LM running on LiteRT (ai-edge-litert; tflite_runtime as a fallback).

The .tflite (see edgekit/workshop/tflite_export.py) has signatures `prefill` (P tokens) and `decode`
(1 token); positional inputs are named args_0.. and outputs output_0..:
  embeds [1,T,hidden], input_pos [T] int32, cos, sin [T,head_dim], mask [1,1,T,C],
  then k_i, v_i [1,kv_heads,C,head_dim]; outputs logits [1,T,vocab], then the updated k_i, v_i.
In current bundles `prefill` also takes a one-hot `sel` [1,1,P] (its last input) and returns the
logits of that position only ([1,1,vocab]): generation needs no more, and the LM head is a third of
a small LM's weights. Logits for every position of a multi-token input (scoring, verification)
then come from `decode` steps. Bundles whose `prefill` returns every row still load and use it.
Embedding rows and rotary tables come from the bundle's host tables (npz: `embed` float32/float16
or int8 with per-row `embed_scale`, `cos`, `sin`); an int8 bundle of a tied model keeps no `embed`
there and reads the rows from the LM head's int8 weights in the model file (edgekit.device.tflite_tied).
Quantized (int8) inputs/outputs are (de)quantized here with each tensor's own scale/zero point,
so the cache is kept in float32 between calls. A prompt runs in chunks of P through `prefill`;
a last partial chunk is padded (its padding writes cache slots that later tokens overwrite before
any query can see them) or, near the end of the cache, run token by token through `decode`.

The interpreter is injected (anything with get_signature_runner()), so tests can pass a fake.
May import: stdlib, numpy, ai_edge_litert / tflite_runtime (lazily).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from edgekit.core.bundle import sibling_file
from edgekit.device import delegation, tflite_compiled, tflite_resident

log = logging.getLogger("edgekit.device")
_ZERO_COPY_WARNED: list[str] = []  # the zero-copy self-check's failure, warned about once per process


@dataclass(eq=False)
class StaticCache:
    """Per-request cache: float32 arrays [1, kv_heads, C, head_dim] per layer and kind. With the
    zero-copy path (tflite_resident) the arrays of the cache in use live inside the interpreter
    (`resident`); they are copied out only when another cache takes its place."""

    arrays: list[np.ndarray] = field(default_factory=list)
    length: int = 0
    resident: bool = False


def _order(names):
    return sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))


class SignatureCall:
    """One signature runner called with positional float arrays: inputs/outputs in name order,
    quantized on the way in and dequantized on the way out; `length` is the tokens per call (input
    `length_input`'s size along `length_axis`)."""

    def __init__(self, runner, length_input: int = 1, length_axis: int = 0):
        self.runner = runner
        ins, outs = runner.get_input_details(), runner.get_output_details()
        self.in_names = _order(ins)
        self.out_names = _order(outs)
        self.ins = [ins[n] for n in self.in_names]
        self.outs = [outs[n] for n in self.out_names]
        self.length = int(self.ins[length_input]["shape"][length_axis])  # tokens per call

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {n: _to_input(a, d) for n, a, d in zip(self.in_names, arrays, self.ins)}
        result = self.runner(**feeds)
        return [_from_output(result[n], d) for n, d in zip(self.out_names, self.outs)]


def _qparams(detail):
    q = detail.get("quantization_parameters") or {}
    scales = q.get("scales")
    if scales is not None and len(scales):
        return float(scales[0]), int(q["zero_points"][0])
    scale, zp = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zp)) if scale else None


def _to_input(a: np.ndarray, d) -> np.ndarray:
    dtype = d["dtype"]
    if np.issubdtype(dtype, np.floating) or a.dtype == dtype:
        return np.ascontiguousarray(a, dtype=dtype)
    qp = _qparams(d)
    if qp is None:
        return np.ascontiguousarray(a, dtype=dtype)
    scale, zp = qp
    info = np.iinfo(dtype)
    return np.clip(np.round(a / scale) + zp, info.min, info.max).astype(dtype)


def _from_output(a: np.ndarray, d) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    qp = _qparams(d)
    if qp is None:
        return a
    scale, zp = qp
    return (a.astype(np.float32) - zp) * scale


class RecordingRunner:
    """Wraps a signature runner and keeps a copy of every feed in `sink` (calibration samples)."""

    def __init__(self, runner, sink: list):
        self.runner, self.sink = runner, sink

    def get_input_details(self):
        return self.runner.get_input_details()

    def get_output_details(self):
        return self.runner.get_output_details()

    def __call__(self, **feeds):
        self.sink.append({k: v.copy() for k, v in feeds.items()})
        return self.runner(**feeds)


class TfliteCausalLM:
    """prefill/decode steps of an exported decoder; same forward() contract as OnnxCausalLM."""

    def __init__(self, interpreter, signature: dict, host_tables: dict, zero_copy: bool | None = None):
        """`zero_copy`: keep the KV cache inside the interpreter (tflite_resident); None = when the
        interpreter is a real LiteRT one with float32 cache tensors, False = always copy."""
        self.interpreter = interpreter
        self.prefill = SignatureCall(interpreter.get_signature_runner("prefill"))
        self.decode = SignatureCall(interpreter.get_signature_runner("decode"))
        self.cache_length = int(signature["cache_length"])
        self.max_sequence_length = self.cache_length
        self.mask_value = float(signature["mask_value"])
        self.embed = np.asarray(host_tables["embed"])
        scale = host_tables.get("embed_scale")
        self.embed_scale = None if scale is None else np.asarray(scale, np.float32)
        self.cos = np.asarray(host_tables["cos"], np.float32)
        self.sin = np.asarray(host_tables["sin"], np.float32)
        self.cache_shape = tuple(int(s) for s in self.decode.ins[5]["shape"])
        self.n_kv = len(self.decode.ins) - 5
        self.selects = len(self.prefill.ins) > 5 + self.n_kv  # prefill picks one row (`sel` input)
        # A full-int8 graph's cache goes out with the output's scale and back in with the input's: a
        # restored prefix would not equal the rows one prefill computes in-graph (greedy text changed).
        self.prefix_reuse_exact = bool(np.issubdtype(self.decode.ins[5]["dtype"], np.floating))
        self._resident = None
        if zero_copy is None:  # escape hatch: EDGEKIT_TFLITE_ZERO_COPY=0 forces the copying path
            zero_copy = os.environ.get("EDGEKIT_TFLITE_ZERO_COPY", "1") != "0"
        self.zero_copy = "off"
        names = {self.prefill: "prefill", self.decode: "decode"}
        if zero_copy and isinstance(interpreter, tflite_compiled.CompiledInterpreter):  # cache buffers take turns
            self._resident = tflite_compiled.CompiledCaches(interpreter, names)
            self._check_resident()
        elif zero_copy and tflite_resident.supported(interpreter):
            self._resident = tflite_resident.ResidentCaches(interpreter, names)
            self._check_resident()

    def _check_resident(self) -> None:
        """One decode step through the zero-copy path and through the public SignatureRunner on an empty
        cache: on any difference or error, use the public path from now on (logged once per process).
        The zero-copy path calls private interpreter internals that a LiteRT release may change."""
        resident = self._resident
        token = [min(1, len(self.embed) - 1)]
        try:  # zero-copy first: the public call would leave these very inputs in the tensors. Two steps,
            # so the second reads the cache rows the first wrote (a cache that does not carry shows)
            cache = StaticCache([], 0)
            got = [self._step(self.decode, token, i, cache) for i in range(2)][-1]
            resident.owner = resident.where = None  # the check's cache rows are left as masked slots
            self._resident = None
            cache = StaticCache([np.zeros(self.cache_shape, np.float32) for _ in range(self.n_kv)], 0)
            want = [self._step(self.decode, token, i, cache) for i in range(2)][-1]
            same = got.shape == want.shape and bool(np.all(np.isfinite(got))) and np.allclose(got, want, 1e-5, 1e-5)
            reason = None if same else f"logits differ (max |difference| {float(np.max(np.abs(got - want))):.3g})"
        except Exception as exc:  # whatever the private internals raise: the public path still works
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            self._resident, self.zero_copy = resident, "on"
            return
        self._resident, self.zero_copy = None, f"off (self-check failed: {reason})"
        if not _ZERO_COPY_WARNED:
            _ZERO_COPY_WARNED.append(reason)
            log.warning("LiteRT zero-copy KV cache disabled: its load-time self-check against the public "
                        "SignatureRunner failed (%s); using the public path", reason)

    def embed_rows(self, ids: np.ndarray) -> np.ndarray:
        rows = self.embed[ids].astype(np.float32)
        if self.embed_scale is not None:
            rows *= self.embed_scale[ids][..., None]
        return rows

    def new_cache(self) -> StaticCache:
        if self._resident is not None:  # slots past `length` are masked and hold finite values (zeroed once)
            return StaticCache([], 0)
        return StaticCache([np.zeros(self.cache_shape, np.float32) for _ in range(self.n_kv)], 0)

    def cache_arrays(self, cache: StaticCache) -> list[np.ndarray]:
        """The cache's arrays, wherever they live (tests and tools; not needed to generate)."""
        return self._resident.export(cache) if self._resident is not None else cache.arrays

    def cache_copy(self, cache: StaticCache, n_tokens: int) -> StaticCache:
        """An independent cache holding the first `n_tokens` of `cache` (edgekit.device.prefix_cache),
        copied out of the interpreter when resident. Its arrays are compact ([1, kv, n_tokens, hd]):
        forward() widens them to the cache's capacity when it runs them."""
        if not 0 <= n_tokens <= cache.length:
            raise ValueError(f"cannot copy {n_tokens} tokens of a cache holding {cache.length}")
        return StaticCache([np.array(a[:, :, :n_tokens]) for a in self.cache_arrays(cache)], n_tokens)

    def cache_nbytes(self, cache: StaticCache) -> int:
        return sum(a.nbytes for a in cache.arrays)

    def _widen(self, cache: StaticCache) -> None:
        """Give a compact cache (cache_copy) arrays of the full capacity, for the copying path."""
        if self._resident is None and cache.arrays and cache.arrays[0].shape[2] < self.cache_length:
            full = []
            for a in cache.arrays:
                w = np.zeros(self.cache_shape, np.float32)
                w[:, :, :a.shape[2]] = a
                full.append(w)
            cache.arrays = full

    def _step(self, sig: SignatureCall, tokens: list[int], start: int, cache: StaticCache) -> np.ndarray:
        """Logits [len(tokens), vocab]; from a selecting prefill, [1, vocab] of the last of `tokens`."""
        t, real = sig.length, len(tokens)
        pos = np.arange(start, start + t, dtype=np.int32)
        mask = np.where(np.arange(self.cache_length)[None, :] <= pos[:, None], 0.0, self.mask_value)
        mask = mask.astype(np.float32)[None, None]
        ids = np.zeros((1, t), np.int32)
        ids[0, :real] = tokens
        small = [self.embed_rows(ids), pos, self.cos[pos], self.sin[pos], mask]
        rows = real
        extra = []
        if sig is self.prefill and self.selects:
            sel = np.zeros((1, 1, t), np.float32)
            sel[0, 0, real - 1] = 1.0
            extra, rows = [sel], 1
        if self._resident is not None:
            rsig = self._resident.sig(sig)
            logits = self._resident.step(rsig, small + extra, cache, start, real)
            return _from_output(logits, sig.outs[0])[0, :rows]
        out = sig(small + cache.arrays + extra)
        cache.arrays = out[1:]
        return out[0][0, :rows]

    def forward(self, token_ids: list[int], cache: StaticCache, last_only: bool = False) -> np.ndarray:
        """Run `token_ids` after the cached tokens; returns logits [len(token_ids), vocab], or with
        `last_only` [1, vocab] for the last token (what a prompt needs; the cheap path); updates cache."""
        n = len(token_ids)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if cache.length + n > self.cache_length:
            raise ValueError(f"sequence of {cache.length + n} tokens exceeds the model's {self.cache_length}")
        self._widen(cache)
        p = self.prefill.length
        every_row = not last_only and self.selects  # a selecting prefill gives one row per call
        chunks, i = [], 0
        while i < n:
            rest = n - i
            start = cache.length + i
            if rest == 1 or every_row:
                chunks.append(self._step(self.decode, token_ids[i:i + 1], start, cache))
                i += 1
            elif start + p <= self.cache_length:
                take = min(p, rest)
                chunks.append(self._step(self.prefill, token_ids[i:i + take], start, cache))
                i += take
            else:  # a padded chunk would run past the cache: finish token by token
                chunks.append(self._step(self.decode, token_ids[i:i + 1], start, cache))
                i += 1
        cache.length += n
        return chunks[-1][-1:] if last_only else np.concatenate(chunks, axis=0)


def make_interpreter(model_path, threads: int = 0, delegate: str = "none", delegate_library: str = "",
                     delegate_options: dict | None = None, accelerated_path=None, lite=None):
    """A LiteRT interpreter; returns (interpreter, Delegation: what the delegate really took).

    XNNPACK is LiteRT's default CPU path. A named delegate library (GPU, Edge TPU) is loaded when it
    can be, with `delegate_options` (Edge TPU: {"device": "usb:0"}); the interpreter then opens
    `accelerated_path` if given (a model compiled for that accelerator) else `model_path`, and the
    nodes the delegate took are counted (edgekit.device.delegation). When the library cannot be
    loaded the model opens from `model_path` on the CPU and the Delegation says why (whether that
    is allowed is the caller's call: runtime.open_model). `lite` injects the
    interpreter module (tests); default ai_edge_litert.interpreter, or tflite_runtime's.
    """
    real, lite = lite is None, lite or _lite()
    kwargs = {"model_path": str(model_path)}
    if threads > 0:
        kwargs["num_threads"] = threads
    if delegate in delegation.CPU_DELEGATES:
        return lite.Interpreter(**kwargs), delegation.no_delegate(delegate)
    if not delegate_library:
        return lite.Interpreter(**kwargs), delegation.not_loaded(delegate, "", "no delegate library configured")
    try:
        if real:
            import ctypes

            # probe first: a failed load_delegate leaves a noisy __del__ (ai-edge-litert 2.3, seen under emulation)
            if not hasattr(ctypes.CDLL(delegate_library), "tflite_plugin_create_delegate"):
                raise ValueError("no tflite_plugin_create_delegate symbol: not a LiteRT delegate library")
        dlg = lite.load_delegate(delegate_library, delegate_options or {})
    except (ValueError, OSError, RuntimeError, AttributeError) as e:  # AttributeError: no tflite_plugin_* symbol
        why = f"library '{delegate_library}' could not be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        if delegate == "edgetpu" and isinstance(e, ValueError) and not str(e):  # libedgetpu returns NULL, says nothing
            why = f"'{delegate_library}' loaded but opened no Edge TPU (none attached, or no permission to open it)"
        return lite.Interpreter(**kwargs), delegation.not_loaded(delegate, delegate_library, why)
    if accelerated_path is not None:
        kwargs["model_path"] = str(accelerated_path)
    interpreter = lite.Interpreter(experimental_delegates=[dlg], **kwargs)
    custom = _edgetpu_ops(kwargs["model_path"]) if delegate == "edgetpu" else None
    return interpreter, delegation.measured(interpreter, delegate, delegate_library, custom)


def _lite():
    try:
        from ai_edge_litert import interpreter as lite
    except ImportError:  # older devices: the deprecated tflite_runtime wheel has the same API
        from tflite_runtime import interpreter as lite  # type: ignore[no-redef]
    return lite


def _edgetpu_ops(path) -> int | None:
    """edgetpu-custom-op nodes in the model file, or None when the flatbuffer cannot be read here."""
    try:
        from edgekit.device.tflite_inspect import op_counts

        return op_counts(Path(path)).get("CUSTOM:" + delegation.EDGETPU_OP, 0)
    except Exception:  # no schema module (tflite_runtime) or an unreadable file: the count is unknown
        return None


def load_host_tables(model_path, signature: dict) -> dict:
    """The host-side lookup tables (token embeddings, rotary or position rows, scales) that the
    signature's `host_file` holds beside the model file, as arrays by name."""
    with np.load(str(sibling_file(Path(model_path).parent, signature["host_file"]))) as z:
        tables = {k: z[k] for k in z.files}
    shared = signature.get("embed_from_model")
    if shared and "embed" not in tables:  # tied weights stored once: rows from the LM head's int8 tensor
        from edgekit.device.tflite_tied import shared_embedding

        tables["embed"], tables["embed_scale"] = shared_embedding(model_path, shared)
    return tables


def _open_session(model_path, manifest: dict, threads: int, allow_cpu_fallback: bool = True):
    """(session, Delegation, how it runs). Float graphs on the CPU get a CompiledModel with its packed
    weights cached (tflite_compiled): those of the CPU targets, and those of a GPU target whose
    delegate did not load or took nothing (the Delegation still says so: serve's CPU-fallback rule
    holds; when the caller will refuse that fallback, `allow_cpu_fallback` False, none is built).
    The Edge TPU and every other case keep the Interpreter."""
    model = manifest["model"]
    delegate = model.get("delegate", "none")
    api = f"Interpreter (delegate {delegate})"
    if delegate in delegation.CPU_DELEGATES:
        session, api = tflite_compiled.open_session(model_path, manifest, threads)
        if session is not None:
            return session, delegation.no_delegate(delegate), api
    compiled = Path(model_path).stem + "_edgetpu.tflite"
    has_compiled = compiled in (model.get("accelerated_files") or [])
    interpreter, found = make_interpreter(model_path, threads, delegate, model.get("delegate_library", ""),
                                          model.get("delegate_options"),
                                          sibling_file(Path(model_path).parent, compiled) if has_compiled else None)
    if delegate == "gpu" and found.useless and allow_cpu_fallback:
        on_cpu = dict(manifest, model=dict(model, delegate="none"))
        session, api = tflite_compiled.open_session(model_path, on_cpu, threads)
        if session is not None:
            return session, found, api
    return interpreter, found, api


def open_tflite(model_path, manifest: dict, threads: int = 0, session=None, *,
                allow_cpu_fallback: bool = True) -> TfliteCausalLM:
    """A TfliteCausalLM for a bundle's model; `session` injects an interpreter (tests). `allow_cpu_fallback`
    False: the caller will refuse a useless GPU delegate, so no CPU CompiledModel is built for it."""
    found = getattr(session, "delegation", None)  # an injected interpreter may carry its facts (tests)
    api = "injected"
    sig = manifest["signature"]
    # LiteRT logs on stderr at the load and at the first buffer write (the self-check's): chatter dropped
    with tflite_compiled.quiet_litert() if session is None else contextlib.nullcontext():
        if session is None:
            session, found, api = _open_session(model_path, manifest, threads, allow_cpu_fallback)
        lm = TfliteCausalLM(session, sig, load_host_tables(model_path, sig))
    lm.delegation = found
    lm.litert_api = api  # CompiledModel, or the Interpreter and why
    lm.accelerator = found.accelerator if found is not None else "injected"
    return lm
