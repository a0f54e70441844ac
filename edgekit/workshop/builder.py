"""`edgekit build`: distill -> export -> quantize -> verify -> package, as recorded stages.

Export comes before quantize here (the design lists quantize first) because post-training
quantizers for both ONNX Runtime and LiteRT operate on the exported graph; the stage records
make the real order explicit in every manifest.

Per-format code is chosen from the FORMATS registry by the target's `format` value.
May import: stdlib, edgekit.core, edgekit.device, edgekit.workshop; torch/transformers via modules.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.core.bundle import Bundle, staging_dir, write_bundle
from edgekit.core.errors import BuildError
from edgekit.core.recipes import Recipe
from edgekit.core.targets import Target
from edgekit.device.reference import REFERENCE_FILE
from edgekit.workshop.bundle_manifest import bundle_manifest
from edgekit.workshop.pipeline import Stage, StageOutput, run_stages


@dataclass(frozen=True)
class FormatSupport:
    """How one file format is exported, quantized, described and opened on the device."""

    model_file: str
    runtime: str
    export: Callable  # (model, path, max_sequence_length, shapes) -> signature dict
    quantize: Callable  # (src, dst, precision, calibration) -> parameters dict
    open_device_model: Callable  # (path, manifest-like dict) -> device model
    summary: Callable  # (path) -> {"ops": {op: count}, ...}
    extra_files: tuple[str, ...] = ()  # written beside the model by export/quantize, shipped too
    describe: Callable | None = None  # (quantized path) -> signature fields that quantization changes
    calibrate: Callable | None = None  # (fp32 path, signature, token windows) -> calibration feeds
    extra_glob: str = ""  # further files beside the model, by pattern (model-dependent file sets)
    export_options: Callable | None = None  # (recipe) -> keyword arguments of export (the recipe's say in it)


def _onnx_support() -> FormatSupport:
    from edgekit.workshop import onnx_export, onnx_quantize
    from edgekit.device.onnx_model import open_onnx

    return FormatSupport("model.onnx", "onnxruntime", onnx_export.export_onnx, onnx_quantize.quantize_onnx,
                         open_onnx, lambda p: {"ops": onnx_export.op_counts(p)})


def _tflite_support() -> FormatSupport:
    from edgekit.workshop import tflite_export, tflite_quantize
    from edgekit.device.tflite_inspect import summary
    from edgekit.device.tflite_model import open_tflite

    return FormatSupport("model.tflite", "litert", tflite_export.export_tflite, tflite_quantize.quantize_decoder,
                         open_tflite, summary, extra_files=(tflite_export.HOST_FILE,),
                         describe=tflite_export.describe, calibrate=tflite_quantize.calibration_feeds)


def _tpu_segments_support() -> FormatSupport:
    from edgekit.workshop import coral_segments
    from edgekit.device.segmented_model import open_segmented

    return FormatSupport("model.tflite", "litert-segments", coral_segments.export_segments,
                         coral_segments.quantize_segments, open_segmented, coral_segments.summary,
                         extra_files=(coral_segments.HOST_FILE,), describe=coral_segments.describe_segments,
                         calibrate=coral_segments.calibration_feeds_segments, extra_glob="*.tflite",
                         export_options=lambda recipe: {"lm_head": recipe.data["edgetpu"]["lm_head"]})


FORMATS: dict[str, Callable[[], FormatSupport]] = {"onnx": _onnx_support, "tflite": _tflite_support}
# graph layouts other than one model file, chosen by the target's [export] layout
LAYOUTS: dict[str, Callable[[], FormatSupport]] = {"tpu-segments": _tpu_segments_support}


@dataclass
class BuildContext:
    target: Target
    recipe: Recipe
    teacher_source: str
    precision: str
    out: Path
    work_dir: Path
    gate: bool = True
    tar: bool = False
    log: Callable[[str], None] = print
    max_minutes: float | None = None  # distillation budget overrides (None = recipe's)
    max_steps: int | None = None
    min_steps: int | None = None
    compiler: str | None = None  # accelerator compiler path (coral: edgetpu_compiler)
    chat_prompts: int | None = None  # cap on generated chat prompts (None = the recipe's)
    sign: Callable[[bytes], bytes] | None = None  # manifest bytes -> manifest.sig bytes (build --sign)
    support: FormatSupport | None = field(default=None)


def _max_seq(ctx: BuildContext, config) -> int:
    return min(ctx.target.data["shapes"]["max_sequence_length"], getattr(config, "max_position_embeddings", 1 << 30))


def stage_distill(ctx: BuildContext, d: Path, outs: dict) -> StageOutput:
    """Student = teacher (mode "teacher"), or a distilled layer-dropped student (checkpoints in
    <work-dir>/checkpoints, so re-running a failed build resumes instead of retraining)."""
    from edgekit.workshop.teacher import load_causal_lm, resolve_teacher

    t = ctx.recipe.teacher
    from_recipe = ctx.teacher_source == t["source"]
    mode = ctx.recipe.student["mode"]
    student_dir = d / "student"
    if mode == "teacher":
        teacher_path = resolve_teacher(ctx.teacher_source, t["file"] if from_recipe else "",
                                       t["sha256"] if from_recipe else "")
        model, tokenizer = load_causal_lm(teacher_path)
        teacher_dir = teacher_path
        model.save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
        from edgekit.workshop.student import parameter_counts

        n_params = parameter_counts(model)["total"]
        metrics = {"teacher_parameters": n_params, "student_parameters": n_params}
        params = {"mode": mode, "teacher": ctx.teacher_source}
    else:
        from edgekit.workshop.distill import Budget, chat_settings_from_recipe, run_distill, settings_from_recipe
        from edgekit.workshop.distill_settings import budget_limits
        from edgekit.workshop.student_gate import apply_student_gate

        dcfg = ctx.recipe.data["distill"]
        budget = Budget(**budget_limits(dcfg, ctx.max_minutes, ctx.max_steps, ctx.min_steps),
                        checkpoint_every=dcfg["checkpoint_every"])
        settings = settings_from_recipe(ctx.recipe, None if from_recipe else ctx.teacher_source,
                                        max_minutes=budget.max_minutes)
        chat = chat_settings_from_recipe(ctx.recipe, settings, ctx.chat_prompts)
        dm = run_distill(settings, budget, student_dir, ctx.work_dir / "checkpoints",
                         ctx.recipe.data["data"]["eval"], log=ctx.log, chat_settings=chat)
        model, tokenizer = load_causal_lm(student_dir)
        teacher_path = settings.teacher
        teacher_dir = resolve_teacher(settings.teacher, settings.teacher_file, settings.teacher_sha256)
        metrics = {"teacher_parameters": dm["parameters"]["teacher"]["total"],
                   "student_parameters": dm["parameters"]["student"]["total"],
                   "distill": {k: v for k, v in dm.items() if k != "settings"}}
        metrics["student_gate"] = apply_student_gate(dm, ctx.recipe.data["gate"], ctx.gate, ctx.log)
        params = {"mode": mode, **dm["settings"], "max_steps": budget.max_steps, "max_minutes": budget.max_minutes,
                  "min_steps": budget.min_steps}
    if not (student_dir / "tokenizer.json").is_file():
        raise BuildError(f"tokenizer of {teacher_path} could not be converted to tokenizer.json")
    return StageOutput(
        files={"student": student_dir},
        values={"model": model, "tokenizer": tokenizer, "teacher_path": str(teacher_path), "teacher_dir": teacher_dir,
                "eos": _eos_ids(tokenizer, model)},
        parameters=params,
        metrics=metrics,
    )


def _model_files(support: FormatSupport, d: Path) -> dict[str, Path]:
    files = {"model": d / support.model_file}
    files.update({name: d / name for name in support.extra_files})
    if support.extra_glob:
        files.update({p.name: p for p in sorted(d.glob(support.extra_glob)) if p.name != support.model_file})
    return files


def _bytes(files: dict[str, Path]) -> int:
    return sum(p.stat().st_size for p in files.values())


def stage_export(ctx: BuildContext, d: Path, outs: dict) -> StageOutput:
    model = outs["distill"].values["model"]
    path = d / ctx.support.model_file
    max_seq = _max_seq(ctx, model.config)
    shapes = ctx.target.data["shapes"]
    options = ctx.support.export_options(ctx.recipe) if ctx.support.export_options else {}
    sig = ctx.support.export(model, path, max_seq, shapes.get("prefill_length", 64), **options)
    fused = sig.pop("fused", None)  # graph fusions an exporter applied (onnx_fuse counts), a metric
    files = _model_files(ctx.support, d)
    return StageOutput(files=files, values={"signature": sig, "max_sequence_length": max_seq},
                       parameters={"format": ctx.target.format, "max_sequence_length": max_seq,
                                   "static_shapes": shapes["static"], **options},
                       metrics={"bytes": _bytes(files), **({"fused": fused} if fused is not None else {})})


def _calibration_windows(ctx: BuildContext, tokenizer, max_len: int, count: int = 24) -> list[list[int]]:
    """Token windows of the recipe's training text (never its held-out tail) for calibration."""
    from edgekit.workshop.textdata import expand_paths, read_text, split_heldout

    ids: list[int] = []
    for path in expand_paths(ctx.recipe.data["data"]["train"]):
        train, _ = split_heldout(read_text(path), ctx.recipe.data["distill"]["eval_fraction"])
        text = train[: 5 * max_len * count]  # ~4-5 characters per token is enough text
        ids += tokenizer(text, add_special_tokens=False, verbose=False).input_ids
        if len(ids) >= max_len * count:
            break
    wins = [ids[i:i + max_len] for i in range(0, len(ids) - max_len + 1, max_len)][:count]
    if not wins:
        raise BuildError("no calibration text: the recipe's [data] train files are empty")
    return wins


