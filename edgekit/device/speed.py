"""Predicted prefill and decode tokens/s of a bundle on a board (every figure `predicted`, never measured).

Model (units: bytes, bytes/s, multiply-accumulates (MACs), MAC/s, seconds, tokens/s):
  decode  seconds/token = weight bytes read per token / (board streaming-copy bandwidth x decode efficiency)
                          + the runtime's fixed seconds per token (measured on the reference machine with a
                            tiny model) / the board's host_speed_vs_reference, where measured
          decode efficiency: the fraction of that roofline the bundle's runtime reached when measured
          (speed_data.toml, with date, commit and machine). Without the fixed cost a tiny model would be
          predicted thousands of tokens/s; with it a large one is counted about 2% slow (it is in both).
  prefill tokens/s      = prefill efficiency x board int8 peak MAC/s / MACs per prompt token
          MACs per prompt token = parameters - vocab x hidden (the embedding is a lookup; the LM head runs
          for the last prompt token only); attention over the prompt is left out (under 3% at 128 tokens
          for the SmolLM2 student). Prefill efficiency: measured fraction of the reference machine's int8 peak.
Weight bytes read per token: every .tflite file of the bundle (TFLite; a tied embedding / LM head is one
tensor, stored once), or the ONNX initializers not read only by Gather (edgekit/device/onnx_weights.py).
Board figures: boards/*.toml [performance], each with its source. May import: stdlib, edgekit.core,
edgekit.device.onnx_weights.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from edgekit.core.errors import ConfigError
from edgekit.core.tomlfiles import read

DATA = Path(__file__).with_name("speed_data.toml")


@lru_cache(maxsize=None)
def speed_data() -> dict:
    return read(DATA)


def runtime_efficiency(fmt: str, precision: str) -> dict | None:
    """The measured record ({decode_efficiency, decode_source, prefill_efficiency?, prefill_source?}) for a
    model format and precision, or None where none was measured."""
    for r in speed_data().get("runtime", []):
        if r["format"] == fmt and r["precision"] == precision:
            return r
    return None


def reference_points(board_name: str) -> list[dict]:
    """Published figures of other engines on this board (with URLs), in file order."""
    return [r for r in speed_data().get("reference", []) if r["board"] == board_name]


def cpu_seconds_per_token(weight_bytes: int, board, efficiency: float, overhead_seconds: float = 0.0) -> dict:
    """Memory-bound decode on the board's CPU: weight_bytes / (bandwidth x efficiency), plus a fixed
    per-token cost (seconds on the reference machine, divided by the board's host_speed_vs_reference)."""
    bw = board.memory_bandwidth_bytes_per_second
    if bw <= 0 or (overhead_seconds and board.host_speed_vs_reference <= 0):
        raise ConfigError(f"board '{board.name}' has no performance.memory_bandwidth_bytes_per_second / "
                          "host_speed_vs_reference; add them to its TOML file")
    if efficiency <= 0:
        raise ConfigError(f"decode efficiency must be positive, got {efficiency!r}")
    memory = weight_bytes / (bw * efficiency)
    fixed = overhead_seconds / board.host_speed_vs_reference if overhead_seconds else 0.0
    return {"seconds": memory + fixed, "memory_seconds": memory, "fixed_seconds": fixed, "weight_bytes": weight_bytes,
            "bandwidth_bytes_per_second": bw, "efficiency": efficiency}


def prefill_tokens_per_second(macs_per_token: int, board, efficiency: float) -> float:
    """efficiency x the board's int8 peak MAC/s / MACs per prompt token."""
    if board.int8_macs_per_second <= 0:
        raise ConfigError(f"board '{board.name}' has no performance.int8_macs_per_second; add it to its TOML file")
    return efficiency * board.int8_macs_per_second / macs_per_token


def weight_bytes_per_token(root: Path, manifest: dict) -> int:
    """Bytes of weights one decode step reads (see the module docstring)."""
    model = manifest["model"]
    if model["format"] == "onnx":
        from edgekit.device.onnx_weights import decode_weight_bytes

        return decode_weight_bytes(Path(root) / model["file"])
    return sum(f["bytes"] for f in manifest["files"] if f["path"].endswith(".tflite"))


def macs_per_prompt_token(manifest: dict) -> int | None:
    """parameters - vocab x hidden, or None when the manifest lacks them."""
    model = manifest["model"]
    arch = model.get("architecture", {})
    if "parameters" not in model or "vocab_size" not in arch or "hidden_size" not in arch:
        return None
    return model["parameters"] - arch["vocab_size"] * arch["hidden_size"]


def predict(root: Path, manifest: dict, board) -> dict:
    """The record `edgekit inspect --board` prints: bytes and MACs per token, predicted prefill and decode
    tokens/s (or why not), each with its efficiency source, and the board's reference points."""
    model = manifest["model"]
    per_token = weight_bytes_per_token(root, manifest)
    macs = macs_per_prompt_token(manifest)
    eff = runtime_efficiency(model["format"], model["precision"])
    rec = {"board": board.name, "bundle": manifest.get("name"), "format": model["format"],
           "precision": model["precision"], "predicted": True, "measured": False,
           "weight_bytes_per_token": per_token, "macs_per_prompt_token": macs,
           "memory_bandwidth_bytes_per_second": board.memory_bandwidth_bytes_per_second,
           "int8_macs_per_second": board.int8_macs_per_second, "board_source": board.performance_source,
           "reference_points": reference_points(board.name)}
    rec["decode"] = _decode(per_token, board, eff, model)
    rec["prefill"] = _prefill(macs, board, eff, model)
    return rec


def _decode(per_token: int, board, eff: dict | None, model: dict) -> dict:
    roofline = board.memory_bandwidth_bytes_per_second / per_token if per_token else None
    if eff is None or not roofline:
        why = (f"no measured decode efficiency for {model['format']} {model['precision']}" if eff is None
               else "no weight bytes found")
        return {"tokens_per_second": None, "roofline_tokens_per_second": roofline, "reason": why}
    fixed = eff.get("decode_fixed_seconds_per_token", 0.0) if board.host_speed_vs_reference > 0 else 0.0
    sec = cpu_seconds_per_token(per_token, board, eff["decode_efficiency"], fixed)
    return {"tokens_per_second": 1.0 / sec["seconds"], "roofline_tokens_per_second": roofline,
            "efficiency": eff["decode_efficiency"], "efficiency_source": eff["decode_source"],
            "fixed_seconds_per_token": sec["fixed_seconds"], "fixed_source": eff.get("decode_fixed_source") if fixed
            else "none measured for this runtime (or the board has no host_speed_vs_reference)"}


def _prefill(macs: int | None, board, eff: dict | None, model: dict) -> dict:
    if eff is None or "prefill_efficiency" not in eff:
        return {"tokens_per_second": None,
                "reason": f"no measured prefill efficiency for {model['format']} {model['precision']}"}
    if not macs or board.int8_macs_per_second <= 0:
        return {"tokens_per_second": None, "reason": "no MACs per token in the manifest" if not macs
                else f"board '{board.name}' has no int8_macs_per_second"}
    return {"tokens_per_second": prefill_tokens_per_second(macs, board, eff["prefill_efficiency"]),
            "efficiency": eff["prefill_efficiency"], "efficiency_source": eff["prefill_source"]}
