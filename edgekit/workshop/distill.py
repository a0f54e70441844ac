"""Knowledge distillation of a causal LM teacher into a layer-dropped (and FFN-pruned) student.

Loss = kl_weight * T^2 * KL(teacher_T || student_T) + ce_weight * next-token CE
       + hidden_weight * (1 - cosine) between each kept student layer and its teacher layer.
The loop runs under Hugging Face Accelerate: single-process CPU by default, and
`accelerate launch -m edgekit.workshop.distill --recipe R ...` spreads it over GPUs/nodes (each
process takes its share of every global batch). Checkpoints (student, optimizer, step, elapsed
seconds, curve) are written atomically every N steps and on Ctrl-C; running again with the same
settings resumes. `max_minutes` bounds training time across resumes; `min_steps` is trained even when
the minutes run out first (a slow or busy CPU), `max_steps` caps both. Times are seconds unless
named minutes. May import: stdlib, torch, transformers, accelerate, tqdm, edgekit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from edgekit.workshop import student as student_mod
from edgekit.workshop import textdata
from edgekit.workshop.distill_loop import TrainingLoop, main_process_log, prepare_chat
from edgekit.workshop.distill_settings import (  # noqa: F401  (re-exported: the settings need no torch)
    Budget, DistillSettings, chat_settings_from_recipe, layers_for_budget, settings_from_recipe)
from edgekit.core.errors import BuildError


def _calibration(data: textdata.TextData, n: int = 4) -> list[torch.Tensor]:
    return [data.train[i: i + 1, :-1] for i in range(min(n, len(data.train)))]


def pruning_calibration(data: textdata.TextData, chat, n: int = 8) -> list[torch.Tensor]:
    """What FFN channels are ranked on: the first `n` chat training examples (prompt + teacher answer;
    in prompt order, so the teacher's open questions come first) when the student is distilled on chat,
    else training text windows. Measured on SmolLM2 at ffn_ratio 0.73 before training: held-out
    chat-answer NLL 1.54 nats/token ranked on chat examples, 1.71 ranked on 4 text windows (teacher 0.68)."""
    if chat is None:
        return _calibration(data)
    return [torch.tensor([c.ids]) for c in chat.train[:n]]


def _open_student(settings, budget, teacher, data, chat, ckpt: Path, log):
    """(student, state): resumed from the checkpoint, or made from the teacher's chosen layers."""
    from transformers import AutoModelForCausalLM

    state = {"settings_key": settings.key(), "step": 0, "train_seconds": 0.0, "curve": [], "done": False}
    if (ckpt / "state.json").is_file():
        saved = json.loads((ckpt / "state.json").read_text())
        if saved["settings_key"] != state["settings_key"]:
            raise BuildError(f"{ckpt} holds a run with different settings; pass --restart to discard it "
                             "or choose another --out")
        log(f"resuming from step {saved['step']} ({saved['train_seconds'] / 60:.1f} min trained) in {ckpt}")
        return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32), saved
    keep = sorted(settings.keep_layers)
    if not keep:
        n = settings.auto_layers or _layers_on_chip(settings, teacher, state, log)
        keep = student_mod.select_layers_by_influence(teacher, _calibration(data, 8), n)
        log(f"layers chosen by influence: {keep}" + (f" ({settings.layer_reason})" if settings.layer_reason else ""))
    state["keep_layers"] = keep
    student = student_mod.make_student(teacher, keep, settings.ffn_ratio, pruning_calibration(data, chat))
    if settings.fold_dropped:
        from edgekit.workshop.layer_fold import fold_dropped_layers

        chat_examples = pruning_calibration(data, chat, 32) if chat is not None else []
        state["folded"] = fold_dropped_layers(teacher, student, keep, _calibration(data, 8) + chat_examples)
        log("dropped layers folded into the kept ones: " + ", ".join(
            f"{r['layers']} -> layer {r['into']} (residual error {r['error_dropped']:.3f} -> {r['error_folded']:.3f})"
            for r in state["folded"]))
    return student, state