def stage_quantize(ctx: BuildContext, d: Path, outs: dict) -> StageOutput:
    export = outs["export"]
    src = export.files["model"]
    dst = d / ctx.support.model_file
    calibration = None
    if ctx.precision == "int8-full":
        if ctx.support.calibrate is None:
            raise BuildError(f"format '{ctx.target.format}' has no full-integer quantization")
        tok = outs["distill"].values["tokenizer"]
        max_len = export.values["max_sequence_length"]
        if ctx.recipe.task == "feature-extraction":
            from edgekit.workshop.encoder_build import calibration_ids

            samples = calibration_ids(ctx, tok, max_len)
        else:
            samples = _calibration_windows(ctx, tok, min(96, max_len))
        ctx.log(f"    calibrating on {len(samples)} samples of training text")
        calibration = ctx.support.calibrate(src, export.values["signature"], samples)
    params = ctx.support.quantize(src, dst, ctx.precision, calibration)
    sig = dict(export.values["signature"])
    sig.update(params.pop("signature_update", {}))
    if ctx.support.describe is not None:
        sig.update(ctx.support.describe(dst))
    files = _model_files(ctx.support, d)
    return StageOutput(files=files, values={"signature": sig},
                       parameters={"precision": ctx.precision, **params},
                       metrics={"bytes_before": _bytes(export.files), "bytes": _bytes(files),
                                **ctx.support.summary(dst)})


