"""Post-training quantization of an exported ONNX model with onnxruntime's quantizers.

Precisions: fp32 (copy), int8-dynamic (quantize_dynamic: int8 weights, activations quantized
at run time), int4-weight-only (MatMulNBits, block 32). May import: stdlib, onnx, onnxruntime.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.core.errors import BuildError


def _fp32(src: Path, dst: Path) -> dict:
    shutil.copyfile(src, dst)
    return {}


def _int8_dynamic(src: Path, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    params = {"weight_type": "QInt8", "per_channel": True}
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return params


def _int4_weight_only(src: Path, dst: Path) -> dict:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    params = {"bits": 4, "block_size": 32, "is_symmetric": True}
    quant = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    return params


QUANTIZERS = {"fp32": _fp32, "int8-dynamic": _int8_dynamic, "int4-weight-only": _int4_weight_only}


def quantize_onnx(src: Path, dst: Path, precision: str) -> dict:
    """Write `src` quantized to `precision` at `dst`; returns the quantizer's parameters."""
    if precision not in QUANTIZERS:
        raise BuildError(f"precision '{precision}' is not available for ONNX; available: {', '.join(QUANTIZERS)}")
    return QUANTIZERS[precision](src, dst)