def _layers_on_chip(settings, teacher, state: dict, log) -> int:
    """The depth a recipe with `fit_on_chip` gets: the most layers whose int8 segments fit the
    accelerator's on-chip cache (accelerators/NAME.toml), recorded in state["fit_on_chip"]."""
    from edgekit.core.accelerators import load_accelerator
    from edgekit.core.coral_fit import config_layers_that_fit

    acc = load_accelerator(settings.fit_on_chip)
    fit = config_layers_that_fit(teacher.config, acc.on_chip_parameter_bytes, settings.lm_head_on_host)
    state["fit_on_chip"] = dict(fit, accelerator=acc.name)
    log(f"{fit['layers']} layers fit the {acc.name} on-chip cache ({acc.on_chip_parameter_bytes / 2**20:.2f} MiB): "
        f"{fit['per_layer_bytes'] / 2**20:.3f} MiB of int8 segments per layer, LM head on the {fit['lm_head']}")
    return fit["layers"]


def run_distill(settings: DistillSettings, budget: Budget, out_dir: Path, checkpoint_dir: Path,
                eval_files: list[str] = (), log: Callable[[str], None] = print, progress: bool = True,
                clock: Callable[[], float] = time.monotonic, chat_settings=None) -> dict:
    """Distill, save the student as a Hugging Face folder in `out_dir`, return the metrics.
    `chat_settings` (edgekit.workshop.chatdata.ChatSettings) mixes in the teacher's chat answers."""
    from accelerate import Accelerator

    torch.manual_seed(settings.seed)
    accel = Accelerator(cpu=not torch.cuda.is_available())
    log = main_process_log(accel, log)
    teacher, tokenizer, data, chat = _load_inputs(settings, budget, eval_files, chat_settings, accel, log, progress)
    log(f"{accel.num_processes} process(es) x batch {settings.batch_size} = global batch "
        f"{settings.batch_size * accel.num_processes} windows")
    ckpt = checkpoint_dir / "checkpoint"
    student, state = _open_student(settings, budget, teacher, data, chat, ckpt, log)
    keep = state["keep_layers"]
    counts_t, counts_s = student_mod.parameter_counts(teacher), student_mod.parameter_counts(student)
    _score_teacher(state, teacher, data, chat)
    student, optimizer, params = _prepare_training(settings, student, ckpt, accel)
    teacher.to(accel.device)
    loop = TrainingLoop(settings, budget, accel, teacher, student, optimizer, params, tokenizer, data, chat, state,
                        ckpt, log, clock)
    loop.train(progress)
    final = accel.unwrap_model(student)
    final.eval()
    metrics = _final_metrics(settings, state, final, data, chat, keep, counts_t, counts_s, accel.num_processes)
    if accel.is_main_process:
        _save_student(final, tokenizer, metrics, out_dir)
    accel.wait_for_everyone()  # every process ends after the student is written
    accel.end_training()
    return metrics


def _load_inputs(settings, budget, eval_files, chat_settings, accel, log, progress):
    """(teacher, tokenizer, text data, chat data or None), the teacher frozen; BuildError when
    there is no held-out text."""
    from edgekit.workshop.teacher import load_causal_lm, resolve_teacher

    with accel.local_main_process_first():  # one process per machine downloads/converts the teacher
        teacher_path = resolve_teacher(settings.teacher, settings.teacher_file, settings.teacher_sha256)
        teacher, tokenizer = load_causal_lm(teacher_path)
    teacher.requires_grad_(False)
    files = textdata.expand_paths(settings.data)
    data = textdata.prepare(tokenizer, files, settings.seq_len, settings.eval_fraction, budget.eval_tokens,
                            eval_files=textdata.expand_paths(list(eval_files)))
    if not data.evals:
        raise BuildError("no held-out text to measure the student on: the training files are too short for a "
                         "held-out tail; add eval files to the recipe ([data] eval)")
    log(f"data: {data.train_tokens:,} training tokens ({len(data.train)} windows of {settings.seq_len}) from "
        f"{len(files)} files; held-out: " + ", ".join(f"{k} {v.numel() - len(v):,} tokens" for k, v in data.evals.items()))
    with accel.local_main_process_first():  # ... and makes the chat data (the others read its cache)
        chat = prepare_chat(settings, chat_settings, teacher_path, teacher, tokenizer, log,
                            progress and accel.is_local_main_process)
    return teacher, tokenizer, data, chat


