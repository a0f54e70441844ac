"""Export a Hugging Face Llama-family causal LM to TFLite (LiteRT) with a static KV cache.

One .tflite file, two signatures sharing the weights (litert_torch.signature):
  prefill: embeds [1,P,hidden] float32, input_pos [P] int32, cos, sin [P,head_dim] float32,
           mask [1,1,P,C] float32, k_i, v_i [1,kv_heads,C,head_dim] float32, then `sel` [1,1,P]
           float32, a one-hot row picking the position whose logits are wanted
           -> logits [1,1,vocab], k_i, v_i (updated)
  decode:  embeds .. v_i as above with P = 1 (no `sel`) -> logits [1,1,vocab], k_i, v_i.
Generation needs only the last prompt token's logits, and the LM head is a third of a small LM's
weights (SmolLM2-135M students: 28M of 81M), so prefill computes it for one row instead of P; the
pick is a matmul, not a GATHER, for the reason the embedding lookup is on the host. Logits for
every position (scoring) come from decode steps. Not a third all-rows signature: XNNPACK packs the
weights of every signature of a model when it is first used (about 80 MB per signature here).
plus `host_tables.npz` beside it: the token embedding table and the rotary cos/sin tables, which
the device runner applies (a row lookup per token). Keeping the lookups on the host keeps the graph
free of GATHER/EMBEDDING_LOOKUP (the Edge TPU cannot map them, and LiteRT's quantizer left the
table float32, a third of a small LM's bytes); the table is quantized by edgekit itself.
P = target shapes.prefill_length, C = cache length = max_sequence_length. The cache update is a
DYNAMIC_UPDATE_SLICE at input_pos[0] (positions in one call are contiguous); the mask is additive
(0 = attend, `mask_value` = do not) and comes from the caller, so the graph holds no
comparison/select ops.

Written against transformers' Llama modules (q/k/v/o_proj, RMSNorm, gated MLP, rotary_emb); the
architecture decisions (supported families, q/k norms, GQA, op order) come from the model's LlamaSpec
(edgekit/core/llama_spec.py); other architectures get a clear error.
May import: stdlib, torch, transformers, litert_torch, edgekit.core.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from edgekit.core.errors import BuildError
from edgekit.core.llama_spec import LlamaSpec, spec_from_config

# Additive mask for float variants: exp(-1e4) is exactly 0, and -1e4 fits in float16. Masked slots
# include prefill padding whose keys can score high, so a small value would leak attention to them.
MASK_VALUE = -1.0e4
# Full-int8 variants calibrate the mask input's range, so -1e4 would leave no int8 resolution for the
# attention scores it is added to; exp(-30) ~ 1e-13 is the compromise there.
INT8_MASK_VALUE = -30.0
HOST_FILE = "host_tables.npz"


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def model_spec(model, layout: str = "tflite") -> LlamaSpec:
    """The model's LlamaSpec, checked against the model itself: every tensor the ops read exists
    and no projection carries a bias the spec does not list (so a spec cannot silently drop one)."""
    spec = spec_from_config(model.config, layout)
    params = dict(model.named_parameters())
    for i, layer in enumerate(model.model.layers):
        for op in spec.layer_ops:
            missing = [r for r in op.reads if f"model.layers.{i}.{r}" not in params]
            extra = [m for m in op.modules()
                     if getattr(layer.get_submodule(m), "bias", None) is not None and not op.has_bias(m)]
            if missing or extra:
                raise BuildError(f"'{model.config.model_type}' layer {i} does not match its Llama-family "
                                 f"description (op {op.name}: missing {missing}, unlisted biases {extra})")
    return spec


class EdgeDecoder(torch.nn.Module):
    """A static-shape re-statement of the HF model's forward that reuses its weight modules and
    follows the op order of its LlamaSpec (edgekit/core/llama_spec.py)."""

    def __init__(self, model, cache_length: int):
        super().__init__()
        self.spec = model_spec(model)
        self.model = model
        self.layers = list(model.model.layers)
        self.heads, self.kv_heads, self.head_dim = self.spec.heads, self.spec.kv_heads, self.spec.head_dim
        self.cache_length = cache_length

    def _heads(self, q, k, v):
        t = q.shape[1]
        return (q.view(1, t, self.heads, self.head_dim).transpose(1, 2),
                k.view(1, t, self.kv_heads, self.head_dim).transpose(1, 2),
                v.view(1, t, self.kv_heads, self.head_dim).transpose(1, 2))

    def _attention(self, q, k, v, mask, k_cache, v_cache, start):
        from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

        t = q.shape[2]
        zero = torch.zeros([], dtype=torch.int32)
        k_cache = dynamic_update_slice(k_cache, k, [zero, zero, start, zero])
        v_cache = dynamic_update_slice(v_cache, v, [zero, zero, start, zero])
        g = self.spec.groups
        # group query heads per KV head instead of repeating K/V (no BROADCAST_TO of the cache)
        qg = q.reshape(1, self.kv_heads, g * t, self.head_dim)
        scores = torch.matmul(qg, k_cache.transpose(2, 3)) * self.spec.scaling
        scores = scores.view(1, self.kv_heads, g, t, self.cache_length) + mask.view(1, 1, 1, t, self.cache_length)
        probs = torch.softmax(scores, dim=-1).view(1, self.kv_heads, g * t, self.cache_length)
        out = torch.matmul(probs, v_cache).view(1, self.heads, t, self.head_dim)
        return out.transpose(1, 2).reshape(1, t, self.heads * self.head_dim), k_cache, v_cache

    def _layer(self, layer, x, cos, sin, mask, kv: list, start):
        """One decoder layer, op by op; `kv` = [k_cache, v_cache], replaced by the updated caches."""
        h = None
        for op in self.spec.layer_ops:
            mods = [layer.get_submodule(m) for m in op.modules()]
            if op.kind == "rmsnorm":
                h = mods[0](x)
            elif op.kind == "linear":
                h = tuple(m(h) for m in mods) if len(mods) > 1 else mods[0](h)
            elif op.kind == "split_heads":
                h = self._heads(*h)
            elif op.kind == "head_rmsnorm":
                h = (mods[0](h[0]), mods[1](h[1]), h[2])
            elif op.kind == "rope":
                q, k, v = h
                h = (q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v)
            elif op.kind == "attention":
                h, kv[0], kv[1] = self._attention(*h, mask, kv[0], kv[1], start)
            elif op.kind == "silu_mul":
                h = layer.mlp.act_fn(h[0]) * h[1]
            elif op.kind == "residual":
                x = x + h
            else:
                raise BuildError(f"TFLite export has no rule for the '{op.kind}' op")
        return x

    def body(self, x, input_pos, cos, sin, mask, kv):
        """The decoder layers: hidden states [1,T,hidden] and the updated caches."""
        start = input_pos[0].reshape([])
        new_kv = []
        for i, layer in enumerate(self.layers):
            caches = [kv[2 * i], kv[2 * i + 1]]
            x = self._layer(layer, x, cos, sin, mask, caches, start)
            new_kv += caches
        return x, new_kv

    def head(self, x):
        return self.model.lm_head(self.model.model.norm(x))

    def forward(self, x, input_pos, cos, sin, mask, *kv):
        x, new_kv = self.body(x, input_pos, cos, sin, mask, kv)
        return (self.head(x), *new_kv)


class LastLogits(torch.nn.Module):
    """The prefill of `dec` returning the logits of one position, chosen by the one-hot `sel`
    [1,1,P] (the last input). Shares `dec`'s weight tensors, which the converter stores once."""

    def __init__(self, dec: EdgeDecoder):
        super().__init__()
        self.dec = dec

    def forward(self, x, input_pos, cos, sin, mask, *rest):
        *kv, sel = rest
        h, new_kv = self.dec.body(x, input_pos, cos, sin, mask, kv)
        return (self.dec.head(torch.matmul(sel, h)), *new_kv)