def stage_verify(ctx: BuildContext, d: Path, outs: dict) -> StageOutput:
    from edgekit.workshop.verify import apply_gate, gate_failures, verify_causal
    from edgekit.device.tokenizer import TextTokenizer

    distill = outs["distill"]
    model_path = outs["quantize"].files["model"]
    max_seq = outs["export"].values["max_sequence_length"]
    device_model = ctx.support.open_device_model(
        model_path, {"model": {"max_sequence_length": max_seq}, "signature": outs["quantize"].values["signature"]})
    tok = distill.values["tokenizer"]
    device_tok = TextTokenizer.from_file(distill.files["student"] / "tokenizer.json", distill.values["eos"])
    from edgekit.workshop.evaluate import default_eval_texts

    texts, skipped = default_eval_texts(ctx.recipe, skip_missing=True)
    eval_texts = list(texts.values())
    limits = ctx.target.verify
    metrics = verify_causal(distill.values["model"], tok, device_model, device_tok, ctx.recipe.data["verify"]["prompts"],
                            limits["greedy_tokens"], eval_texts)
    if skipped:
        metrics["eval_text_missing"] = [str(s) for s in skipped]
    from edgekit.workshop.reference_build import causal_reference, write_reference

    ref = causal_reference(distill.values["model"], tok, device_tok, ctx.recipe.data["verify"]["prompts"],
                           limits["greedy_tokens"], eval_texts, max_seq)
    ref_path = d / REFERENCE_FILE
    metrics["reference"] = write_reference(ref, device_model, device_tok, ctx.support.runtime, limits, ref_path, ctx.log)
    fails = gate_failures(metrics, limits)
    apply_gate(metrics, fails, limits, ctx.gate, ctx.log)
    return StageOutput(files={"reference": ref_path}, metrics=metrics,
                       parameters={"prompts": len(ctx.recipe.data["verify"]["prompts"])})


