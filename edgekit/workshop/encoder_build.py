"""Build stages for feature-extraction recipes (sentence encoders): distill -> export -> quantize ->
verify -> package, recorded like the causal-LM stages (see builder.py).

Verify runs the exported graph through edgekit/device/encoder_model.py and compares with the fp32
PyTorch student: cosine of each embedding (verify prompts + STS-B sentences), and STS-B Spearman of
the export vs the student's. The gate uses the target's min_cosine and min_spearman_ratio.
May import: stdlib, numpy, torch, edgekit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekit.workshop.distill_settings import budget_limits
from edgekit.workshop.pipeline import StageOutput
from edgekit.core.errors import BuildError


@dataclass(frozen=True)
class EncoderFormat:
    model_file: str
    runtime: str
    export: Callable
    quantize: Callable
    open_device_model: Callable
    summary: Callable
    describe: Callable | None
    calibrate: Callable | None
    extra_files: tuple[str, ...] = ("host_tables.npz",)
    extra_glob: str = ""
    export_options: Callable | None = None  # as FormatSupport's: the build stage reads it for every format


def encoder_support(fmt: str, layout: str = "single") -> EncoderFormat:
    from edgekit.workshop import encoder_export
    from edgekit.device import encoder_model

    if layout == "tpu-segments":
        from edgekit.workshop import coral_segments
        from edgekit.device.segmented_model import open_segmented_encoder

        return EncoderFormat("model.tflite", "litert-segments", coral_segments.export_encoder_segments,
                             coral_segments.quantize_segments, open_segmented_encoder, coral_segments.summary,
                             coral_segments.describe_segments, coral_segments.calibration_feeds_encoder_segments,
                             extra_glob="*.tflite")
    if fmt == "onnx":
        from edgekit.workshop.onnx_export import op_counts
        from edgekit.workshop.onnx_quantize import quantize_onnx
        from edgekit.workshop.tflite_quantize import quantize_host_tables

        def quantize(src, dst, precision, calibration=None):
            host = quantize_host_tables(src.parent / encoder_export.HOST_FILE, dst.parent / encoder_export.HOST_FILE,
                                        precision)
            return {**quantize_onnx(src, dst, precision, calibration), **host}

        return EncoderFormat("model.onnx", "onnxruntime", encoder_export.export_encoder_onnx, quantize,
                             encoder_model.open_onnx_encoder, lambda p: {"ops": op_counts(p)}, None, None)
    from edgekit.workshop.tflite_export import describe
    from edgekit.workshop.tflite_quantize import quantize_tflite
    from edgekit.device.tflite_inspect import summary

    return EncoderFormat("model.tflite", "litert", encoder_export.export_encoder_tflite, quantize_tflite,
                         encoder_model.open_tflite_encoder, summary, describe,
                         encoder_export.calibration_feeds_encoder)


def _teacher_path(ctx) -> Path:
    from edgekit.workshop.teacher import resolve_teacher

    t = ctx.recipe.teacher
    from_recipe = ctx.teacher_source == t["source"]
    return resolve_teacher(ctx.teacher_source, t["file"] if from_recipe else "", t["sha256"] if from_recipe else "")


def stage_distill(ctx, d: Path, outs: dict) -> StageOutput:
    from edgekit.workshop import textdata
    from edgekit.workshop.encoder import distill_encoder, load_encoder

    teacher = _teacher_path(ctx)
    student_dir = d / "student"
    if ctx.recipe.student["mode"] == "teacher":
        model, tok = load_encoder(teacher)
        model.save_pretrained(student_dir)
        tok.save_pretrained(student_dir)
        metrics: dict = {}
    else:
        if ctx.recipe.student["fold_dropped"]:
            raise BuildError("fold_dropped works on decoder (causal LM) students only; remove it from the encoder recipe")
        dcfg = ctx.recipe.data["distill"]
        (eval_file,) = textdata.expand_paths(ctx.recipe.data["data"]["eval"][:1])
        metrics = distill_encoder(
            teacher, list(ctx.recipe.student["keep_layers"]), textdata.expand_paths(ctx.recipe.data["data"]["train"]),
            eval_file, student_dir,
            **budget_limits(dcfg, ctx.max_minutes, ctx.max_steps, ctx.min_steps),
            batch_size=dcfg["batch_size"], learning_rate=dcfg["learning_rate"], log=ctx.log)
        model, tok = load_encoder(student_dir)
    if not (student_dir / "tokenizer.json").is_file():
        raise BuildError(f"tokenizer of {teacher} could not be converted to tokenizer.json")
    from edgekit.workshop.student import parameter_counts

    n = parameter_counts(model)["total"]
    return StageOutput(files={"student": student_dir},
                       values={"model": model, "tokenizer": tok, "teacher_path": str(teacher), "eos": []},
                       parameters={"mode": ctx.recipe.student["mode"], "teacher": ctx.teacher_source},
                       metrics={"student_parameters": n, "distill": metrics})


def _ids(tok, sentences: list[str], max_len: int) -> list[list[int]]:
    return [tok(s, truncation=True, max_length=max_len).input_ids for s in sentences]


def calibration_ids(ctx, tok, max_len: int, count: int = 64) -> list[list[int]]:
    from edgekit.workshop import textdata
    from edgekit.workshop.encoder import read_sentences

    sentences = [s for f in textdata.expand_paths(ctx.recipe.data["data"]["train"]) for s in read_sentences(f)]
    return _ids(tok, sentences[:count], max_len)


def _device_ids(device_tok, sentences, max_len):
    return [device_tok.encode(s)[:max_len] for s in sentences]


def verify_encoder(torch_model, tok, device_model, device_tok, sentences: list[str],
                   sts_rows: list[tuple[str, str, float]]) -> dict:
    import torch
    from scipy.stats import spearmanr

    from edgekit.workshop.encoder import embed

    max_len = device_model.max_sequence_length
    ref_ids = _ids(tok, sentences, max_len)
    dev_ids = _device_ids(device_tok, sentences, max_len)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(embed(torch_model, tok, sentences, max_len=max_len), dim=-1).numpy()
    got = device_model.embed(dev_ids)
    cos = (ref * got).sum(-1)
    metrics = {"tokenizer_match": ref_ids == dev_ids, "sentences": len(sentences),
               "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}
    if sts_rows:
        a = device_model.embed(_device_ids(device_tok, [r[0] for r in sts_rows], max_len))
        b = device_model.embed(_device_ids(device_tok, [r[1] for r in sts_rows], max_len))
        gold = [r[2] for r in sts_rows]
        dev_rho = float(spearmanr((a * b).sum(-1), gold).statistic)
        with torch.no_grad():
            ta = torch.nn.functional.normalize(embed(torch_model, tok, [r[0] for r in sts_rows], max_len), dim=-1)
            tb = torch.nn.functional.normalize(embed(torch_model, tok, [r[1] for r in sts_rows], max_len), dim=-1)
        ref_rho = float(spearmanr((ta * tb).sum(-1).numpy(), gold).statistic)
        metrics["sts_spearman"] = {"pairs": len(sts_rows), "reference": round(ref_rho, 4),
                                   "exported": round(dev_rho, 4), "ratio": round(dev_rho / ref_rho, 4)}
    return metrics


def encoder_gate_failures(metrics: dict, limits: dict) -> list[str]:
    fails = []
    if not metrics["tokenizer_match"]:
        fails.append("device tokenizer ids differ from the build tokenizer's")
    if metrics["min_cosine"] < limits["min_cosine"]:
        fails.append(f"min cosine to PyTorch {metrics['min_cosine']:.4f} < required {limits['min_cosine']:.4f}")
    sts = metrics.get("sts_spearman")
    if sts and sts["ratio"] < limits["min_spearman_ratio"]:
        fails.append(f"STS-B Spearman {sts['exported']:.4f} vs fp32 {sts['reference']:.4f} = {sts['ratio']:.4f}x "
                     f"< required {limits['min_spearman_ratio']:.4f}x")
    return fails


def stage_verify(ctx, d: Path, outs: dict) -> StageOutput:
    from edgekit.workshop import textdata
    from edgekit.workshop.encoder import read_sts
    from edgekit.workshop.verify import apply_gate
    from edgekit.device.tokenizer import TextTokenizer

    distill = outs["distill"]
    device_model = ctx.support.open_device_model(
        outs["quantize"].files["model"], {"model": {}, "signature": outs["quantize"].values["signature"]})
    device_tok = TextTokenizer.from_file(distill.files["student"] / "tokenizer.json", [])
    rows: list = []
    for p in textdata.expand_paths(ctx.recipe.data["data"]["eval"]):
        rows += read_sts(p) if p.suffix == ".csv" else []
    sentences = list(ctx.recipe.data["verify"]["prompts"]) + [s for r in rows[:32] for s in r[:2]]
    metrics = verify_encoder(distill.values["model"], distill.values["tokenizer"], device_model, device_tok,
                             sentences, rows)
    limits = ctx.target.verify
    from edgekit.workshop.reference_build import encoder_reference, write_reference
    from edgekit.device.reference import REFERENCE_FILE

    ref = encoder_reference(distill.values["model"], distill.values["tokenizer"], sentences,
                            device_model.max_sequence_length)
    ref_path = d / REFERENCE_FILE
    metrics["reference"] = write_reference(ref, device_model, device_tok, ctx.support.runtime, limits, ref_path, ctx.log)
    fails = encoder_gate_failures(metrics, limits)
    apply_gate(metrics, fails, limits, ctx.gate, ctx.log)
    return StageOutput(files={"reference": ref_path}, metrics=metrics, parameters={"sentences": len(sentences)})


def architecture(config) -> dict:
    return {"model_type": config.model_type, "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "attention_heads": config.num_attention_heads, "vocab_size": config.vocab_size}
