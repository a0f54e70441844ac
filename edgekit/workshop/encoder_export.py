"""Export a BERT-family sentence encoder (e.g. a MiniLM student) to ONNX or TFLite: one forward pass.

Graph (both formats):  embeds [1,S,hidden] float32 (word + position + token-type rows, summed on
the host from `host_tables.npz`), mask [1,S] float32 (1 = token, 0 = padding)
->  embedding [1,hidden] float32, the attention-masked mean of the last hidden states (not yet
L2-normalised: the device runner normalises). ONNX keeps S dynamic; TFLite fixes S to the
target's max_sequence_length (static shapes) and the runner pads. Word-embedding lookup on the host
keeps the graph free of GATHER (the Edge TPU cannot map it) and lets edgekit quantize the table,
which is half of a small encoder's bytes.
May import: stdlib, numpy, torch, transformers, onnx, litert_torch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from edgekit.core.errors import BuildError

HOST_FILE = "host_tables.npz"
SUPPORTED = ("bert",)
_ACTS = {"gelu": torch.nn.functional.gelu, "relu": torch.relu,
         "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}


class EncoderGraph(torch.nn.Module):
    """BERT encoder layers + masked mean pooling, restated over the HF model's own weight modules."""

    def __init__(self, model):
        super().__init__()
        cfg = model.config
        if cfg.model_type not in SUPPORTED or cfg.hidden_act not in _ACTS:
            raise BuildError(f"encoder export supports {', '.join(SUPPORTED)} models with "
                             f"{'/'.join(_ACTS)} activations; got '{cfg.model_type}' ({cfg.hidden_act})")
        self.model = model
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.act = _ACTS[cfg.hidden_act]

    def _layer(self, layer, x, bias):
        s = x.shape[1]
        att = layer.attention.self

        def heads(t):
            return t.view(1, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(att.query(x)), heads(att.key(x)), heads(att.value(x))
        scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.head_dim)) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(1, s, self.heads * self.head_dim)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
        h = self.act(layer.intermediate.dense(x))
        return layer.output.LayerNorm(layer.output.dense(h) + x)

    def forward(self, embeds, mask):
        x = self.model.embeddings.LayerNorm(embeds)
        bias = ((1.0 - mask) * -1.0e4).view(1, 1, 1, -1)
        for layer in self.model.encoder.layer:
            x = self._layer(layer, x, bias)
        w = mask.unsqueeze(-1)
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def host_tables(model) -> dict:
    e = model.embeddings
    return {"embed": e.word_embeddings.weight.detach().float().numpy(),
            "position": e.position_embeddings.weight.detach().float().numpy(),
            "token_type": e.token_type_embeddings.weight.detach().float().numpy()[:1]}


def _sample(length: int, hidden: int) -> tuple:
    return torch.zeros(1, length, hidden), torch.ones(1, length)


def export_encoder_onnx(model, out_path: Path, max_sequence_length: int, prefill_length: int = 0) -> dict:
    import io
    import warnings
    from contextlib import redirect_stdout

    graph = EncoderGraph(model.float().eval()).eval()
    seq = torch.export.Dim("seq", min=2, max=max_sequence_length)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, _sample(8, model.config.hidden_size), str(out_path), dynamo=True,
                          dynamic_shapes={"embeds": {1: seq}, "mask": {1: seq}},
                          input_names=["embeds", "mask"], output_names=["embedding"], external_data=False)
    np.savez(out_path.parent / HOST_FILE, **host_tables(model))
    from edgekit.workshop.onnx_export import signature

    return signature(out_path) | {"host_file": HOST_FILE, "max_sequence_length": max_sequence_length}


def export_encoder_tflite(model, out_path: Path, max_sequence_length: int, prefill_length: int = 0) -> dict:
    import litert_torch

    from edgekit.workshop.tflite_export import describe, quiet

    graph = EncoderGraph(model.float().eval()).eval()
    with quiet(), torch.no_grad():
        litert_torch.signature("encode", graph, _sample(max_sequence_length, model.config.hidden_size)) \
            .convert().export(str(out_path))
    np.savez(out_path.parent / HOST_FILE, **host_tables(model))
    return describe(out_path) | {"host_file": HOST_FILE, "max_sequence_length": max_sequence_length}


def calibration_feeds_encoder(fp32_path: Path, signature: dict, sentences_ids: list[list[int]]) -> dict:
    """Static-range calibration feeds for the `encode` signature, from real tokenised sentences."""
    from edgekit.device.encoder_model import encoder_inputs

    with np.load(fp32_path.parent / HOST_FILE) as z:
        tables = {k: z[k] for k in z.files}
    length = signature["max_sequence_length"]
    feeds = []
    for ids in sentences_ids:
        embeds, mask = encoder_inputs(tables, ids[:length], length)
        feeds.append({"args_0": embeds, "args_1": mask})
    return {"encode": feeds}
