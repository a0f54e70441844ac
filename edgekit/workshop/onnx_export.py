"""Export a Hugging Face causal LM to ONNX with an explicit KV cache (torch.onnx dynamo exporter).

Graph interface (what edgekit/device/onnx_model.py feeds):
  inputs  input_ids [B,S] int64, attention_mask [B,T] int64 (T = P+S), position_ids [B,S] int64,
          logits_rows [R] int64 (positions in 0..S-1 whose logits are wanted),
          past_key_i, past_value_i [B, kv_heads, P, head_dim] float32, i = 0..layers-1
  outputs logits [B,R,vocab] float32, present_key_i, present_value_i [B, kv_heads, T, head_dim]
`logits_rows` is transformers' `logits_to_keep` as a graph input: a prompt asks for its last row
only (the LM head is a third of a small LM's weights), scoring asks for every row. The batch axis B
is dynamic (`batch`): the device runner decodes several requests in one step (serve --parallel),
left-padding shorter caches with attention_mask 0; one request runs with B = 1.
By default (kv_in_place) the traced attention is then rewritten into onnxruntime's GroupQueryAttention
(edgekit/workshop/onnx_gqa.py: attention_mask gives way to seqlens_k / total_sequence_length, and
past/present become buffers of a fixed capacity the runner updates in place), then (fuse) RMSNorms and
the rotary embedding become onnxruntime's fused kernels and MatMuls sharing an input are packed into one
(edgekit/workshop/onnx_fuse.py, onnx_pack.py; interface unchanged). Both passes share one load and save.
May import: stdlib, torch, transformers, onnx, edgekit.workshop.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch


class _FlatKV(torch.nn.Module):
    """Wraps a causal LM so the KV cache crosses the graph boundary as flat tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, logits_rows, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_rows,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a Llama-style config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_key_value_heads, head_dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    kv = [f"{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    return (
        ["input_ids", "attention_mask", "position_ids", "logits_rows"] + [f"past_{n}" for n in kv],
        ["logits"] + [f"present_{n}" for n in kv],
    )


def export_onnx(model, out_path: Path, max_sequence_length: int, prefill_length: int = 0,
                kv_in_place: bool = True, fuse: bool = True) -> dict:
    """Export `model` (left untouched: a deep copy is traced) to `out_path`; returns the signature,
    with what was fused under "fused" when `fuse`. Shapes are dynamic, so `prefill_length` (a
    static-shape setting) is not used. `kv_in_place`: attention as GroupQueryAttention over KV
    buffers updated in place (else Concat'ed presents). `fuse`: RMSNorms and (with kv_in_place)
    the rotary embedding as onnxruntime's fused kernels (edgekit/workshop/onnx_fuse.py)."""
    layers, kv_heads, head_dim = kv_shape(model.config)
    model = copy.deepcopy(model).eval()
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        # Give the LM head its own constant so weight quantizers (MatMulNBits) can quantize it;
        # tied, it reaches the MatMul through a Transpose of the embedding table and stays fp32.
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    wrapper = _FlatKV(model)
    seq, past_len, rows = 3, 2, 2  # a batch of 2 and two rows: a size-1 sample would be specialised to 1
    sample = (
        torch.ones(rows, seq, dtype=torch.long),
        torch.ones(rows, past_len + seq, dtype=torch.long),
        torch.arange(past_len, past_len + seq)[None].repeat(rows, 1),
        torch.tensor([1, 2]),
        *[torch.zeros(rows, kv_heads, past_len, head_dim) for _ in range(2 * layers)],
    )
    b = torch.export.Dim("batch", min=1, max=64)
    s = torch.export.Dim("seq", min=1, max=max_sequence_length)
    p = torch.export.Dim("past", min=0, max=max_sequence_length - 1)
    t = torch.export.Dim("total", min=1, max=max_sequence_length)
    r = torch.export.Dim("rows", min=1, max=max_sequence_length)
    dynamic = {
        "input_ids": {0: b, 1: s},
        "attention_mask": {0: b, 1: t},
        "position_ids": {0: b, 1: s},
        "logits_rows": {0: r},
        "past": tuple({0: b, 2: p} for _ in range(2 * layers)),
    }
    inputs, outputs = io_names(layers)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, sample, str(out_path), dynamo=True, dynamic_shapes=dynamic,
            input_names=inputs, output_names=outputs, external_data=False,
        )
    fused = _rewrite(out_path, model.config, kv_heads, max_sequence_length, kv_in_place, fuse)
    return {**signature(out_path), **({"fused": fused} if fused is not None else {})}


def _rewrite(out_path: Path, config, kv_heads: int, max_sequence_length: int, kv_in_place: bool,
             fuse: bool) -> dict | None:
    """The graph passes on the exported file, in one load and one save (the fp32 file of a 135M model
    is ~500 MB): attention into GroupQueryAttention (kv_in_place), then the kernel fusions (fuse).
    Returns what was fused (None when not asked)."""
    if not (kv_in_place or fuse):
        return None
    import onnx

    model = onnx.load(str(out_path))
    if kv_in_place:
        from edgekit.workshop.onnx_gqa import to_gqa

        model = to_gqa(model, config.num_attention_heads, kv_heads)
    fused = None
    if fuse:
        from edgekit.workshop.onnx_fuse import fuse as fuse_graph

        fused = fuse_graph(model, max_sequence_length)
    onnx.save(model, str(out_path))
    return fused


def signature(onnx_path: Path) -> dict:
    """Input/output names, dtypes and shapes (symbolic dims as names) of an ONNX file."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def describe(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def op_counts(onnx_path: Path) -> dict[str, int]:
    """ONNX op type -> count (top-level graph)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
