"""Predicted time and energy per token of an Edge TPU segmented bundle, against the board's own CPU,
and a plain verdict. Every figure is a prediction (no Edge TPU here) and says so.

Units: seconds, bytes, bytes/s, watts, joules, multiply-accumulates (MACs). Model, per token:
  TPU path = sum over segments of (link invoke overhead + streamed parameter bytes / link bandwidth
             + MACs / TPU MAC rate) + host work (per segment call, measured on the reference machine,
             divided by the board's host_speed_vs_reference)
             + host matmul: int8 weight bytes the host reads per token outside the segments (an LM
             head on the host, recipe [edgetpu] lm_head = "host") / (board streaming-copy bandwidth
             x CPU_EFFICIENCY), the CPU path's own rate for the same bytes
  cached   = greedy fill of the on-chip parameter cache in the compiler's (command-line) order: a
             segment stays on chip when all its parameters fit what is left, else it streams every call
  CPU path = int8 weight bytes read per token (segments + host matmul) / (board streaming-copy bandwidth x CPU_EFFICIENCY)
             + the runtime's fixed cost per token (measured here), divided by host_speed_vs_reference
  energy   = seconds x watts: TPU path board idle + one busy core + the TPU's watts (the host matmul's
             seconds at full load + the TPU's watts); CPU path the board's full-load watts (decode uses every core)
Figures come from accelerators/edgetpu.toml and boards/*.toml, each with its source.
May import: stdlib, edgekit.core, edgekit.device.speed.
"""

from __future__ import annotations

from edgekit.core.errors import ConfigError
from edgekit.device import speed

# The arm-cpu (TFLite int8) decode efficiency, measured on the reference machine: one record, in
# edgekit/device/speed_data.toml (0.88 of the streaming-copy roofline, docs/benchmarks.md), shared with
# `edgekit inspect --board`.
_ARM = speed.runtime_efficiency("tflite", "int8-dynamic")
CPU_EFFICIENCY = _ARM["decode_efficiency"]
CPU_EFFICIENCY_SOURCE = _ARM["decode_source"]
# The runtime's fixed per-token cost (stories260k arm-cpu, measured on the reference machine; same record),
# scaled to a board by host_speed_vs_reference.
CPU_OVERHEAD_SECONDS_PER_TOKEN = _ARM["decode_fixed_seconds_per_token"]


def cache_fill(parameter_bytes: list[int], capacity_bytes: int) -> list[bool]:
    """Which segments (in compiler order) keep their parameters on chip: greedy, whole segments."""
    left, cached = capacity_bytes, []
    for n in parameter_bytes:
        fits = n <= left
        cached.append(fits)
        left -= n if fits else 0
    return cached


def host_matmul_seconds(weight_bytes: int, board) -> float:
    """A memory-bound int8 matmul on the board's CPU (the host LM head): bytes / (bandwidth x CPU_EFFICIENCY)."""
    if not weight_bytes:
        return 0.0
    return speed.cpu_seconds_per_token(weight_bytes, board, CPU_EFFICIENCY)["memory_seconds"]


def tpu_seconds_per_token(segments: list[dict], link, accelerator, host_speed: float,
                          host_matmul: float = 0.0) -> dict:
    """segments: [{"file", "parameter_bytes", "macs"}] in compiler order, one call each per token;
    host_matmul: seconds of host int8 matmul per token (host_matmul_seconds)."""
    if host_speed <= 0:
        raise ConfigError("the board has no performance.host_speed_vs_reference; add it to its TOML file")
    cached = cache_fill([s["parameter_bytes"] for s in segments], accelerator.on_chip_parameter_bytes)
    streamed = sum(s["parameter_bytes"] for s, c in zip(segments, cached) if not c)
    invoke = len(segments) * link.invoke_overhead_seconds
    transfer = streamed / link.bytes_per_second
    compute = sum(s["macs"] for s in segments) / accelerator.macs_per_second
    host = len(segments) * accelerator.host_seconds_per_segment_call / host_speed
    return {"seconds": invoke + transfer + compute + host + host_matmul, "invoke_seconds": invoke,
            "transfer_seconds": transfer, "compute_seconds": compute, "host_seconds": host,
            "host_matmul_seconds": host_matmul,
            "segments": len(segments), "cached_segments": sum(cached),
            "cached_bytes": sum(s["parameter_bytes"] for s, c in zip(segments, cached) if c),
            "streamed_bytes": streamed}


