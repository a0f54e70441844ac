"""How many decoder layers' Edge TPU segments fit the on-chip parameter cache. Stdlib only.

Units: bytes (int8 weights: one byte per weight). A Llama-family layer becomes four bias-free
FULLY_CONNECTED segments (edgekit/workshop/coral_segments.py): qkv (hidden x (heads + 2 kv_heads) x
head_dim), o (heads x head_dim x hidden), up (gate + up: hidden x 2 intermediate), down
(intermediate x hidden); biases stay on the host. The LM head (hidden x vocab) is one more segment,
unless it runs on the host (recipe `[edgetpu] lm_head = "host"`). Co-compiled segments share the
cache, filled whole segment by whole segment in command-line order (accelerators/edgetpu.toml
`cache_rule`, the rule of edgekit/device/coral_latency.cache_fill): when every segment is to stay on
chip, that holds exactly when their sum fits, so the count below is a division.
"""

from __future__ import annotations

from edgekit.core.errors import BuildError


def layer_segment_bytes(hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int) -> list[int]:
    """int8 weight bytes of one layer's segments, in execution order (qkv, o, up, down)."""
    return [hidden * (heads + 2 * kv_heads) * head_dim, heads * head_dim * hidden,
            hidden * 2 * intermediate, intermediate * hidden]


def head_bytes(hidden: int, vocab: int) -> int:
    """int8 weight bytes of the LM head (one int8 weight per vocabulary row x hidden)."""
    return hidden * vocab


def layers_that_fit(per_layer_bytes: int, capacity_bytes: int, head_on_tpu_bytes: int = 0,
                    available_layers: int | None = None) -> int:
    """The most layers whose segments (plus the LM head when it is on the TPU) all stay on chip.
    BuildError when not even one layer fits: the recipe cannot be Coral-sized as written."""
    left = capacity_bytes - head_on_tpu_bytes
    n = left // per_layer_bytes if per_layer_bytes > 0 and left > 0 else 0
    if available_layers is not None:
        n = min(n, available_layers)
    if n < 1:
        head = f" after the LM head's {head_on_tpu_bytes / 2**20:.2f} MiB (run it on the host: " \
               "[edgetpu] lm_head = \"host\")" if head_on_tpu_bytes else ""
        raise BuildError(f"no decoder layer fits the Edge TPU's {capacity_bytes / 2**20:.2f} MiB on-chip cache{head}: "
                         f"one layer's int8 segments are {per_layer_bytes / 2**20:.2f} MiB")
    return int(n)


def config_layers_that_fit(config, capacity_bytes: int, head_on_host: bool) -> dict:
    """layers_that_fit for a Hugging Face Llama-family config (any object with its attributes), with
    the figures it used (recorded in the distill metrics)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    per = sum(layer_segment_bytes(config.hidden_size, heads, kv, head_dim, config.intermediate_size))
    head = head_bytes(config.hidden_size, config.vocab_size)
    n = layers_that_fit(per, capacity_bytes, 0 if head_on_host else head, config.num_hidden_layers)
    return {"layers": n, "per_layer_bytes": per, "lm_head_bytes": head, "lm_head": "host" if head_on_host else "tpu",
            "capacity_bytes": capacity_bytes, "on_chip_bytes": n * per + (0 if head_on_host else head)}