def stage_compile(ctx: BuildContext, d: Path, outs: dict) -> StageOutput:
    """Accelerator compile step named by the target's [compile] tool (coral: Edge TPU)."""
    from edgekit.workshop.coral_compile import run_compile_stage

    from edgekit.workshop.coral_compile import compiler_order

    models = compiler_order([p for p in outs["quantize"].files.values() if p.suffix == ".tflite"],
                            outs["quantize"].values.get("signature"))
    sig, opener = outs["quantize"].values["signature"], ctx.support.open_device_model
    record = run_compile_stage(models, d, ctx.compiler, log=ctx.log,
                               host_macs_per_token=getattr(opener, "host_macs", None) and opener.host_macs(sig),
                               host_weight_bytes=getattr(opener, "host_weight_bytes", None) and opener.host_weight_bytes(sig)
                               or 0, signature=outs["quantize"].values.get("signature"))
    files = {}
    comp = record.get("compiler", {})
    for name in comp.get("files", []):
        files[name] = d / name
    metrics = {"predicted_mac_share_on_tpu": record["mac_share_on_tpu"]}
    return StageOutput(files=files, values={"record": record}, metrics=metrics,
                       parameters={"tool": ctx.target.data["compile"]["tool"], "compiler": ctx.compiler or "PATH"})


def _eos_ids(tokenizer, model) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return sorted({eos} if isinstance(eos, int) else set(eos or []))


def stage_package(ctx: BuildContext, d: Path, outs: dict) -> StageOutput:
    """Assemble the bundle in a staging folder beside --out; the manifest is written in run_build."""
    distill = outs["distill"]
    staging = staging_dir(ctx.out)
    try:
        for path in outs["quantize"].files.values():
            shutil.copyfile(path, staging / path.name)
        if "compile" in outs:
            for path in outs["compile"].files.values():
                shutil.copyfile(path, staging / path.name)
        shutil.copyfile(distill.files["student"] / "tokenizer.json", staging / "tokenizer.json")
        shutil.copyfile(outs["verify"].files["reference"], staging / REFERENCE_FILE)
        generation = None
        if ctx.recipe.task == "text-generation":
            from edgekit.workshop.generation_defaults import write_generation

            generation = write_generation(staging, ctx.recipe, Path(distill.values["teacher_dir"]),
                                          distill.values["tokenizer"], distill.values["eos"], ctx.log)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StageOutput(values={"staging": staging, "generation": generation})


def _stages(task: str, compile_tool: str = "none") -> list[Stage]:
    distill, verify = stage_distill, stage_verify
    if task == "feature-extraction":
        from edgekit.workshop import encoder_build

        distill, verify = encoder_build.stage_distill, encoder_build.stage_verify
    stages = [
        Stage("distill", distill),
        Stage("export", stage_export, uses=("distill",)),
        Stage("quantize", stage_quantize, uses=("export",)),
        Stage("verify", verify, uses=("quantize",)),
    ]
    if compile_tool != "none":
        stages.append(Stage("compile", stage_compile, uses=("quantize",)))
    return stages + [Stage("package", stage_package, uses=("quantize", "distill", "verify"))]


TASKS = ("text-generation", "feature-extraction")


def run_build(ctx: BuildContext) -> Bundle:
    """Run every stage and write the bundle atomically to ctx.out. Nothing is written on failure."""
    if ctx.recipe.task not in TASKS:
        raise BuildError(f"recipe '{ctx.recipe.name}' has task '{ctx.recipe.task}'; this edgekit version "
                         f"builds: {', '.join(TASKS)}")
    if ctx.target.format not in FORMATS:
        raise BuildError(f"target '{ctx.target.name}' needs format '{ctx.target.format}', which this edgekit "
                         f"version cannot export yet; available formats: {', '.join(FORMATS)}")
    ctx.support = _format_support(ctx)
    outs, records = {}, []
    try:
        outs, records = run_stages(_stages(ctx.recipe.task, ctx.target.data["compile"]["tool"]), ctx.work_dir, ctx,
                                   ctx.log)
        staging = outs["package"].values["staging"]
        return write_bundle(staging, bundle_manifest(ctx, outs, records), ctx.out, tar=ctx.tar, sign=ctx.sign)
    except BaseException:
        staging = outs.get("package").values.get("staging") if outs.get("package") else None
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _format_support(ctx: BuildContext) -> FormatSupport:
    """How the model is exported/quantized/opened: the encoder's, the target's layout's, else its format's."""
    layout = ctx.target.data["export"]["layout"]
    if ctx.recipe.task == "feature-extraction":
        from edgekit.workshop.encoder_build import encoder_support

        return encoder_support(ctx.target.format, layout)
    return LAYOUTS[layout]() if layout in LAYOUTS else FORMATS[ctx.target.format]()