def cpu_seconds_per_token(weight_bytes: int, board) -> dict:
    """Memory-bound decode of the same int8 weights on the board's CPU (arm-cpu bundle), plus the
    runtime's fixed per-token cost: speed.cpu_seconds_per_token with the arm-cpu efficiency."""
    if board.host_speed_vs_reference <= 0:
        raise ConfigError(f"board '{board.name}' has no performance.memory_bandwidth_bytes_per_second / "
                          "host_speed_vs_reference; add them to its TOML file")
    return speed.cpu_seconds_per_token(weight_bytes, board, CPU_EFFICIENCY, CPU_OVERHEAD_SECONDS_PER_TOKEN)


def _side(seconds: float, watts: float, source: str) -> dict:
    return {"tokens_per_second": 1.0 / seconds, "seconds_per_token": seconds, "watts": watts,
            "joules_per_token": seconds * watts, "measured": False, "source": source}


def predict(segments: list[dict], board, link, accelerator, host_weight_bytes: int = 0) -> dict:
    """The full record: TPU side, CPU side, ratio and the verdict sentence (all predicted).
    host_weight_bytes: int8 weights the host reads per token outside the segments (host LM head)."""
    host_mm = host_matmul_seconds(host_weight_bytes, board)
    tpu = dict(tpu_seconds_per_token(segments, link, accelerator, board.host_speed_vs_reference, host_mm),
               host_weight_bytes=host_weight_bytes)
    cpu = cpu_seconds_per_token(sum(s["parameter_bytes"] for s in segments) + host_weight_bytes, board)
    one_core = board.idle_watts + (board.full_load_watts - board.idle_watts) / max(board.cpu_cores, 1)
    joules = (tpu["seconds"] - host_mm) * (one_core + accelerator.watts) + host_mm * (board.full_load_watts + accelerator.watts)
    tpu_side = _side(tpu["seconds"], joules / tpu["seconds"],
                     f"predicted: {board.name} idle + one busy core + Edge TPU {accelerator.watts:g} W"
                     + (", full load during the host matmul" if host_mm else ""))
    cpu_side = _side(cpu["seconds"], board.full_load_watts, f"predicted: {board.name} full load")
    ratio = tpu_side["tokens_per_second"] / cpu_side["tokens_per_second"]
    return {"board": board.name, "link": link.name, "predicted": True, "tpu": dict(tpu_side, breakdown=tpu),
            "cpu": dict(cpu_side, breakdown=cpu), "tpu_vs_cpu": ratio, "verdict": verdict_text(ratio, board.name)}


def verdict_text(ratio: float, board_name: str) -> str:
    use = "use coral" if ratio >= 1.0 else "use arm-cpu"
    return f"Edge TPU predicted {ratio:.2g}x the {board_name} CPU for this model: {use}"


def segments_from_record(edgetpu_record: dict) -> list[dict]:
    """Per-file parameter bytes and TPU MACs from a manifest's metrics.edgetpu record, in its order."""
    per_file: dict[str, dict] = {}
    for p in edgetpu_record.get("prediction", []):
        s = per_file.setdefault(p.get("file", p["subgraph"]), {"file": p.get("file", p["subgraph"]),
                                                               "parameter_bytes": 0, "macs": 0})
        s["parameter_bytes"] += p["totals"]["parameter_bytes_on_tpu"]
        s["macs"] += p["totals"]["macs_on_tpu"]
    return list(per_file.values())


def verdict_table(segments: list[dict], boards: list, links: list[str], accelerator,
                  host_weight_bytes: int = 0) -> list[dict]:
    """predict() for every board x link pair (boards without performance figures are skipped)."""
    rows = []
    for b in boards:
        if b.memory_bandwidth_bytes_per_second <= 0 or b.host_speed_vs_reference <= 0:
            continue
        rows += [predict(segments, b, accelerator.link(n), accelerator, host_weight_bytes) for n in links]
    return rows


