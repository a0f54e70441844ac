"""Knowledge distillation of a causal LM teacher into a layer-dropped (and FFN-pruned) student.

Loss = kl_weight * T^2 * KL(teacher_T || student_T) + ce_weight * next-token CE
       + hidden_weight * (1 - cosine) between each kept student layer and its teacher layer.
The loop runs under Hugging Face Accelerate: single-process CPU by default, and
`accelerate launch -m edgekit.build.distill --recipe R ...` spreads it over GPUs/nodes (each
process takes its share of every global batch). Checkpoints (student, optimizer, step, elapsed
seconds, curve) are written atomically every N steps and on Ctrl-C; running again with the same
settings resumes. `max_minutes` bounds training time across resumes. Times are seconds unless
named minutes. May import: stdlib, torch, transformers, accelerate, tqdm, edgekit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from edgekit.build import student as student_mod
from edgekit.build import textdata
from edgekit.build.distill_loop import _Loop, _main_only, _prepare_chat
from edgekit.core.errors import BuildError


@dataclass
class DistillSettings:
    """Everything that determines a run (hashed to decide whether a checkpoint can resume)."""

    teacher: str
    keep_layers: list[int]  # teacher layer indices to keep; empty = choose `auto_layers` by influence
    auto_layers: int = 0
    teacher_file: str = ""
    teacher_sha256: str = ""
    ffn_ratio: float = 1.0
    temperature: float = 2.0
    kl_weight: float = 1.0
    ce_weight: float = 0.5
    hidden_weight: float = 0.0
    learning_rate: float = 3e-4
    batch_size: int = 4
    seq_len: int = 128
    data: list[str] = field(default_factory=list)
    eval_fraction: float = 0.05
    seed: int = 0
    chat_key: str = ""  # key of the chat data (edgekit.build.chatdata.ChatSettings); "" = text only
    chat_fraction: float = 0.0
    chat_seq_len: int = 256
    layer_reason: str = ""

    def key(self) -> str:
        fields = asdict(self)
        fields.pop("layer_reason")  # words only: a longer budget with the same depth resumes
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Budget:
    """When to stop and how often to checkpoint/evaluate (not part of the resume key)."""

    max_steps: int = 0  # 0 = no step limit
    max_minutes: float = 0.0  # 0 = no time limit
    checkpoint_every: int = 50
    eval_every_minutes: float = 2.0
    eval_tokens: int = 4096


def _calibration(data: textdata.TextData, n: int = 4) -> list[torch.Tensor]:
    return [data.train[i: i + 1, :-1] for i in range(min(n, len(data.train)))]


def _open_student(settings, budget, teacher, data, ckpt: Path, log):
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
        keep = student_mod.select_layers_by_influence(teacher, _calibration(data, 8), settings.auto_layers)
        log(f"layers chosen by influence: {keep}" + (f" ({settings.layer_reason})" if settings.layer_reason else ""))
    state["keep_layers"] = keep
    return student_mod.make_student(teacher, keep, settings.ffn_ratio, _calibration(data)), state


def run_distill(settings: DistillSettings, budget: Budget, out_dir: Path, checkpoint_dir: Path,
                eval_files: list[str] = (), log: Callable[[str], None] = print, progress: bool = True,
                clock: Callable[[], float] = time.monotonic, chat_settings=None) -> dict:
    """Distill, save the student as a Hugging Face folder in `out_dir`, return the metrics.
    `chat_settings` (edgekit.build.chatdata.ChatSettings) mixes in the teacher's chat answers."""
    from accelerate import Accelerator

    from edgekit.build.teacher import load_causal_lm, resolve_teacher

    torch.manual_seed(settings.seed)
    accel = Accelerator(cpu=not torch.cuda.is_available())
    log = _main_only(accel, log)
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
        chat = _prepare_chat(settings, chat_settings, teacher_path, teacher, tokenizer, log,
                             progress and accel.is_local_main_process)
    log(f"{accel.num_processes} process(es) x batch {settings.batch_size} = global batch "
        f"{settings.batch_size * accel.num_processes} windows")
    ckpt = checkpoint_dir / "checkpoint"
    student, state = _open_student(settings, budget, teacher, data, ckpt, log)
    keep = state["keep_layers"]
    counts_t, counts_s = student_mod.parameter_counts(teacher), student_mod.parameter_counts(student)
    if "teacher_perplexity" not in state:
        state["teacher_perplexity"] = {k: textdata.perplexity(teacher, w) for k, w in data.evals.items()}
    if chat is not None and "teacher_chat" not in state:
        from edgekit.build.chatdata import chat_scores

        state["teacher_chat"] = chat_scores(teacher, chat.heldout)
    student.requires_grad_(True)
    student.get_input_embeddings().requires_grad_(False)  # frozen (tied to the LM head when tied)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    if (ckpt / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    student, optimizer = accel.prepare(student, optimizer)
    teacher.to(accel.device)
    loop = _Loop(settings, budget, accel, teacher, student, optimizer, params, tokenizer, data, chat, state, ckpt,
                 log, clock)
    loop.train(progress)
    final = accel.unwrap_model(student)
    final.eval()
    metrics = _final_metrics(settings, state, final, data, chat, keep, counts_t, counts_s, accel.num_processes)
    if accel.is_main_process:
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        final.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "distill_metrics.json").write_text(json.dumps(metrics, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    accel.wait_for_everyone()  # every process ends after the student is written
    accel.end_training()
    return metrics


def _final_metrics(settings, state, final, data, chat, keep, counts_t, counts_s, processes: int) -> dict:
    teacher_ppl = state["teacher_perplexity"]
    student_ppl = {k: textdata.perplexity(final, w) for k, w in data.evals.items()}
    metrics = {
        "teacher": settings.teacher,
        "keep_layers": keep,
        "layer_reason": settings.layer_reason,
        "steps": state["step"],
        "chat_steps": state.get("chat_steps", 0),
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
    if chat is not None:
        from edgekit.build.chatdata import chat_scores

        t, s = state["teacher_chat"], chat_scores(final, chat.heldout)
        metrics["chat"] = {"teacher": _rounded(t), "student": _rounded(s),
                           "perplexity_ratio": round(s["perplexity"] / t["perplexity"], 4), **chat.source}
    return metrics


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def layers_for_budget(student: dict, max_minutes: float) -> tuple[int, str]:
    """(layers to keep, why) for a training budget: short budgets drop fewer layers, because a deep cut
    needs long training to heal (recipe `budget_minutes` / `budget_layers`; `auto_layers` above)."""
    for minutes, layers in zip(student["budget_minutes"], student["budget_layers"]):
        if 0 < max_minutes <= minutes:
            return layers, (f"{layers} layers: the recipe keeps {layers} for budgets up to {minutes:g} min "
                            f"and this budget is {max_minutes:g} min")
    if student["budget_minutes"]:
        return student["auto_layers"], (f"{student['auto_layers']} layers: the recipe's choice for budgets over "
                                         f"{student['budget_minutes'][-1]:g} min or unlimited")
    return student["auto_layers"], ""


def settings_from_recipe(recipe, teacher: str | None = None, data: list[str] | None = None,
                         keep_layers: list[int] | None = None, auto_layers: int | None = None,
                         ffn_ratio: float | None = None, max_minutes: float | None = None) -> DistillSettings:
    """Settings from a recipe; non-None arguments (CLI options) override it. `max_minutes` (the
    training budget) chooses the number of layers when the recipe ties it to the budget."""
    d, st, t = recipe.data["distill"], recipe.student, recipe.teacher
    reason = ""
    if keep_layers is None and auto_layers is None:
        keep_layers, auto_layers = st["keep_layers"], st["auto_layers"]
        if not keep_layers and auto_layers:
            auto_layers, reason = layers_for_budget(st, d["max_minutes"] if max_minutes is None else max_minutes)
    c = recipe.data["chat"]
    return DistillSettings(
        teacher=teacher or t["source"],
        teacher_file="" if teacher else t["file"],
        teacher_sha256="" if teacher else t["sha256"],
        keep_layers=list(keep_layers or []),
        auto_layers=auto_layers or 0,
        ffn_ratio=ffn_ratio if ffn_ratio is not None else st["ffn_ratio"],
        temperature=d["temperature"], kl_weight=d["kl_weight"], ce_weight=d["ce_weight"],
        hidden_weight=d["hidden_weight"], learning_rate=d["learning_rate"], batch_size=d["batch_size"],
        seq_len=d["seq_len"], data=list(data or recipe.data["data"]["train"]), layer_reason=reason,
        eval_fraction=d["eval_fraction"],
        chat_fraction=c["fraction"] if c["enabled"] else 0.0, chat_seq_len=c["seq_len"],
    )


def _local_fingerprint(settings: DistillSettings) -> list:
    """Sizes and modification times of a local teacher's files (a recipe teacher is pinned by sha256;
    a --teacher folder can change in place, and its chat data must then be made again)."""
    if settings.teacher_sha256 or not settings.teacher.startswith("path:"):
        return []
    root = Path(settings.teacher[5:])
    paths = sorted(root.iterdir()) if root.is_dir() else [root]
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in paths if p.is_file()]


def chat_settings_from_recipe(recipe, settings: DistillSettings, max_prompts: int | None = None):
    """The recipe's chat-data settings for this teacher (None when the recipe distills text only);
    also stores their key in `settings` so a checkpoint never resumes on other chat data.
    `max_prompts` caps the generated prompts (split as the recipe splits them)."""
    from edgekit.build.chatdata import ChatSettings

    c = recipe.data["chat"]
    if not c["enabled"]:
        return None
    ident = json.dumps([settings.teacher, settings.teacher_file, settings.teacher_sha256, _local_fingerprint(settings)])
    files = textdata.expand_paths(list(settings.data))
    asked, tasks = c["self_instruct"], c["corpus_prompts"]
    if max_prompts is not None and max_prompts < asked + tasks:
        asked = round(max_prompts * asked / (asked + tasks))
        tasks = max_prompts - asked
    cs = ChatSettings(teacher_key=hashlib.sha256(ident.encode()).hexdigest()[:16], topics=list(c["topics"]),
                      self_instruct=asked, corpus_prompts=tasks,
                      corpus_files=list(settings.data), heldout_prompts=list(c["heldout_prompts"]),
                      heldout_fraction=c["heldout_fraction"], answer_tokens=c["answer_tokens"], seed=settings.seed,
                      eval_fraction=settings.eval_fraction, files_sha256=[hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    settings.chat_key = cs.key()
    return cs


if __name__ == "__main__":  # `accelerate launch -m edgekit.build.distill --recipe R ...`
    import sys

    from edgekit.cli import main

    main(["distill", *sys.argv[1:]])
