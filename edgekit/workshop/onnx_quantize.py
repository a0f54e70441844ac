"""Post-training quantization of an exported ONNX model with onnxruntime's quantizers.

Precisions: fp32 (copy); int8-dynamic (int8 weights in blocks of 32, activations quantized to
int8 per block at run time); int4-weight-only (4-bit weight blocks, the LM head 8-bit). Both
quantized variants also store the embedding table as int8, read from the 8-bit LM head's weights
when the model ties them (edgekit/workshop/onnx_tied.py). May import: stdlib, onnx, onnxruntime, edgekit.core/workshop.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.core.errors import BuildError


def _fp32(src: Path, dst: Path) -> dict:
    shutil.copyfile(src, dst)
    return {}


def _lm_head(model) -> tuple[str, str]:
    """(name, "") of the MatMul that writes the graph output `logits` from a constant weight (the LM head),
    or ("", why not)."""
    consts = {t.name for t in model.graph.initializer}
    heads = [n.name for n in model.graph.node
             if n.op_type == "MatMul" and list(n.output) == ["logits"] and n.input[1] in consts]
    if "logits" not in {o.name for o in model.graph.output}:
        return "", "the graph has no output named 'logits'"
    if len(heads) != 1 or not heads[0]:
        return "", f"{len(heads)} named MatMul nodes with a constant weight write 'logits' (expected 1)"
    return heads[0], ""


def _quantize_matmuls(model, bits: int, skip: list[str]):
    """Every MatMul with a constant weight but those named in `skip` to `bits`-bit MatMulNBits blocks of 32."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True, accuracy_level=4,
                                 nodes_to_exclude=skip or None)
    quant.process()
    return quant.model


def _blockwise(src: Path, dst: Path, bits: int, head_bits: int | None = None) -> dict:
    """MatMul weights to `bits`-bit blocks of 32 (MatMulNBits, accuracy_level 4: activations are
    quantized to int8 per block at run time, as llama.cpp's Q8_0 does), the LM head to `head_bits`
    when given (and found: the parameters say when it is not), then the embedding table (Gather) to int8."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    head, why = _lm_head(model) if head_bits not in (None, bits) else ("", "")
    model = _quantize_matmuls(model, bits, [head] if head else []).model
    if head:  # only the head is left as a plain MatMul with a constant weight; skip anything else all the same
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != head]
        model = _quantize_matmuls(model, head_bits, others).model
    mid = dst.with_name(dst.stem + ".matmul.onnx")
    try:
        from onnxruntime.quantization.onnx_model import ONNXModel

        ONNXModel(model).save_model_to_file(str(mid), use_external_data_format=False)  # sorted, as the quantizer saves
        quantize_dynamic(str(mid), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
    finally:
        mid.unlink(missing_ok=True)
    params = {"matmul": f"MatMulNBits {bits}-bit, block 32, symmetric, accuracy_level 4",
              "embedding": "Gather int8 per-tensor (onnxruntime quantize_dynamic)"}
    if head:
        params["lm_head"] = f"MatMulNBits {head_bits}-bit, block 32, symmetric, accuracy_level 4 ({head})"
    elif why:
        params["lm_head"] = f"{bits}-bit like the other MatMuls: no LM head found to keep at {head_bits} bits ({why})"
    return params


def _share_embedding(dst: Path, params: dict) -> dict:
    """The embedding read from the 8-bit LM head's weights when the model ties them (onnx_tied)."""
    from edgekit.workshop.onnx_tied import share_tied_head

    params["embedding_shared"] = record = share_tied_head(dst)
    if record["shared"]:
        params["embedding"] = "GatherBlockQuantized 8-bit, block 32: rows of the LM head's MatMulNBits weights"
    return params


def _int8_dynamic(src: Path, dst: Path) -> dict:
    # Why not quantize_dynamic on every MatMul: its per-tensor activation scale breaks on the
    # activation outliers of real LLMs (SmolLM2 student: perplexity 12.83 -> 17.03, 1.33x);
    # block-wise int8 measured 12.85 (1.002x) on the same windows.
    return _share_embedding(dst, _blockwise(src, dst, 8))


def _int4_weight_only(src: Path, dst: Path) -> dict:
    # The LM head stays 8-bit, as llama.cpp's Q4_0 keeps SmolLM2's tied token_embd at Q8_0; tied, it
    # is also the embedding table. SmolLM2 24-layer student, 2040 held-out tokens (bench/compare.py
    # windows, 2026-12-02): head 4-bit 99.6 MB, perplexity 1.264x fp32; head 8-bit 85.4 MB, 1.165x
    # (Q4_0 79.8 MB, 1.168x); decode 8-13% slower than with the 4-bit head in the same runs (1.04-1.05x
    # Q4_0's instead of 1.13-1.19x). Quality at Q4_0's level was chosen over the speed margin.
    return _share_embedding(dst, _blockwise(src, dst, 4, head_bits=8))


QUANTIZERS = {"fp32": _fp32, "int8-dynamic": _int8_dynamic, "int4-weight-only": _int4_weight_only}


def quantize_onnx(src: Path, dst: Path, precision: str, calibration=None) -> dict:
    """Write `src` quantized to `precision` at `dst`; returns the quantizer's parameters."""
    if calibration is not None or precision not in QUANTIZERS:
        raise BuildError(f"precision '{precision}' is not available for ONNX; available: {', '.join(QUANTIZERS)}")
    return QUANTIZERS[precision](src, dst)
