"""Predicted embeddings/s of a sentence-form Edge TPU encoder bundle (its segments take `rows` tokens
per invoke, edgekit/workshop/coral_segments.py) against the board's CPU running the arm-cpu bundle of
the same student, and a plain verdict. Every figure is a prediction (no Edge TPU here) and says so.

Units: seconds, bytes, bytes/s, watts, joules, multiply-accumulates (MACs). Per sentence of n tokens:
  calls    = ceil(n / rows) per segment (one sentence alone; rows of a batch's sentences can share calls)
  TPU path = calls x sum over segments of (link invoke overhead
               + (int8 activations in and out + streamed parameter bytes) / link bandwidth
               + MACs of one call / TPU MAC rate)
             + host work: n x layers x host_seconds_per_encoder_token_layer (LayerNorms, GELU,
               attention, per-row scaling; measured on the reference machine) / host_speed_vs_reference
  CPU path = max(n x MACs per token / (prefill efficiency x board int8 MAC/s),
                 int8 weight bytes / (streaming-copy bandwidth x decode efficiency))
             + the runtime's fixed cost per call / host_speed_vs_reference: the whole sentence in one
             graph, compute- or memory-bound, the efficiencies measured for TFLite int8 (speed_data.toml)
  energy   = seconds x watts, as in coral_latency (TPU: board idle + one busy core + the TPU's watts;
             CPU: the board's full-load watts)
May import: stdlib, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import math

from edgekit.core.errors import ConfigError
from edgekit.device import coral_latency, speed

SENTENCE_TOKENS = 32  # the sentence the verdict is for: about an STS-B sentence plus special tokens, rounded up
_ARM = speed.runtime_efficiency("tflite", "int8-dynamic")


def sentence_segments(record: dict, signature: dict) -> list[dict]:
    """Per file: parameter bytes and MACs of ONE call (from the manifest's Edge TPU prediction) and the
    int8 activation bytes one call moves (rows x (input width + output widths), from the signature)."""
    rows = int(signature["rows"])
    io = {s["file"]: rows * (int(s["in_features"]) + sum(int(o) for o in s["out_features"]))
          for s in signature["segments"]}
    segs = coral_latency.segments_from_record(record)
    order = [s["file"] for s in signature["segments"]]
    segs.sort(key=lambda s: order.index(s["file"]) if s["file"] in order else len(order))
    return [dict(s, io_bytes=io.get(s["file"], 0)) for s in segs]


def tpu_seconds_per_sentence(segments: list[dict], rows: int, tokens: int, layers: int, link, accelerator,
                             host_speed: float) -> dict:
    if host_speed <= 0:
        raise ConfigError("the board has no performance.host_speed_vs_reference; add it to its TOML file")
    calls = math.ceil(tokens / rows)
    cached = coral_latency.cache_fill([s["parameter_bytes"] for s in segments], accelerator.on_chip_parameter_bytes)
    streamed = sum(s["parameter_bytes"] for s, c in zip(segments, cached) if not c)
    io = sum(s["io_bytes"] for s in segments)
    invokes = calls * len(segments)
    parts = {"invoke_seconds": invokes * link.invoke_overhead_seconds,
             "transfer_seconds": calls * (io + streamed) / link.bytes_per_second,
             "compute_seconds": calls * sum(s["macs"] for s in segments) / accelerator.macs_per_second,
             "host_seconds": tokens * layers * accelerator.host_seconds_per_encoder_token_layer / host_speed}
    return dict(parts, seconds=sum(parts.values()), invokes=invokes, calls_per_segment=calls, rows=rows,
                tokens=tokens, segments=len(segments), cached_segments=sum(cached), streamed_bytes=streamed,
                activation_bytes=calls * io,
                cached_bytes=sum(s["parameter_bytes"] for s, c in zip(segments, cached) if c))


def cpu_seconds_per_sentence(weight_bytes: int, macs_per_token: int, tokens: int, board) -> dict:
    if board.host_speed_vs_reference <= 0 or board.int8_macs_per_second <= 0:
        raise ConfigError(f"board '{board.name}' lacks performance figures (int8_macs_per_second, "
                          "host_speed_vs_reference); add them to its TOML file")
    compute = tokens * macs_per_token / (_ARM["prefill_efficiency"] * board.int8_macs_per_second)
    memory = weight_bytes / (board.memory_bandwidth_bytes_per_second * _ARM["decode_efficiency"])
    fixed = _ARM["decode_fixed_seconds_per_token"] / board.host_speed_vs_reference
    return {"seconds": max(compute, memory) + fixed, "compute_seconds": compute, "memory_seconds": memory,
            "fixed_seconds": fixed, "macs": tokens * macs_per_token,
            "efficiency_source": _ARM["prefill_source"]}


def _side(seconds: float, tokens: int, watts: float, source: str) -> dict:
    return {"embeddings_per_second": 1.0 / seconds, "tokens_per_second": tokens / seconds,
            "seconds_per_embedding": seconds, "watts": watts, "joules_per_embedding": seconds * watts,
            "joules_per_token": seconds * watts / tokens, "measured": False, "source": source}


def predict(segments: list[dict], signature: dict, board, link, accelerator, tokens: int = SENTENCE_TOKENS) -> dict:
    """TPU side, CPU side, ratio and verdict for one sentence of `tokens` tokens (all predicted)."""
    layers, hidden = int(signature["layers"]), int(signature["hidden_size"])
    rows = int(signature["rows"])
    tpu = tpu_seconds_per_sentence(segments, rows, tokens, layers, link, accelerator, board.host_speed_vs_reference)
    per_token_macs = sum(s["macs"] for s in segments) // rows + 2 * layers * hidden * tokens  # + attention
    cpu = cpu_seconds_per_sentence(sum(s["parameter_bytes"] for s in segments), per_token_macs, tokens, board)
    one_core = board.idle_watts + (board.full_load_watts - board.idle_watts) / max(board.cpu_cores, 1)
    t = _side(tpu["seconds"], tokens, one_core + accelerator.watts,
              f"predicted: {board.name} idle + one busy core + Edge TPU {accelerator.watts:g} W")
    c = _side(cpu["seconds"], tokens, board.full_load_watts, f"predicted: {board.name} full load")
    ratio = t["embeddings_per_second"] / c["embeddings_per_second"]
    use = "use coral" if ratio >= 1.0 else "use arm-cpu"
    return {"board": board.name, "link": link.name, "predicted": True, "unit": "sentence", "tokens": tokens,
            "tpu": dict(t, breakdown=tpu), "cpu": dict(c, breakdown=cpu), "tpu_vs_cpu": ratio,
            "verdict": f"Edge TPU predicted {ratio:.2g}x the {board.name} CPU for {tokens}-token sentences: {use}"}


def compact(rec: dict) -> dict:
    """One row of the manifest's verdict table; the per-token keys of coral_latency.compact stay."""
    t, c = rec["tpu"], rec["cpu"]
    return {"board": rec["board"], "link": rec["link"], "predicted": True, "unit": "sentence",
            "tokens_per_sentence": rec["tokens"],
            "tpu_embeddings_per_second": round(t["embeddings_per_second"], 3),
            "cpu_embeddings_per_second": round(c["embeddings_per_second"], 3),
            "tpu_joules_per_embedding": t["joules_per_embedding"], "cpu_joules_per_embedding": c["joules_per_embedding"],
            "tpu_tokens_per_second": round(t["tokens_per_second"], 4), "tpu_joules_per_token": t["joules_per_token"],
            "cpu_tokens_per_second": round(c["tokens_per_second"], 4), "cpu_joules_per_token": c["joules_per_token"],
            "tpu_vs_cpu": round(rec["tpu_vs_cpu"], 5), "verdict": rec["verdict"],
            "invokes_per_sentence": t["breakdown"]["invokes"],
            "cached_segments": t["breakdown"]["cached_segments"], "streamed_bytes": t["breakdown"]["streamed_bytes"]}


def verdict_table(segments: list[dict], signature: dict, boards: list, links: list[str], accelerator) -> list[dict]:
    rows = []
    for b in boards:
        if b.memory_bandwidth_bytes_per_second <= 0 or b.host_speed_vs_reference <= 0 or b.int8_macs_per_second <= 0:
            continue
        rows += [predict(segments, signature, b, accelerator.link(n), accelerator) for n in links]
    return rows


def verdict_record(edgetpu_record: dict, signature: dict) -> dict:
    """The verdict a sentence-form coral build records: rpi5 over USB 3.0 first, then every board x link."""
    from edgekit.core.accelerators import load_accelerator
    from edgekit.core.boards import list_boards

    acc = load_accelerator("edgetpu")
    segs = sentence_segments(edgetpu_record, signature)
    rows = [compact(r) for r in verdict_table(segs, signature, list_boards(), sorted(acc.links), acc)]
    first = next(r for r in rows if r["board"] == coral_latency.DEFAULT_BOARD and r["link"] == coral_latency.DEFAULT_LINK)
    return {"predicted": True, "unit": "sentence", "default": first, "table": rows,
            "cpu_efficiency": {"prefill": _ARM["prefill_efficiency"], "decode": _ARM["decode_efficiency"]},
            "cpu_efficiency_source": _ARM["prefill_source"], "cache_rule": acc.cache_rule,
            "host_seconds_source": acc.host_seconds_per_encoder_token_layer_source,
            "sources": "accelerators/edgetpu.toml and boards/*.toml (each figure with its source)"}


def verdict_lines(v: dict) -> str:
    """The human-readable verdict block for one board x link; every figure says predicted."""
    t, c, bd = v["tpu"], v["cpu"], v["tpu"]["breakdown"]
    return coral_latency.verdict_block(v, [
        f"  Edge TPU over {v['link']} on {v['board']}: {t['embeddings_per_second']:.3g} embeddings/s predicted "
        f"({v['tokens']}-token sentences, {t['tokens_per_second']:.3g} tokens/s), "
        f"{t['joules_per_embedding']:.3g} J/embedding predicted ({t['watts']:.3g} W)",
        f"    per sentence: {bd['invokes']} invokes ({bd['segments']} segments x {bd['calls_per_segment']} call(s) of "
        f"{bd['rows']} rows) {1e3 * bd['invoke_seconds']:.3g} ms + link {bd['activation_bytes'] / 1024:.3g} KiB "
        f"activations, {bd['streamed_bytes'] / 2**20:.3g} MiB streamed {1e3 * bd['transfer_seconds']:.3g} ms + TPU "
        f"compute {1e3 * bd['compute_seconds']:.3g} ms + host {1e3 * bd['host_seconds']:.3g} ms; "
        f"{bd['cached_segments']} of {bd['segments']} segments cached on chip ({bd['cached_bytes'] / 2**20:.3g} MiB)",
        f"  {v['board']} CPU (arm-cpu bundle, same student, whole sentence per call): "
        f"{c['embeddings_per_second']:.3g} embeddings/s predicted ({c['tokens_per_second']:.3g} tokens/s), "
        f"{c['joules_per_embedding']:.3g} J/embedding predicted ({c['watts']:.3g} W)",
    ])