def summary_line(rec: dict) -> str:
    t, c = rec["tpu"], rec["cpu"]
    return (f"predicted on {rec['board']} + Edge TPU over {rec['link']}: {t['tokens_per_second']:.3g} tokens/s, "
            f"{t['joules_per_token']:.3g} J/token; {rec['board']} CPU (arm-cpu): {c['tokens_per_second']:.3g} "
            f"tokens/s, {c['joules_per_token']:.3g} J/token")


DEFAULT_BOARD, DEFAULT_LINK = "rpi5", "usb3"


def compact(rec: dict) -> dict:
    """One row of the manifest's verdict table (predicted figures only, with their sources)."""
    t, c = rec["tpu"], rec["cpu"]
    return {"board": rec["board"], "link": rec["link"], "predicted": True,
            "tpu_tokens_per_second": round(t["tokens_per_second"], 4), "tpu_joules_per_token": t["joules_per_token"],
            "cpu_tokens_per_second": round(c["tokens_per_second"], 4), "cpu_joules_per_token": c["joules_per_token"],
            "tpu_vs_cpu": round(rec["tpu_vs_cpu"], 5), "verdict": rec["verdict"],
            "cached_segments": t["breakdown"]["cached_segments"], "streamed_bytes": t["breakdown"]["streamed_bytes"],
            "cached_bytes": t["breakdown"]["cached_bytes"], "host_weight_bytes": t["breakdown"]["host_weight_bytes"]}


def verdict_record(edgetpu_record: dict) -> dict:
    """The verdict a coral build records: rpi5 over USB 3.0 first, then every board x link pair."""
    from edgekit.core.accelerators import load_accelerator
    from edgekit.core.boards import list_boards

    acc = load_accelerator("edgetpu")
    segments = segments_from_record(edgetpu_record)
    rows = [compact(r) for r in verdict_table(segments, list_boards(), sorted(acc.links), acc,
                                              edgetpu_record.get("host_weight_bytes", 0))]
    first = next(r for r in rows if r["board"] == DEFAULT_BOARD and r["link"] == DEFAULT_LINK)
    return {"predicted": True, "default": first, "table": rows, "cpu_efficiency": CPU_EFFICIENCY,
            "cpu_efficiency_source": CPU_EFFICIENCY_SOURCE, "cache_rule": acc.cache_rule,
            "sources": "accelerators/edgetpu.toml and boards/*.toml (each figure with its source)"}


def verdict_block(v: dict, body: list[str]) -> str:
    """A verdict record `v` as text: the predicted-figures header, `body` (the TPU and CPU lines of its
    unit: tokens or sentences), then the verdict itself."""
    return "\n".join([f"== verdict (predicted: no Edge TPU measured; figures and sources in "
                      f"accelerators/edgetpu.toml, boards/{v['board']}.toml)", *body, f"  {v['verdict']}"])


def verdict_lines(v: dict) -> str:
    """The human-readable verdict block of a decoder (per token); every figure says predicted."""
    t, c, bd = v["tpu"], v["cpu"], v["tpu"]["breakdown"]
    host_mm = (f" + host int8 matmul {bd['host_weight_bytes'] / 2**20:.3g} MiB {1e3 * bd['host_matmul_seconds']:.3g} ms"
               if bd.get("host_weight_bytes") else "")
    return verdict_block(v, [
        f"  Edge TPU over {v['link']} on {v['board']}: {t['tokens_per_second']:.3g} tokens/s predicted, "
        f"{t['joules_per_token']:.3g} J/token predicted ({t['watts']:.3g} W)",
        f"    per token: {bd['segments']} invokes {1e3 * bd['invoke_seconds']:.3g} ms + streamed "
        f"{bd['streamed_bytes'] / 2**20:.3g} MiB {1e3 * bd['transfer_seconds']:.3g} ms + TPU compute "
        f"{1e3 * bd['compute_seconds']:.3g} ms + host {1e3 * bd['host_seconds']:.3g} ms{host_mm}; "
        f"{bd['cached_segments']} of {bd['segments']} segments cached on chip ({bd['cached_bytes'] / 2**20:.3g} MiB)",
        f"  {v['board']} CPU (arm-cpu bundle, same weights): {c['tokens_per_second']:.3g} tokens/s predicted, "
        f"{c['joules_per_token']:.3g} J/token predicted ({c['watts']:.3g} W)",
    ])
