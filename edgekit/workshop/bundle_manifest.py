"""The bundle manifest written by `edgekit build` (edgekit/workshop/builder.py), assembled from the
stage outputs and records; edgekit/core/bundle.py writes it and owns its schema version.
May import: stdlib, edgekit.core, edgekit.device, edgekit.workshop; torch/transformers via modules.
"""

from __future__ import annotations

import datetime as dt

from edgekit import __version__
from edgekit.core.bundle import SCHEMA_VERSION
from edgekit.device.reference import REFERENCE_FILE

def bundle_manifest(ctx, outs: dict, records: list) -> dict:
    """The manifest of the bundle `edgekit build` writes: model, signature, tokenizer, provenance
    (recipe, teacher, stage records), verify metrics and gate. `ctx` is builder.BuildContext (not
    imported: builder imports this module), `outs` the stage outputs by name, `records` the stage records."""
    encoder = ctx.recipe.task == "feature-extraction"
    if encoder:
        from edgekit.workshop.encoder_build import architecture
    else:
        architecture = _architecture
    config = outs["distill"].values["model"].config
    return {
        "schema_version": SCHEMA_VERSION,
        "edgekit_version": __version__,
        "name": ctx.recipe.name,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": ctx.target.data,
        "task": ctx.recipe.task,
        "model": {
            "file": ctx.support.model_file,
            "format": ctx.target.format,
            "precision": ctx.precision,
            "runtime": ctx.support.runtime,
            "delegate": ctx.target.runtime["delegate"],
            "delegate_library": ctx.target.runtime.get("delegate_library", ""),
            "extra_files": sorted(p.name for k, p in outs["quantize"].files.items() if k != "model"),
            "accelerated_files": (outs["compile"].values["record"].get("compiler", {}).get("files", [])
                                  if "compile" in outs else []),
            "max_sequence_length": outs["export"].values["max_sequence_length"],
            "parameters": outs["distill"].metrics["student_parameters"],
            "architecture": architecture(config),
        },
        "signature": outs["quantize"].values["signature"],
        "tokenizer": {"file": "tokenizer.json", "eos_token_ids": outs["distill"].values["eos"]},
        **({} if encoder else {"generation_file": "generation.json",
                               "generation": outs["package"].values["generation"]}),
        "reference_file": REFERENCE_FILE,
        "provenance": {
            "teacher": {"source": ctx.teacher_source, "path": outs["distill"].values["teacher_path"]},
            "recipe": ctx.recipe.data,
            "stages": records,
        },
        "metrics": {"verify": outs["verify"].metrics,
                    **({"edgetpu": outs["compile"].values["record"]} if "compile" in outs else {})},
        "gate": outs["verify"].metrics["gate"],
    }


def _architecture(config) -> dict:
    """A decoder's shape for the manifest: layers, widths, heads, KV heads, vocabulary."""
    from edgekit.workshop.onnx_export import kv_shape

    layers, kv_heads, head_dim = kv_shape(config)
    return {"model_type": config.model_type, "layers": layers, "hidden_size": config.hidden_size,
            "attention_heads": config.num_attention_heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "vocab_size": config.vocab_size}
