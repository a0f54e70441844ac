"""Quantize an fp32 .tflite with Google's AI Edge Quantizer; one recipe per edgekit precision.

  fp32              copy
  fp16              float16 weights (float casting), float compute: the GPU delegate's format
  int8-weight-only  int8 channel-wise weights, dequantized before float compute
  int8-dynamic      int8 channel-wise weights, activations quantized on the fly (XNNPACK int8 kernels)
  int8-full         int8 weights and activations from calibration (static range): int8 in/out,
                    no float tensor left, as the Edge TPU requires
  int4-dynamic      4-bit weights in blocks of 32, activations quantized on the fly; the LM head and
                    weights that cannot be blocked stay int8-dynamic (edgekit.workshop.tflite_int4)
A causal LM whose LM head is its embedding table keeps that table once in int8 variants: the host
rows are read from the LM head's per-row int8 weights (quantize_decoder; edgekit.device.tflite_tied).
May import: stdlib, numpy, ai_edge_quantizer, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.core.errors import BuildError


def _weights(algorithm: str, bits: int, dtype: str, compute: str, explicit_dequantize: bool) -> list[dict]:
    return [{
        "regex": ".*",
        "operation": "*",
        "algorithm_key": algorithm,
        "op_config": {
            "weight_tensor_config": {"num_bits": bits, "symmetric": True, "granularity": "CHANNELWISE",
                                     "dtype": dtype},
            "compute_precision": compute,
            "explicit_dequantize": explicit_dequantize,
        },
    }]


def recipe_for(precision: str):
    from ai_edge_quantizer import recipe

    recipes = {
        "fp16": lambda: _weights("float_casting", 16, "FLOAT", "FLOAT", True),
        "int8-weight-only": recipe.weight_only_wi8_afp32,
        "int8-dynamic": recipe.dynamic_wi8_afp32,
        "int8-full": recipe.static_wi8_ai8,
    }
    if precision not in recipes:
        raise BuildError(f"precision '{precision}' is not available for TFLite; "
                         f"choose one of fp32, {', '.join(recipes)}, int4-dynamic")
    return recipes[precision]()


def _recipe(src: Path, precision: str) -> tuple[list, dict]:
    """(recipe, extra parameters): int4-dynamic's depends on the model's weights (tflite_int4)."""
    from edgekit.workshop import tflite_int4

    if precision != tflite_int4.PRECISION:
        return recipe_for(precision), {}
    from edgekit.workshop.tflite_export import HOST_FILE

    head = None
    if (src.parent / HOST_FILE).is_file():
        import numpy as np

        with np.load(src.parent / HOST_FILE) as z:
            head = tuple(z["embed"].shape)
    recipe, record = tflite_int4.int4_recipe(tflite_int4.fc_weights(src), head)
    return recipe, {"weight_blocks": record}


def quantize_host_tables(src: Path, dst: Path, precision: str) -> dict:
    """The embedding table in the variant's precision: float32 for fp32, float16 for fp16, otherwise
    (int8 and int4 variants) int8 with a float32 scale per row (symmetric). Other tables stay float32."""
    import numpy as np

    with np.load(src) as z:
        tables = {k: z[k] for k in z.files}
    embed = tables["embed"].astype(np.float32)
    if precision not in ("fp32", "fp16"):
        scale = np.maximum(np.abs(embed).max(axis=1), 1e-12) / 127.0
        tables["embed"] = np.clip(np.round(embed / scale[:, None]), -127, 127).astype(np.int8)
        tables["embed_scale"] = scale.astype(np.float32)
    elif precision == "fp16":
        tables["embed"] = embed.astype(np.float16)
    np.savez(dst, **tables)
    return {"embedding_dtype": str(tables["embed"].dtype)}


def quantize_tflite(src: Path, dst: Path, precision: str, calibration: dict | None = None) -> dict:
    """Write the `precision` variant of `src` (and of its host tables) beside `dst`.
    `calibration` = {signature: [feeds...]} for int8-full."""
    from edgekit.workshop.tflite_export import HOST_FILE

    host = {}
    if (src.parent / HOST_FILE).is_file():  # edgekit exports always have one; plain .tflite files may not
        host = quantize_host_tables(src.parent / HOST_FILE, dst.parent / HOST_FILE, precision)
    if precision == "fp32":
        shutil.copyfile(src, dst)
        return {"method": "none", **host}
    from ai_edge_quantizer import quantizer

    from edgekit.workshop.tflite_export import quiet

    q = quantizer.Quantizer(str(src))
    recipe, blocks = _recipe(src, precision)
    q.load_quantization_recipe(recipe)
    with quiet():
        result = None
        if q.need_calibration:
            if not calibration:
                raise BuildError(f"precision '{precision}' needs calibration data")
            result = _global_min_max(q, calibration)
        q.quantize(result, enable_progress_report=False).export_model(str(dst), overwrite=True)
    params = {"method": "ai-edge-quantizer", "recipe": precision, **host, **blocks}
    if precision == "int8-full":
        from edgekit.workshop.tflite_export import INT8_MASK_VALUE

        params["signature_update"] = {"mask_value": INT8_MASK_VALUE}
    if calibration:
        params["calibration_samples"] = {k: len(v) for k, v in calibration.items()}
    return params


def quantize_decoder(src: Path, dst: Path, precision: str, calibration: dict | None = None) -> dict:
    """quantize_tflite for a causal LM, then (int8 variants) the tied table stored once when the model's
    LM head is its embedding table (share_tied_embedding); the outcome is the `embedding_shared` record."""
    params = quantize_tflite(src, dst, precision, calibration)
    if precision in ("fp32", "fp16"):
        return params
    from edgekit.workshop.tflite_export import HOST_FILE

    record = share_tied_embedding(dst, dst.parent / HOST_FILE, src.parent / HOST_FILE)
    params["embedding_shared"] = record
    if record["shared"]:
        update = {k: record[k] for k in ("tensor", "shape", "bytes_saved")}
        params["signature_update"] = {**params.get("signature_update", {}), "embed_from_model": update}
    return params


def share_tied_embedding(model_path: Path, host_path: Path, fp32_host_path: Path) -> dict:
    """Drop `embed`/`embed_scale` from the int8 host tables at `host_path` when the quantized model holds
    the same table as its LM head: one int8 [vocab, hidden] weight buffer, symmetric with one scale per
    row, whose rows are within half a quantization step of the fp32 embedding (so it is a rounding of
    that very table: the model ties them). Returns {"shared": True, tensor, shape, bytes_saved, the
    difference to the host rows it replaces} or {"shared": False, "reason": ...}; the npz is untouched then."""
    import numpy as np

    from edgekit.device.tflite_inspect import load_model
    from edgekit.device.tflite_tied import buffer_rows, row_tensors

    with np.load(fp32_host_path) as z:
        table = z["embed"].astype(np.float32)
    model, data = load_model(model_path)
    found = row_tensors(model, table.shape)
    reason = None
    if not found:
        reason = f"no int8 {list(table.shape)} weight tensor (the LM head) in the model"
    elif len({t.buffer for t in found}) > 1:
        reason = f"{len({t.buffer for t in found})} int8 {list(table.shape)} weight buffers: which is the LM head is unclear"
    elif found[0].problem:
        reason = found[0].problem
    if reason:
        return {"shared": False, "reason": reason}
    head = found[0]
    codes = buffer_rows(data, model, head.buffer, table.shape)
    scales = model.Subgraphs(head.subgraph).Tensors(head.index).Quantization().ScaleAsNumpy().astype(np.float32)
    rows = codes.astype(np.float32) * scales[:, None]
    steps = float(np.max(np.abs(rows - table) / np.maximum(np.abs(scales), 1e-12)[:, None]))  # an all-zero row: scale ~0
    if steps > 0.51:
        return {"shared": False, "reason": f"the LM head is not the embedding table (they differ by up to {steps:.3g} "
                                           "quantization steps): the model does not tie them"}
    with np.load(host_path) as z:
        tables = {k: z[k] for k in z.files}
    old = tables.pop("embed").astype(np.float32) * tables.pop("embed_scale")[:, None]
    before = host_path.stat().st_size
    np.savez(host_path, **tables)
    return {"shared": True, "tensor": head.name, "shape": list(table.shape),
            "bytes_saved": before - host_path.stat().st_size, "max_quantization_steps_from_fp32": round(steps, 4),
            "max_abs_diff_vs_host_rows": float(np.max(np.abs(rows - old)))}


def _global_min_max(q, calibration: dict) -> dict:
    """Calibrate with the true min/max over all samples. Quantizer.calibrate() keeps a moving
    average of per-sample ranges, which clips the largest values: for an LM head that is the
    predicted token's logit (measured on stories260k: perplexity 5.97 -> 7.47 from the head alone).
    Uses the Calibrator directly because Quantizer.calibrate() does not expose the update rule
    (ai-edge-quantizer 0.10; the private attributes below are that version's)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    calib = calibrator.Calibrator(q._float_model_buffer, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate(calibration, q._recipe_manager)
    return calib.get_model_qsvs()


class _RecordingInterpreter:
    def __init__(self, interpreter):
        self.interpreter = interpreter
        self.samples: dict[str, list] = {}

    def get_signature_list(self):
        return self.interpreter.get_signature_list()

    def get_signature_runner(self, name):
        from edgekit.device.tflite_model import RecordingRunner

        return RecordingRunner(self.interpreter.get_signature_runner(name), self.samples.setdefault(name, []))


def calibration_feeds(fp32_path: Path, signature: dict, token_windows: list[list[int]],
                      decode_steps: int = 16, mask_value: float | None = None) -> dict:
    """Feeds for static-range calibration, recorded while the fp32 model reads real text: each window
    goes through `prefill` in chunks, then `decode_steps` tokens one at a time (so both signatures
    see realistic KV-cache contents and positions). `mask_value` overrides the signature's
    (full-int8 models are calibrated and run with a small one)."""
    import numpy as np

    from edgekit.device.tflite_model import TfliteCausalLM, make_interpreter
    from edgekit.workshop.tflite_export import HOST_FILE

    interp, _ = make_interpreter(fp32_path)
    rec = _RecordingInterpreter(interp)
    with np.load(fp32_path.parent / HOST_FILE) as z:
        tables = {k: z[k] for k in z.files}
    if mask_value is None:
        from edgekit.workshop.tflite_export import INT8_MASK_VALUE

        mask_value = INT8_MASK_VALUE
    lm = TfliteCausalLM(rec, dict(signature, mask_value=mask_value), tables)
    for window in token_windows:
        window = window[: lm.cache_length]
        cut = max(1, len(window) - decode_steps)
        cache = lm.new_cache()
        lm.forward(window[:cut], cache, last_only=True)  # through `prefill` (one row or all, by export)
        for tok in window[cut:]:
            lm.forward([tok], cache)
    return rec.samples