def _score_teacher(state: dict, teacher, data, chat) -> None:
    """The teacher's held-out perplexity (and chat scores) into `state`, once per run (kept on resume)."""
    if "teacher_perplexity" not in state:
        state["teacher_perplexity"] = {k: textdata.perplexity(teacher, w) for k, w in data.evals.items()}
    if chat is not None and "teacher_chat" not in state:
        from edgekit.workshop.chatdata import chat_scores

        state["teacher_chat"] = chat_scores(teacher, chat.heldout)


def _prepare_training(settings, student, ckpt: Path, accel):
    """(student, optimizer, trained parameters) under Accelerate: embeddings frozen, the optimizer
    state resumed from the checkpoint when there is one."""
    student.requires_grad_(True)
    student.get_input_embeddings().requires_grad_(False)  # frozen (tied to the LM head when tied)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    if (ckpt / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    student, optimizer = accel.prepare(student, optimizer)
    return student, optimizer, params


def _save_student(final, tokenizer, metrics: dict, out_dir: Path) -> None:
    """The student, its tokenizer and distill_metrics.json into `out_dir`, replaced atomically."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    final.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "distill_metrics.json").write_text(json.dumps(metrics, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _final_metrics(settings, state, final, data, chat, keep, counts_t, counts_s, processes: int) -> dict:
    teacher_ppl = state["teacher_perplexity"]
    student_ppl = {k: textdata.perplexity(final, w) for k, w in data.evals.items()}
    metrics = {
        "teacher": settings.teacher,
        "keep_layers": keep,
        "layer_reason": settings.layer_reason,
        "folded": state.get("folded", []),  # runs of dropped layers folded into kept ones (layer_fold)
        "steps": state["step"],
        "chat_steps": state.get("chat_steps", 0),
        "on_policy_steps": state.get("policy_steps", 0),  # chat steps on answers the student sampled
        "train_minutes": round(state["train_seconds"] / 60, 3),
        "train_tokens_seen": state.get("tokens_seen", state["step"] * settings.batch_size * processes * settings.seq_len),
        "parameters": {"teacher": counts_t, "student": counts_s,
                       "layer_ratio": round(counts_s["layers"] / counts_t["layers"], 4)},
        "perplexity": {k: {"teacher": round(teacher_ppl[k], 4), "student": round(student_ppl[k], 4),
                           "ratio": round(student_ppl[k] / teacher_ppl[k], 4),
                           "eval_tokens": int(data.evals[k][:, 1:].numel())} for k in data.evals},
        "curve": state["curve"],
        "settings": asdict(settings),
    }
    if "fit_on_chip" in state:
        metrics["fit_on_chip"] = state["fit_on_chip"]
    if chat is not None:
        from edgekit.workshop.chatdata import chat_scores

        t, s = state["teacher_chat"], chat_scores(final, chat.heldout)
        metrics["chat"] = {"teacher": _rounded(t), "student": _rounded(s),
                           "perplexity_ratio": round(s["perplexity"] / t["perplexity"], 4), **chat.source}
    return metrics


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


if __name__ == "__main__":  # `accelerate launch -m edgekit.workshop.distill --recipe R ...`
    import sys

    from edgekit.cli import main

    main(["distill", *sys.argv[1:]])
