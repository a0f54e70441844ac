"""Edge TPU friendly export of a Llama-family decoder: TPU segments for the matrix work,
norms, residual adds, rotary embedding and attention on the host.

The Edge TPU maps only listed int8 ops, one segment per model, FullyConnected with a
one-dimensional output, tensors with at most 3 non-unit dims; attention's activation x activation
BATCH_MATMUL and the KV-cache update are not listed. And a fully int8 residual stream and RMSNorm
chain lose too much (measured on stories260k: perplexity 5.97 -> 20.4 with segments that carried
the residual and norm in int8). So every TPU segment is a purely linear map (FULLY_CONNECTED only: listed, and practically all
of the multiply-accumulates), one token per call:

  l{i}_qkv:   h (RMSNorm on the host)    -> q, k, v
  l{i}_o:     a (attention output)       -> o_proj(a)
  l{i}_up:    h2 (RMSNorm on the host)   -> gate, up
  l{i}_down:  m = silu(gate) * up        -> down_proj(m)
  head:       final normalised h         -> logits [1,vocab]
              (or, with lm_head="host", an int8 matmul on the host CPU: the tied embedding's int8
              rows with their per-row scales, or its own int8 `lm_head` table; no TPU segment)

Encoders (export_encoder_segments) get the same cut in sentence form: each segment a bias-free 1x1
CONV_2D over [1, rows, 1, hidden] (CONV_2D has no one-dimensional-output limit), so a sentence of up to
`rows` tokens is one call per segment instead of one per token.

Because each segment is linear (biases are added on the host), the host divides its input by
the input's largest |value| and multiplies the outputs back (per token): the int8 input always spans its full range,
which is what dynamic-range quantization does on a CPU. Measured on stories260k (fp32 perplexity
5.97): residual stream and RMSNorm inside int8 segments 20.4; norms on the host 9.74; linear
segments with per-token input scaling: see docs/coral.md. The host keeps the residual stream in
float32 and does the O(hidden) work: RMSNorm without weight, residual adds, SiLU x up, rotary
embedding, KV cache and attention (edgekit/device/segmented_model.py). Each segment is its own .tflite (co-compiled for the TPU),
quantized to full int8 with calibration feeds recorded while the fp32 segments read real text.
May import: stdlib, numpy, torch, transformers, litert_torch, edgekit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekit.core.errors import BuildError
from edgekit.core.llama_spec import HOST_NORM_TABLES, SEGMENT_ROLES, SIGNATURE_KEY
from edgekit.workshop.tflite_export import model_spec, quiet, rotary_tables

HOST_FILE = "host_tables.npz"


class LinearSegment(torch.nn.Module):
    """Bias-free copies of one or more Linear layers applied to the same input (their biases are
    added on the host, after the per-token rescaling). `biased[j]`: whether linear j's bias is kept
    (default: whenever it has one)."""

    def __init__(self, linears: list[torch.nn.Linear], biased: list[bool] | None = None):
        super().__init__()
        self.maps = torch.nn.ModuleList()
        for lin in linears:
            m = torch.nn.Linear(lin.in_features, lin.out_features, bias=False)
            with torch.no_grad():
                m.weight.copy_(lin.weight)
            self.maps.append(m)
        keep = biased or [lin.bias is not None for lin in linears]
        self.biases = [lin.bias.detach().float().numpy() if k else None for lin, k in zip(linears, keep)]
        self.width = linears[0].in_features

    def forward(self, x):
        outs = tuple(m(x) for m in self.maps)
        return outs if len(outs) > 1 else outs[0]

    def example(self):
        return torch.zeros(1, self.width)


class SentenceSegment(LinearSegment):
    """The same linear maps in sentence form: `rows` tokens per call as an NHWC tensor
    [1, rows, 1, width], each map a bias-free 1x1 CONV_2D (listed for the Edge TPU without the
    FullyConnected one-dimensional-output limit). The permutes around the NCHW conv cancel in the
    converter, so the file holds CONV_2D only."""

    def __init__(self, linears: list[torch.nn.Linear], rows: int, biased: list[bool] | None = None):
        super().__init__(linears, biased)
        self.rows = rows

    def forward(self, x):
        nchw = x.permute(0, 3, 1, 2)
        outs = tuple(torch.nn.functional.conv2d(nchw, m.weight[:, :, None, None]).permute(0, 2, 3, 1)
                     for m in self.maps)
        return outs if len(outs) > 1 else outs[0]

    def example(self):
        return torch.zeros(1, self.rows, 1, self.width)


def decoder_segments(model, lm_head: str = "tpu") -> list[tuple[str, str, LinearSegment]]:
    """[(file name, role, segment)] in execution order for a Llama-family decoder: one segment per
    `linear` op of its LlamaSpec (roles qkv, o, up, down), then the LM head (unless it runs on the host)."""
    spec = model_spec(model, "segments")
    linear_ops = [op for op in spec.layer_ops if op.kind == "linear"]
    if tuple(op.name for op in linear_ops) != SEGMENT_ROLES:
        raise BuildError(f"Edge TPU segments expect linear ops {SEGMENT_ROLES}; the spec has "
                         f"{tuple(op.name for op in linear_ops)}")
    out = []
    for i, layer in enumerate(model.model.layers):
        for op in linear_ops:
            seg = LinearSegment([layer.get_submodule(m) for m in op.modules()],
                                [op.has_bias(m) for m in op.modules()])
            out.append((f"l{i:02d}_{op.name}.tflite", op.name, seg))
    if lm_head == "host":
        return out
    return out + [("head.tflite", "head", LinearSegment([model.lm_head]))]


def encoder_segments(model, rows: int = 0) -> list[tuple[str, str, LinearSegment]]:
    """The same cut for a BERT-family encoder (LayerNorms, GELU, attention, pooling on the host).
    rows > 0: sentence form (SentenceSegment, `rows` tokens per call); 0: one token per call."""
    if model.config.model_type != "bert":
        raise BuildError(f"Edge TPU encoder segments support BERT-family encoders; got '{model.config.model_type}'")

    def seg(linears):
        return SentenceSegment(linears, rows) if rows > 0 else LinearSegment(linears)

    out = []
    for i, layer in enumerate(model.encoder.layer):
        at = layer.attention
        out += [(f"l{i:02d}_qkv.tflite", "qkv", seg([at.self.query, at.self.key, at.self.value])),
                (f"l{i:02d}_o.tflite", "o", seg([at.output.dense])),
                (f"l{i:02d}_up.tflite", "up", seg([layer.intermediate.dense])),
                (f"l{i:02d}_down.tflite", "down", seg([layer.output.dense]))]
    return out


def _write_segments(segments, out_path: Path) -> tuple[list[dict], dict]:
    """Convert each segment (fp32); returns the segment records and the bias tables."""
    import litert_torch

    records, biases = [], {}
    for k, (name, role, seg) in enumerate(segments):
        name = out_path.name if k == 0 else name
        with quiet(), torch.no_grad():
            litert_torch.convert(seg.eval(), (seg.example(),)).export(str(out_path.parent / name))
        records.append({"file": name, "role": role, "outputs": len(seg.maps)})
        if isinstance(seg, SentenceSegment):  # widths: the int8 bytes each call moves over the link, per row
            records[-1].update(in_features=seg.width, out_features=[m.out_features for m in seg.maps])
        for j, b in enumerate(seg.biases):
            if b is not None:
                biases[f"bias:{name}:{j}"] = b
    return records, biases


def _host_head(model, lm_head: str) -> tuple[dict, dict]:
    """(signature fields, host tables) of the LM head's placement: "tpu" adds nothing; "host" reads the
    tied embedding rows (nothing stored twice) or its own `lm_head` table (float32 here, int8 per row
    after quantize_segments)."""
    if lm_head == "tpu":
        return {}, {}
    if lm_head != "host":
        raise BuildError(f"lm_head must be 'tpu' or 'host', got {lm_head!r}")
    head = model.lm_head.weight.detach().float()
    tied = head.data_ptr() == model.model.embed_tokens.weight.data_ptr() or bool(
        torch.equal(head, model.model.embed_tokens.weight.detach().float()))
    if getattr(model.lm_head, "bias", None) is not None:
        raise BuildError("a host LM head with a bias is not supported")
    return {"lm_head": "host", "lm_head_tied": tied, "vocab_size": int(head.shape[0])}, ({} if tied else {"lm_head": head.numpy()})


def export_segments(model, out_path: Path, max_sequence_length: int, prefill_length: int = 1,
                    lm_head: str = "tpu") -> dict:
    """Write every segment (fp32) and the host tables into out_path's folder. `out_path`
    (model.tflite) is written as the first segment's file, so the bundle's model file is the
    entry point. `lm_head`: "tpu" (a segment) or "host" (an int8 matmul on the host CPU). Returns
    the signature record the device runner needs (with the LlamaSpec)."""
    model = model.float().eval()
    spec = model_spec(model, "segments")
    d = out_path.parent
    head_fields, head_tables = _host_head(model, lm_head)
    segments, biases = _write_segments(decoder_segments(model, lm_head), out_path)
    cos, sin = rotary_tables(model, max_sequence_length)
    layers = model.model.layers

    def w(layer, read):
        return layer.get_parameter(read).detach().float().numpy()

    norms = {table: np.stack([w(x, read) for x in layers]) for read, table in HOST_NORM_TABLES.items()}
    np.savez(d / HOST_FILE, embed=model.model.embed_tokens.weight.detach().float().numpy(),
             cos=cos.numpy(), sin=sin.numpy(), **norms, final_norm=w(model.model, "norm.weight"), **biases,
             **head_tables)
    # the flat keys stay for runners and readers that predate SIGNATURE_KEY
    return {"layout": "tpu-segments", "segments": segments, "host_file": HOST_FILE,
            "cache_length": max_sequence_length, "layers": spec.layers, "hidden_size": spec.hidden_size,
            "heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
            "rms_norm_eps": spec.rms_norm_eps, "scaling": spec.scaling, SIGNATURE_KEY: spec.to_dict(),
            **head_fields}


def quantize_segments(src: Path, dst: Path, precision: str, calibration: dict | None = None) -> dict:
    """Quantize every segment file (same recipe for all); calibration = {file name: {signature: feeds}}."""
    from edgekit.workshop.tflite_quantize import quantize_host_tables, quantize_tflite

    params: dict = {}
    for f in sorted(src.parent.glob("*.tflite")):  # every segment file of the export folder
        feeds = (calibration or {}).get(f.name)
        p = quantize_tflite(f, dst.parent / f.name, precision, feeds)
        params = {k: v for k, v in p.items() if k not in ("calibration_samples", "signature_update")}
        if feeds:
            params["calibration_samples_per_segment"] = sum(len(v) for v in feeds.values())
    params.update(quantize_host_tables(src.parent / HOST_FILE, dst.parent / HOST_FILE, precision))
    params.update(_quantize_host_head(dst.parent / HOST_FILE, precision))
    return params


def _quantize_host_head(path: Path, precision: str) -> dict:
    """An untied host LM head (`lm_head` table) in int8 with a float32 scale per vocabulary row (the
    embedding's rule, so the host matmul reads one int8 byte per weight); nothing when absent."""
    with np.load(path) as z:
        tables = {k: z[k] for k in z.files}
    if "lm_head" not in tables or precision in ("fp32", "fp16"):
        return {}
    head = tables["lm_head"].astype(np.float32)
    scale = np.maximum(np.abs(head).max(axis=1), 1e-12) / 127.0
    tables["lm_head"] = np.clip(np.round(head / scale[:, None]), -127, 127).astype(np.int8)
    tables["lm_head_scale"] = scale.astype(np.float32)
    np.savez(path, **tables)
    return {"host_lm_head_dtype": "int8"}


def calibration_feeds_segments(fp32_path: Path, signature: dict, token_windows: list[list[int]]) -> dict:
    """{segment file: {"serving_default": [feeds]}} recorded while the fp32 segments read real text."""
    from edgekit.device.segmented_model import SegmentedCausalLM, open_segment_runners

    with np.load(fp32_path.parent / HOST_FILE) as z:
        tables = {k: z[k] for k in z.files}
    runners = open_segment_runners(fp32_path.parent, signature, record=True)
    lm = SegmentedCausalLM(runners, signature, tables)
    for window in token_windows:
        lm.forward(window[: lm.cache_length], lm.new_cache())
    return {seg["file"]: {"serving_default": r.recorded} for seg, r in zip(signature["segments"], runners)}


def describe_segments(path: Path) -> dict:
    """Input/output dtypes and shapes of the first segment (all segments share the int8 form)."""
    from edgekit.workshop.tflite_export import describe

    return {"first_segment_signature": describe(path)["signatures"]}


def summary(path: Path) -> dict:
    """Op and tensor-dtype counts over every segment file beside `path`."""
    from collections import Counter

    from edgekit.device.tflite_inspect import summary as one

    ops: Counter = Counter()
    types: Counter = Counter()
    files = sorted(path.parent.glob("*.tflite"))
    for f in files:
        s = one(f)
        ops.update(s["ops"])
        types.update(s["tensor_dtypes"])
    return {"ops": dict(sorted(ops.items())), "tensor_dtypes": dict(sorted(types.items())), "segment_files": len(files)}


SENTENCE_FORM = "sentence"  # signature["segment_form"]; bundles without it take one token per call
DEFAULT_SENTENCE_ROWS = 32


def export_encoder_segments(model, out_path: Path, max_sequence_length: int, prefill_length: int = 0,
                            rows: int | None = None) -> dict:
    """Encoder variant of export_segments, in sentence form: every segment takes `rows` tokens per call
    (default: the target's prefill_length, else 32; rows=0 writes the older one-token form). Host
    tables hold the embedding tables, every LayerNorm's weight and bias, and the segment biases."""
    rows = (prefill_length or DEFAULT_SENTENCE_ROWS) if rows is None else rows
    from edgekit.workshop.encoder_export import host_tables

    model = model.float().eval()
    cfg = model.config
    segments, biases = _write_segments(encoder_segments(model, rows), out_path)

    def ln(m):
        return m.weight.detach().float().numpy(), m.bias.detach().float().numpy()

    tables = dict(host_tables(model), **biases)
    tables["embed_ln_w"], tables["embed_ln_b"] = ln(model.embeddings.LayerNorm)
    for i, layer in enumerate(model.encoder.layer):
        tables[f"attn_ln_w:{i}"], tables[f"attn_ln_b:{i}"] = ln(layer.attention.output.LayerNorm)
        tables[f"out_ln_w:{i}"], tables[f"out_ln_b:{i}"] = ln(layer.output.LayerNorm)
    np.savez(out_path.parent / HOST_FILE, **tables)
    return {"layout": "tpu-segments", "segments": segments, "host_file": HOST_FILE,
            "max_sequence_length": max_sequence_length, "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "heads": cfg.num_attention_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads, "layer_norm_eps": float(cfg.layer_norm_eps),
            "activation": cfg.hidden_act,
            **({"segment_form": SENTENCE_FORM, "rows": rows} if rows > 0 else {})}


def calibration_feeds_encoder_segments(fp32_path: Path, signature: dict, sentence_ids: list[list[int]]) -> dict:
    from edgekit.device.segmented_model import SegmentedEncoder, open_segment_runners

    with np.load(fp32_path.parent / HOST_FILE) as z:
        tables = {k: z[k] for k in z.files}
    runners = open_segment_runners(fp32_path.parent, signature, record=True)
    SegmentedEncoder(runners, signature, tables).embed([ids[: signature["max_sequence_length"]]
                                                         for ids in sentence_ids])
    return {seg["file"]: {"serving_default": r.recorded} for seg, r in zip(signature["segments"], runners)}
