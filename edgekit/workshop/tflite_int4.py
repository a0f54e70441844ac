"""The int4-dynamic TFLite recipe: 4-bit weights in blocks of 32 with int8 activations quantized at run time.

AI Edge Quantizer's blockwise 4-bit FULLY_CONNECTED weights (symmetric, one scale per 32 input values,
compute_precision INTEGER, explicit_dequantize False: XNNPACK's dynamically quantized int8 x 4-bit kernels).
Not per-channel int4, which collapses small models. Weights that stay int8 channel-wise (int8-dynamic's
scheme), and why:
  - the LM head (a [vocab, hidden] weight, the embedding table's shape): a tied model then still stores
    its table once (the host reads its rows from the int8 head, tflite_quantize.share_tied_embedding);
    a 4-bit head would need a separate int8 row table beside it, and the head is the most
    quantization-sensitive matrix;
  - any weight whose input size is not a multiple of 32 (the quantizer cannot block it).
Every other op gets int8-dynamic's treatment. Pure recipe builders plus one function reading the model.
Units: none (bit widths, element counts). May import: stdlib, ai_edge_quantizer (lazily).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PRECISION = "int4-dynamic"
BLOCK_SIZE = 32


@dataclass(frozen=True)
class FcWeight:
    """A FULLY_CONNECTED op with a constant weight: its quantizer scope (output tensor names) and shape."""

    scope: str
    shape: tuple[int, ...]


def dynamic_entry(regex: str, operation: str, bits: int, granularity: str) -> dict:
    """One AI Edge Quantizer recipe entry: symmetric `bits`-bit weights, activations quantized at run time."""
    return {
        "regex": regex,
        "operation": operation,
        "algorithm_key": "min_max_uniform_quantize",
        "op_config": {
            "weight_tensor_config": {"num_bits": bits, "symmetric": True, "granularity": granularity,
                                     "dtype": "INT"},
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
        },
    }


def int8_reason(weight: FcWeight, head_shape: tuple[int, int] | None) -> str | None:
    """Why `weight` stays int8 channel-wise ("lm_head", "not_blockable"), or None: it becomes 4-bit."""
    if head_shape is not None and tuple(weight.shape) == tuple(head_shape):
        return "lm_head"
    if len(weight.shape) != 2 or weight.shape[1] % BLOCK_SIZE:
        return "not_blockable"
    return None


def int4_recipe(weights: list[FcWeight], head_shape: tuple[int, int] | None) -> tuple[list[dict], dict]:
    """(recipe, record): int8-dynamic for every op, 4-bit blocks for FULLY_CONNECTED, then an int8 override
    per FULLY_CONNECTED scope that must stay int8 (later entries win in AI Edge Quantizer's recipe manager).
    The record counts FULLY_CONNECTED weights by scheme (over all signatures)."""
    recipe = [dynamic_entry(".*", "*", 8, "CHANNELWISE"),
              dynamic_entry(".*", "FULLY_CONNECTED", 4, f"BLOCKWISE_{BLOCK_SIZE}")]
    record = {"block_size": BLOCK_SIZE, "int4_fully_connected": 0, "int8_fully_connected": {}}
    kept = {}
    for w in weights:
        reason = int8_reason(w, head_shape)
        if reason is None:
            record["int4_fully_connected"] += 1
            continue
        record["int8_fully_connected"][reason] = record["int8_fully_connected"].get(reason, 0) + 1
        kept.setdefault(w.scope, reason)
    recipe += [dynamic_entry(f"^{re.escape(scope)}$", "FULLY_CONNECTED", 8, "CHANNELWISE") for scope in kept]
    return recipe, record


def fc_weights(model_path: Path) -> list[FcWeight]:
    """Every FULLY_CONNECTED op of the float model whose weight is a constant, in every subgraph, with the
    scope string AI Edge Quantizer matches recipe regexes against."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(Path(model_path))
    out = []
    for sg in model.subgraphs:
        for op in sg.operators:
            if tfl.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode) != "FULLY_CONNECTED":
                continue
            weight = sg.tensors[op.inputs[1]]
            buf = model.buffers[weight.buffer]
            if (buf.data is None or len(buf.data) == 0) and not buf.offset:
                continue  # an activation, not a constant weight
            out.append(FcWeight(tfl.get_op_scope(op, sg.tensors), tuple(int(d) for d in weight.shape)))
    return out
