"""One explicit description of a Llama-family decoder block: the architecture facts and the
ordered per-layer ops that every restatement of its forward pass follows. Stdlib only.

Hugging Face's modules are the reference. Two restatements read their decisions from here
instead of re-deriving them from the HF config: the static-shape TFLite export
(edgekit/workshop/tflite_export.py, torch) and the host side of the Edge TPU segments
(edgekit/device/segmented_model.py, numpy; the segments are cut in
edgekit/workshop/coral_segments.py along the `linear` ops below).

`spec_from_config` is the one place an HF config (any object with its attributes) becomes a
LlamaSpec; the segmented bundle's signature stores it (`to_dict`, key SIGNATURE_KEY) and
`spec_from_signature` reads it back, falling back to the signature's older flat keys for bundles
built before it was stored. Sizes are counts, `rms_norm_eps` and `rope_theta` plain numbers.

The value flowing through a layer's ops: `x` the residual stream [T, hidden]; `h` the working
value, one array or a tuple (q, k, v) / (gate, up). Op kinds:
  rmsnorm       h = RMSNorm(x) * weight                    (reads the norm weight)
  linear        h = tuple of the listed projections of h   (one array when one projection)
  split_heads   (q, k, v) -> per-head views [heads|kv_heads, T, head_dim]
  head_rmsnorm  q, k = RMSNorm over head_dim * q_norm / k_norm weight (qwen3)
  rope          q, k rotated by the rotary tables at their positions
  attention     cache k, v; h = grouped-query softmax(q k^T * scaling) v, heads merged
  silu_mul      h = silu(gate) * up
  residual      x = x + h
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekit.core.errors import BuildError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SIGNATURE_KEY = "llama_spec"
# the Edge TPU segments: one per `linear` op of a layer, in this order, then the LM head
SEGMENT_ROLES = ("qkv", "o", "up", "down")
# the segmented bundle's host tables holding each layer norm's weights, stacked over layers
HOST_NORM_TABLES = {"input_layernorm.weight": "input_norm", "post_attention_layernorm.weight": "post_norm"}


@dataclass(frozen=True)
class LayerOp:
    """One step of a decoder layer. `reads`: the weight tensors it uses, named as in the HF state
    dict under `model.layers.{i}.` (a linear op's module is the name less `.weight`/`.bias`)."""

    name: str
    kind: str
    reads: tuple[str, ...] = ()

    def modules(self) -> tuple[str, ...]:
        """The module paths of the weights it reads, in order (a linear op's projections, in
        output order; a norm's module)."""
        return tuple(r[: -len(".weight")] for r in self.reads if r.endswith(".weight"))

    def has_bias(self, module: str) -> bool:
        return f"{module}.bias" in self.reads


@dataclass(frozen=True)
class LlamaSpec:
    """The architecture facts of a Llama-family decoder (llama, mistral, qwen2, qwen3)."""

    model_type: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tied_embeddings: bool = False
    sliding_window: int | None = None
    scaling: float = 0.0  # 0: head_dim ** -0.5 (what HF uses for these families)

    def __post_init__(self):
        if not self.scaling:
            object.__setattr__(self, "scaling", self.head_dim ** -0.5)

    @property
    def groups(self) -> int:
        """Query heads per KV head (grouped-query attention; 1 = plain multi-head)."""
        return self.heads // self.kv_heads

    @property
    def layer_ops(self) -> tuple[LayerOp, ...]:
        return layer_ops(self)

    @property
    def head_reads(self) -> tuple[str, ...]:
        """Final norm and LM head weights (the head is the embedding table when tied)."""
        return ("model.norm.weight", "model.embed_tokens.weight" if self.tied_embeddings else "lm_head.weight")

    def to_dict(self) -> dict:
        return asdict(self)


def _linear(name: str, modules: tuple[str, ...], bias: bool) -> LayerOp:
    reads = tuple(f"{m}.{p}" for m in modules for p in (("weight", "bias") if bias else ("weight",)))
    return LayerOp(name, "linear", reads)


def layer_ops(spec: LlamaSpec) -> tuple[LayerOp, ...]:
    """The ordered ops of one decoder layer (pre-norm attention block, then pre-norm gated MLP)."""
    attn, mlp = "self_attn", "mlp"
    ops = [LayerOp("attn_norm", "rmsnorm", ("input_layernorm.weight",)),
           _linear("qkv", tuple(f"{attn}.{p}_proj" for p in "qkv"), spec.qkv_bias),
           LayerOp("split_heads", "split_heads")]
    if spec.qk_norm:
        ops.append(LayerOp("qk_norm", "head_rmsnorm", (f"{attn}.q_norm.weight", f"{attn}.k_norm.weight")))
    ops += [LayerOp("rope", "rope"), LayerOp("attend", "attention"),
            _linear("o", (f"{attn}.o_proj",), spec.o_bias), LayerOp("attn_residual", "residual"),
            LayerOp("mlp_norm", "rmsnorm", ("post_attention_layernorm.weight",)),
            _linear("up", (f"{mlp}.gate_proj", f"{mlp}.up_proj"), spec.mlp_bias),
            LayerOp("silu_mul", "silu_mul"),
            _linear("down", (f"{mlp}.down_proj",), spec.mlp_bias), LayerOp("mlp_residual", "residual")]
    return tuple(ops)


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def _biases(config) -> tuple[bool, bool]:
    """(q/k/v bias, o bias): qwen2 always has q/k/v biases and none on o; the others follow
    `attention_bias` for all four projections."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def _rope(config) -> tuple[float, dict | None]:
    """(rope theta, the rest of the rope parameters or None when plain RoPE)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = float(params.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0)
    if params.get("rope_type", "default") == "default" and set(params) <= {"rope_type"}:
        return theta, None
    return theta, params


def _refuse(config, layout: str) -> None:
    """The supported-architecture check: a one-line BuildError for a family `layout` cannot run."""
    act = getattr(config, "hidden_act", "silu")
    if layout == "segments" and (config.model_type not in SUPPORTED_MODEL_TYPES or act != "silu"):
        raise BuildError(f"Edge TPU segments support {', '.join(SUPPORTED_MODEL_TYPES)} decoders with SiLU MLPs; "
                         f"got '{config.model_type}' ({getattr(config, 'hidden_act', '?')})")
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise BuildError(f"TFLite export supports {', '.join(SUPPORTED_MODEL_TYPES)} decoders; this model is "
                         f"'{config.model_type}' (use an onnx target)")


def spec_from_config(config, layout: str = "tflite") -> LlamaSpec:
    """The LlamaSpec of an HF config (PretrainedConfig or any object with its attributes). A
    one-line BuildError when `layout` ("tflite": the static-shape graph, "segments": the Edge TPU
    segments) cannot run this architecture."""
    _refuse(config, layout)
    heads = config.num_attention_heads
    qkv_bias, o_bias = _biases(config)
    theta, scaling = _rope(config)
    spec = LlamaSpec(
        model_type=config.model_type, layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size),
        heads=int(heads), kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        rms_norm_eps=float(config.rms_norm_eps), rope_theta=theta, rope_scaling=scaling,
        qk_norm=config.model_type == "qwen3", qkv_bias=qkv_bias, o_bias=o_bias,
        mlp_bias=bool(getattr(config, "mlp_bias", False)), hidden_act=getattr(config, "hidden_act", "silu"),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        sliding_window=_sliding_window(config))
    if layout == "segments" and spec.qk_norm:
        raise BuildError("Edge TPU segments do not support per-head q/k norms (qwen3) yet")
    return spec


def spec_from_signature(signature: dict) -> LlamaSpec:
    """The LlamaSpec a segmented bundle's signature stores; for bundles built before it was stored,
    the one its flat keys describe (those exports were llama-style: no q/k norm, SiLU MLP)."""
    stored = signature.get(SIGNATURE_KEY)
    if stored is not None:
        return LlamaSpec(**stored)
    return LlamaSpec(model_type="llama", layers=int(signature["layers"]),
                     hidden_size=int(signature.get("hidden_size", 0)), heads=int(signature["heads"]),
                     kv_heads=int(signature["kv_heads"]), head_dim=int(signature["head_dim"]),
                     rms_norm_eps=float(signature["rms_norm_eps"]), scaling=float(signature["scaling"]))