def rotary_tables(model, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim] from the model's own rotary embedding (keeps its rope scaling)."""
    rot = model.model.rotary_emb
    dummy = torch.zeros(1, 1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rot(dummy, torch.arange(length)[None])
    return cos[0].float(), sin[0].float()


def sample_inputs(dec: EdgeDecoder, length: int, hidden: int) -> tuple:
    kv = [torch.zeros(1, dec.kv_heads, dec.cache_length, dec.head_dim) for _ in range(2 * len(dec.layers))]
    pos = torch.arange(length, dtype=torch.int32)
    mask = torch.zeros(1, 1, length, dec.cache_length)
    return (torch.zeros(1, length, hidden), pos, torch.zeros(length, dec.head_dim),
            torch.zeros(length, dec.head_dim), mask, *kv)


@contextlib.contextmanager
def quiet():
    """litert_torch/TF print progress and warnings on stdout/stderr; keep the build log readable."""
    for name in ("absl", "litert_torch", "torch._export", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_tflite(model, out_path: Path, max_sequence_length: int, prefill_length: int) -> dict:
    """Convert `model` (fp32) to a two-signature .tflite at `out_path` plus its host tables beside
    it; returns the signature record."""
    import litert_torch
    import numpy as np

    prefill_length = min(prefill_length, max_sequence_length)
    model = model.float().eval()
    dec = EdgeDecoder(model, max_sequence_length).eval()
    hidden = model.config.hidden_size
    with quiet(), torch.no_grad():
        prefill = (*sample_inputs(dec, prefill_length, hidden), torch.zeros(1, 1, prefill_length))
        edge = (litert_torch.signature("prefill", LastLogits(dec).eval(), prefill)
                .signature("decode", dec, sample_inputs(dec, 1, hidden))
                .convert())
        edge.export(str(out_path))
    cos, sin = rotary_tables(model, max_sequence_length)
    embed = model.model.embed_tokens.weight.detach().float().numpy()
    np.savez(out_path.parent / HOST_FILE, embed=embed, cos=cos.numpy(), sin=sin.numpy())
    return describe(out_path) | {
        "prefill_length": prefill_length, "cache_length": max_sequence_length, "mask_value": MASK_VALUE,
        "host_file": HOST_FILE,
    }


def describe(path: Path) -> dict:
    """Signature names with their input/output names, shapes and dtypes, read through the runtime."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    sigs = {}
    for name in interp.get_signature_list():
        runner = interp.get_signature_runner(name)
        sigs[name] = {
            "inputs": [{"name": k, "dtype": v["dtype"].__name__, "shape": [int(s) for s in v["shape"]]}
                       for k, v in runner.get_input_details().items()],
            "outputs": [{"name": k, "dtype": v["dtype"].__name__, "shape": [int(s) for s in v["shape"]]}
                        for k, v in runner.get_output_details().items()],
        }
    return {"signatures": sigs}
