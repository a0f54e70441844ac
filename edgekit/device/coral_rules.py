"""Coral Edge TPU mapping rules, as data: which TFLite ops the Edge TPU compiler maps and with what
limits. Edit this table (not the checker) when Coral documents a change.

Each entry: TFLite builtin op name -> (list of limit-check names, note with the source). The checks
are implemented in edgekit/device/coral_check.py; their names say what they test.
Sources:
  [ops]   coral.ai/docs/edgetpu/models-intro, "Supported operations" table (op list and
          "Known limitations" column; current wording as mirrored by Axis' ARTPEC-7 supported-ops
          page, older rows from a verbatim mirror of the earlier table).
  [notes] ../shared/notes/toolchain.md op list (Rsqrt, Sum, SquaredDifference, Transpose): listed
          by newer compiler versions; their limits are not in the sources above. Compiler 16 logs
          in google-coral/edgetpu issues show TRANSPOSE "otherwise supported, but not mapped" in
          some models, so treat a predicted TRANSPOSE mapping as optimistic.
  [reqs]  same page, "Model requirements": 8-bit quantized tensors, static tensor sizes,
          compile-time constant parameters, tensors 1-3-D or only the 3 innermost dims > 1.
  [comp]  coral.ai/docs/edgetpu/compiler: the compiler maps ops up to the first one it cannot
          map and runs everything after it on the CPU ("More than one subgraph is not supported");
          about 8 MB of on-chip SRAM caches parameters, the rest streams from host memory.
May import: stdlib only.
"""

from __future__ import annotations

# Status strings as the compiler prints them in its operation table (edgetpu_compiler -s).
MAPPED = "Mapped to Edge TPU"
NOT_SUPPORTED = "Operation not supported"
AFTER_PARTITION = "More than one subgraph is not supported"
BAD_DTYPE = "Operation is working on an unsupported data type"
DYNAMIC = ("Attempting to use a delegate that only supports static-sized tensors with a graph that "
           "has dynamic-sized tensors")
BAD_RANK = "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"
LIMITATION = "Operation is otherwise supported, but not mapped due to some unspecified limitation"

# [comp] ~8 MB SRAM caches parameters; compiler 16 logs show used + remaining of about 7.5-8 MiB
ON_CHIP_PARAMETER_BYTES = 8 * 1024 * 1024
SOFTMAX_MAX_ELEMENTS = 16_000  # [ops] Softmax: 1-D input, at most 16,000 elements
ACTIVATION_DTYPES = ("INT8", "UINT8")  # [reqs] 8-bit quantized activations
CONSTANT_DTYPES = ("INT8", "UINT8", "INT32")  # weights 8-bit; biases and shape/axis operands int32

OPS: dict[str, tuple[tuple[str, ...], str]] = {
    # elementwise and activations [ops]: no listed limitations
    "ADD": ((), "[ops]"), "SUB": ((), "[ops]"), "MUL": ((), "[ops]"), "MAXIMUM": ((), "[ops]"),
    "MINIMUM": ((), "[ops]"),
    "LOGISTIC": ((), "[ops]"), "TANH": ((), "[ops]"), "RELU": ((), "[ops]"), "RELU6": ((), "[ops]"),
    "RELU_N1_TO_1": ((), "[ops]"), "PRELU": ((), "[ops] alpha 1-D (innermost dim only)"),
    "L2_NORMALIZATION": ((), "[ops]"), "QUANTIZE": ((), "[ops] requantization between 8-bit scales"),
    "RESHAPE": ((), "[ops] some reshapes of large tensors may not map"),
    "EXPAND_DIMS": ((), "[ops]"), "SPLIT": ((), "[ops]"), "SLICE": ((), "[ops]"),
    "SPACE_TO_DEPTH": ((), "[ops]"), "TRANSPOSE": ((), "[notes]"), "RSQRT": ((), "[notes]"),
    "SQUARED_DIFFERENCE": ((), "[notes]"), "SUM": (("reduce_not_batch",), "[notes] as Mean"),
    "REDUCE_MAX": (("reduce_not_batch",), "[ops] cannot operate on the batch dimension"),
    "REDUCE_MIN": (("reduce_not_batch",), "[ops] cannot operate on the batch dimension"),
    "CONV_2D": (("same_dilation",), "[ops] same dilation in x and y"),
    "DEPTHWISE_CONV_2D": (("same_dilation",), "[ops] same dilation in x and y"),
    "TRANSPOSE_CONV": ((), "[ops]"),
    "LSTM": ((), "[ops] unidirectional LSTM only"),
    "RESIZE_BILINEAR": (("io_3d",), "[ops] input/output 3-D"),
    "RESIZE_NEAREST_NEIGHBOR": (("io_3d",), "[ops] input/output 3-D"),
    "AVERAGE_POOL_2D": (("no_fused_activation",), "[ops] no fused activation"),
    "MAX_POOL_2D": (("no_fused_activation",), "[ops] no fused activation"),
    "CONCATENATION": (("no_fused_activation", "constant_inputs_zero_pad"),
                      "[ops] no fused activation; a constant input must be all zeros and the only other input"),
    "FULLY_CONNECTED": (("fc_one_dimensional_output",),
                        "[ops] default weight format; output tensor is one-dimensional"),
    "SOFTMAX": (("softmax_1d",), "[ops] 1-D input with at most 16,000 elements"),
    "STRIDED_SLICE": (("unit_strides",), "[ops] all strides 1, ellipsis and new-axis masks 0"),
    "MEAN": (("reduce_not_batch", "z_reduction_multiple_of_4"),
             "[ops] no reduction in batch; a z (innermost) reduction needs z a multiple of 4"),
    "PAD": (("pad_not_batch",), "[ops] no padding in the batch dimension"),
    "SQUEEZE": (("squeeze_leading_ones",), "[ops] only dims with leading 1s (no relayout): 1,5,10 ok; 5,1,10 not"),
    "PACK": (("pack_not_batch",), "[ops] no packing along the batch dimension"),
}

# Ops whose constant filter (input 1, [out, kh, kw, in]) is exempt from the [reqs] rank rule, which
# applies to the activations: Coral's own compiled image models (MobileNet, EfficientNet-EdgeTPU on
# coral.ai/models) run every CONV_2D on the TPU with 4-D filters whose four dims all exceed 1.
FILTER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")

# Plain-language reasons shown beside the compiler's words.
WHY = {
    NOT_SUPPORTED: "the Edge TPU has no kernel for {op}",
    BAD_DTYPE: "tensor '{tensor}' is {dtype}; the Edge TPU computes on 8-bit integers only",
    DYNAMIC: "tensor '{tensor}' has a dynamic dimension; the Edge TPU needs every shape fixed at compile time",
    BAD_RANK: "tensor '{tensor}' has shape {shape}: more than the 3 innermost dimensions are larger than 1",
    AFTER_PARTITION: "an earlier op ({first}) runs on the CPU, and the compiler maps only the ops before it",
}
