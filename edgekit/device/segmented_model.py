"""Run an Edge TPU segmented decoder (see edgekit/workshop/coral_segments.py): TPU segments for the
projections, MLPs and LM head (or the LM head as an int8 matmul here: HostHead); RMSNorm, residual stream, rotary embedding, KV cache and attention
here in numpy (float32), in the op order of the bundle's LlamaSpec (edgekit/core/llama_spec.py;
bundles that predate the stored spec get the one their signature's flat keys describe).

Decoder: one token per step (the segments have [1, n] inputs: FullyConnected maps to the Edge TPU
only with a one-dimensional output), so a prompt of n tokens costs n steps. Encoder (SegmentedEncoder):
sentence-form segments take `rows` tokens per call ([1, rows, 1, n], 1x1 CONV_2D); bundles built before
them take one token per call and still run. Same forward() contract as the
other runners: forward(token_ids, cache, last_only=False) -> logits [len(token_ids), vocab].
Interpreters are opened per segment (injectable for tests). May import: stdlib, numpy, edgekit.device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.bundle import sibling_file
from edgekit.core.coral_fit import head_bytes
from edgekit.core.llama_spec import HOST_NORM_TABLES, spec_from_signature
from edgekit.device import delegation
from edgekit.device.tflite_model import RecordingRunner, SignatureCall, load_host_tables, make_interpreter


@dataclass
class SegmentCache:
    keys: list[np.ndarray] = field(default_factory=list)  # per layer [kv_heads, C, head_dim]
    values: list[np.ndarray] = field(default_factory=list)
    length: int = 0


def open_segment_runners(folder: Path, signature: dict, threads: int = 0, record: bool = False,
                         model: dict | None = None) -> list:
    """One callable per segment: takes [x] or [x, a] float arrays, returns float outputs.
    With `record`, each keeps the raw feeds it saw in `.recorded` (calibration)."""
    model = model or {}
    runners = []
    compiled = set(model.get("accelerated_files") or [])
    for seg in signature["segments"]:
        name = seg["file"]
        tpu_name = name.replace(".tflite", "_edgetpu.tflite")
        interp, found = make_interpreter(sibling_file(folder, name), threads, model.get("delegate", "none"),
                                         model.get("delegate_library", ""), model.get("delegate_options"),
                                         sibling_file(folder, tpu_name) if tpu_name in compiled else None)
        raw = interp.get_signature_runner()
        rec = RecordingRunner(raw, []) if record else None
        sig = SignatureCall(rec or raw, length_input=0, length_axis=0)
        sig.recorded = rec.sink if rec else None
        sig.delegation = found
        runners.append(sig)
    return runners


class _LinearSegments:
    """Calls segment k with its input scaled to max |x| = 1, scales the outputs back and adds the
    biases kept on the host (segments are bias-free linear maps, so this is exact in fp32 and uses the
    whole int8 input range for every token)."""

    def __init__(self, runners: list, signature: dict, host_tables: dict):
        self.runners = runners
        self.biases = [[host_tables.get(f"bias:{seg['file']}:{j}") for j in range(seg.get("outputs", 1))]
                       for seg in signature["segments"]]

    def __call__(self, k: int, x: np.ndarray) -> list[np.ndarray]:
        s = float(np.abs(x).max()) or 1.0
        outs = [o * s for o in self.runners[k]([x / s])]
        return [o if b is None else o + b for o, b in zip(outs, self.biases[k])]

    def rows(self, k: int, x: np.ndarray, rows: int) -> list[np.ndarray]:
        """Sentence form: x [n, width] in calls of `rows` tokens ([1, rows, 1, width], zero rows pad the
        last call); each row is scaled to max |x| = 1 on its own (exact for a row-wise linear map)."""
        n, width = x.shape
        s = np.abs(x).max(-1, keepdims=True)
        s[s == 0] = 1.0
        padded = np.zeros((-(-n // rows) * rows, width), np.float32)
        padded[:n] = x / s
        calls = [self.runners[k]([padded[a:a + rows].reshape(1, rows, 1, width)])
                 for a in range(0, padded.shape[0], rows)]
        outs = [np.concatenate([c[j].reshape(rows, -1) for c in calls])[:n] * s for j in range(len(calls[0]))]
        return [o if b is None else o + b for o, b in zip(outs, self.biases[k])]


def _delegation(runners: list):
    """(combined Delegation of the segment runners or None, accelerator text)."""
    parts = [getattr(r, "delegation", None) for r in runners]
    if not parts or any(p is None for p in parts):  # injected runners without facts (tests)
        return None, "cpu"
    found = delegation.combine(parts)
    return found, found.accelerator


class SegmentedCausalLM:
    """The host side of a segmented decoder: runs the per-layer ops of the bundle's LlamaSpec
    (edgekit/core/llama_spec.py), the `linear` ones on the segments, the rest here."""

    HOST_KINDS = ("rmsnorm", "linear", "split_heads", "rope", "attention", "silu_mul", "residual")

    def __init__(self, runners: list, signature: dict, host_tables: dict):
        self.runners = runners
        self._scaled = _LinearSegments(runners, signature, host_tables)
        self.spec = spec = spec_from_signature(signature)
        self.ops = spec.layer_ops
        unknown = [op.kind for op in self.ops if op.kind not in self.HOST_KINDS]
        if unknown:
            raise ValueError(f"the segmented runner has no host rule for op(s) {unknown} ({spec.model_type})")
        self.linear_per_layer = sum(op.kind == "linear" for op in self.ops)
        self.layers, self.heads, self.kv_heads, self.head_dim = spec.layers, spec.heads, spec.kv_heads, spec.head_dim
        self.scaling, self.eps = spec.scaling, spec.rms_norm_eps
        roles = [s["role"] for s in signature["segments"]]
        self.host_head = signature.get("lm_head") == "host"
        if roles != [op.name for op in self.ops if op.kind == "linear"] * self.layers + ([] if self.host_head else ["head"]):
            raise ValueError(f"unexpected segment layout: {roles}")
        self.cache_length = self.max_sequence_length = int(signature["cache_length"])
        self.embed = np.asarray(host_tables["embed"])
        scale = host_tables.get("embed_scale")
        self.embed_scale = None if scale is None else np.asarray(scale, np.float32)
        self.cos = np.asarray(host_tables["cos"], np.float32)
        self.sin = np.asarray(host_tables["sin"], np.float32)
        self.norms = {read: np.asarray(host_tables[table], np.float32) for read, table in HOST_NORM_TABLES.items()}
        self.final_norm = np.asarray(host_tables["final_norm"], np.float32)
        self.delegation, self.accelerator = _delegation(runners)
        self.head = None
        if self.host_head:
            tied = signature.get("lm_head_tied", True)
            self.head = HostHead(self.embed if tied else np.asarray(host_tables["lm_head"]),
                                 self.embed_scale if tied else host_tables.get("lm_head_scale"))

    def new_cache(self) -> SegmentCache:
        shape = (self.kv_heads, self.cache_length, self.head_dim)
        return SegmentCache([np.zeros(shape, np.float32) for _ in range(self.layers)],
                            [np.zeros(shape, np.float32) for _ in range(self.layers)], 0)

    def cache_copy(self, cache: SegmentCache, n_tokens: int) -> SegmentCache:
        """An independent, compact cache of the first `n_tokens` (edgekit.device.prefix_cache);
        forward() widens it to the full capacity."""
        if not 0 <= n_tokens <= cache.length:
            raise ValueError(f"cannot copy {n_tokens} tokens of a cache holding {cache.length}")
        return SegmentCache([np.array(k[:, :n_tokens]) for k in cache.keys],
                            [np.array(v[:, :n_tokens]) for v in cache.values], n_tokens)

    def cache_nbytes(self, cache: SegmentCache) -> int:
        return sum(a.nbytes for a in cache.keys) + sum(a.nbytes for a in cache.values)

    def _widen(self, cache: SegmentCache) -> None:
        if cache.keys and cache.keys[0].shape[1] < self.cache_length:
            full = self.new_cache()
            for dst, src in zip(full.keys + full.values, cache.keys + cache.values):
                dst[:, :src.shape[1]] = src
            cache.keys, cache.values = full.keys, full.values

    def _rope(self, t: np.ndarray, pos: int) -> np.ndarray:
        half = self.head_dim // 2
        rotated = np.concatenate([-t[:, half:], t[:, :half]], axis=-1)
        return t * self.cos[pos] + rotated * self.sin[pos]

    def _attention(self, layer: int, q, k, v, pos: int, cache: SegmentCache) -> np.ndarray:
        """q [heads, d], k, v [kv_heads, d] (rotated) -> [1, heads * d]; caches k and v at `pos`."""
        cache.keys[layer][:, pos] = k
        cache.values[layer][:, pos] = v
        keys = cache.keys[layer][:, : pos + 1]  # [kv, t, d]
        vals = cache.values[layer][:, : pos + 1]
        g = self.spec.groups
        scores = np.einsum("kgd,ktd->kgt", q.reshape(self.kv_heads, g, self.head_dim), keys) * self.scaling
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.einsum("kgt,ktd->kgd", probs, vals).reshape(1, self.heads * self.head_dim)

    def _row(self, token: int) -> np.ndarray:
        row = self.embed[token].astype(np.float32)
        if self.embed_scale is not None:
            row = row * self.embed_scale[token]
        return row[None, :]

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps))

    def _layer(self, layer: int, x: np.ndarray, pos: int, cache: SegmentCache) -> np.ndarray:
        """One decoder layer for the token at `pos`, op by op; returns the residual stream."""
        h, segment = None, layer * self.linear_per_layer
        for op in self.ops:
            if op.kind == "rmsnorm":
                h = self._norm(x, self.norms[op.reads[0]][layer])
            elif op.kind == "linear":
                outs = self._scaled(segment, h)
                h, segment = (tuple(outs) if len(outs) > 1 else outs[0]), segment + 1
            elif op.kind == "split_heads":
                h = (h[0].reshape(self.heads, self.head_dim), h[1].reshape(self.kv_heads, self.head_dim),
                     h[2].reshape(self.kv_heads, self.head_dim))
            elif op.kind == "rope":
                h = (self._rope(h[0], pos), self._rope(h[1], pos), h[2])
            elif op.kind == "attention":
                h = self._attention(layer, *h, pos, cache)
            elif op.kind == "silu_mul":
                h = h[0] / (1.0 + np.exp(-h[0])) * h[1]
            else:  # residual
                x = x + h
        return x

    def _logits(self, h: np.ndarray) -> np.ndarray:
        """[vocab] logits of the normalised [1, hidden] state: the head segment, or the host head."""
        if self.head is not None:
            return self.head(h[0])
        return self._scaled(self.linear_per_layer * self.layers, h)[0][0]

    def forward(self, token_ids: list[int], cache: SegmentCache, last_only: bool = False) -> np.ndarray:
        """Logits [len(token_ids), vocab]; with `last_only` [1, vocab] of the last token, and the LM
        head segment runs for that token only."""
        n = len(token_ids)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if cache.length + n > self.cache_length:
            raise ValueError(f"sequence of {cache.length + n} tokens exceeds the model's {self.cache_length}")
        self._widen(cache)
        out = []
        for i, token in enumerate(token_ids):
            pos = cache.length + i
            x = self._row(token)
            for layer in range(self.layers):
                x = self._layer(layer, x, pos, cache)
            if not last_only or i == n - 1:
                out.append(self._logits(self._norm(x, self.final_norm)))
        cache.length += n
        return np.stack(out)


class HostHead:
    """The LM head as a matmul on the host CPU (recipe `[edgetpu] lm_head = "host"`): int8 rows
    [vocab, hidden] with a float32 scale per row (a float table without scales in fp32 exports).
    logits[r] = scale[r] * (rows[r] . h). Rows are widened to float32 `block_rows` at a time, so no
    float copy of the whole table is kept (SmolLM2: 27 MiB int8 would be 108 MiB as float32)."""

    def __init__(self, rows: np.ndarray, scale: np.ndarray | None, block_rows: int = 4096):
        self.rows = rows
        self.scale = None if scale is None else np.asarray(scale, np.float32)
        self.block_rows = block_rows

    def __call__(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, np.float32)
        if self.rows.dtype == np.float32:
            out = self.rows @ h
        else:
            out = np.concatenate([self.rows[a:a + self.block_rows].astype(np.float32) @ h
                                  for a in range(0, self.rows.shape[0], self.block_rows)])
        return out if self.scale is None else out * self.scale


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and the device layer has no scipy."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * 0.7071067811865476))  # a Python float keeps float32 float32 (np.sqrt would not)


class SegmentedEncoder:
    """BERT-family encoder over TPU segments: embeddings, LayerNorms, GELU, attention and mean
    pooling on the host; embed() returns unit vectors like SentenceEncoder. Sentence-form segments
    (signature segment_form "sentence") take `rows` tokens per call, packed across the batch; older
    bundles' one-token segments take one call per token."""

    def __init__(self, runners: list, signature: dict, host_tables: dict):
        self.run = _LinearSegments(runners, signature, host_tables)
        self.t = {k: np.asarray(v) for k, v in host_tables.items()}
        self.layers, self.heads = int(signature["layers"]), int(signature["heads"])
        self.head_dim = int(signature["head_dim"])
        self.eps = float(signature["layer_norm_eps"])
        self.max_sequence_length = int(signature["max_sequence_length"])
        form = signature.get("segment_form", "token")  # bundles before the sentence form have no key
        if form not in ("token", "sentence"):
            raise ValueError(f"segment form '{form}' is newer than this edgekit (it runs 'token' and 'sentence' "
                             "segments): update edgekit or rebuild the bundle")
        self.rows = int(signature["rows"]) if form == "sentence" else 0
        self.delegation, self.accelerator = _delegation(runners)
        if signature.get("activation", "gelu") != "gelu":
            raise ValueError(f"activation {signature.get('activation')} is not supported by the segmented encoder")

    def _ln(self, x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.t[w] + self.t[b]

    def _linear(self, k: int, x: np.ndarray) -> list[np.ndarray]:
        """Segment k over the rows of x [n, width]: one call per token (one-token form) or per block
        of `rows` tokens (sentence form)."""
        if not self.rows:
            calls = [self.run(k, x[i:i + 1]) for i in range(x.shape[0])]
            return [np.concatenate([c[j] for c in calls]) for j in range(len(calls[0]))]
        return self.run.rows(k, x, self.rows)

    def _attention(self, q, k, v) -> np.ndarray:
        n = q.shape[0]
        split = (n, self.heads, self.head_dim)
        q, k, v = (t.reshape(split).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(self.head_dim)
        scores -= scores.max(-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(-1, keepdims=True)
        return (p @ v).transpose(1, 0, 2).reshape(n, -1)

    def _pooled(self, batch_ids: list[list[int]]) -> list[np.ndarray]:
        """Mean-pooled last hidden states; the tokens of every sentence of the batch share the segment
        calls (linear maps act on each row alone), attention stays within each sentence."""
        ends = np.cumsum([len(ids) for ids in batch_ids])
        spans = list(zip(np.concatenate([[0], ends[:-1]]), ends))
        ids = [t for one in batch_ids for t in one]
        word = self.t["embed"][ids].astype(np.float32)
        if "embed_scale" in self.t:
            word *= self.t["embed_scale"][ids][:, None]
        pos = np.concatenate([self.t["position"][:len(one)] for one in batch_ids])
        x = self._ln(word + pos + self.t["token_type"][0], "embed_ln_w", "embed_ln_b")
        for i in range(self.layers):
            q, k, v = self._linear(4 * i, x)
            ctx = np.concatenate([self._attention(q[a:b], k[a:b], v[a:b]) for a, b in spans])
            x = self._ln(self._linear(4 * i + 1, ctx)[0] + x, f"attn_ln_w:{i}", f"attn_ln_b:{i}")
            h = _gelu(self._linear(4 * i + 2, x)[0])
            x = self._ln(self._linear(4 * i + 3, h)[0] + x, f"out_ln_w:{i}", f"out_ln_b:{i}")
        return [x[a:b].mean(0) for a, b in spans]

    def embed(self, batch_ids: list[list[int]]) -> np.ndarray:
        for ids in batch_ids:
            if len(ids) > self.max_sequence_length:
                raise ValueError(f"input of {len(ids)} tokens exceeds the model's {self.max_sequence_length}")
            if not ids:
                raise ValueError("an input has no tokens")
        return np.stack([v / max(float(np.linalg.norm(v)), 1e-12) for v in self._pooled(batch_ids)])


def host_macs(signature: dict, context: int | None = None) -> int:
    """Multiply-accumulates per token that run on the host (attention scores + weighted sum), at
    `context` cached tokens (default: half the cache, the average over a full-length sequence), plus
    the LM head when it runs on the host (hidden x vocab)."""
    ctx = context if context is not None else int(signature["cache_length"]) // 2
    attention = int(signature["layers"]) * 2 * int(signature["heads"]) * int(signature["head_dim"]) * ctx
    return attention + host_weight_bytes(signature)


def host_weight_bytes(signature: dict) -> int:
    """int8 weight bytes the host reads per token outside the segments: the LM head's when it runs on
    the host (one byte per weight, hidden x vocab), else 0."""
    if signature.get("lm_head") != "host":
        return 0
    return head_bytes(int(signature["hidden_size"]), int(signature["vocab_size"]))


def _open(cls, model_path, manifest: dict, threads: int, session):
    sig = manifest["signature"]
    folder = Path(model_path).parent
    runners = session if session is not None else open_segment_runners(folder, sig, threads,
                                                                        model=manifest.get("model", {}))
    return cls(runners, sig, load_host_tables(model_path, sig))


def open_segmented(model_path, manifest: dict, threads: int = 0, session=None, *,
                   allow_cpu_fallback: bool = True) -> SegmentedCausalLM:
    """A SegmentedCausalLM for a bundle; `session` = list of injected segment runners (tests). The segment
    interpreters are the only ones built, whatever `allow_cpu_fallback` says (the caller settles)."""
    return _open(SegmentedCausalLM, model_path, manifest, threads, session)


open_segmented.host_macs = host_macs
open_segmented.host_weight_bytes = host_weight_bytes


def open_segmented_encoder(model_path, manifest: dict, threads: int = 0, session=None, *,
                           allow_cpu_fallback: bool = True) -> SegmentedEncoder:
    """A SegmentedEncoder for a bundle; `session` = list of injected segment runners (tests);
    `allow_cpu_fallback` as open_segmented."""
    return _open(SegmentedEncoder, model_path, manifest, threads, session)


def encoder_host_macs(signature: dict, tokens: int = 32) -> int:
    """Host multiply-accumulates per token of a segmented encoder (attention over `tokens` tokens;
    32 is about the length of an STS-B sentence pair member plus special tokens, rounded up)."""
    return int(signature["layers"]) * 2 * int(signature["hidden_size"]) * min(tokens, int(signature["max_sequence_length"]))


open_segmented_encoder.host_macs = encoder_host_macs
