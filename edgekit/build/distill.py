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

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Budget:
    """When to stop and how often to checkpoint/evaluate (not part of the resume key)."""

    max_steps: int = 0  # 0 = no step limit
    max_minutes: float = 0.0  # 0 = no time limit
    checkpoint_every: int = 50
    eval_every_minutes: float = 2.0
    eval_tokens: int = 4096


def _kd_loss(s_logits, t_logits, labels, s: DistillSettings, s_hidden=None, t_hidden=None):
    T = s.temperature
    vocab = s_logits.shape[-1]
    s_flat, t_flat = s_logits.reshape(-1, vocab).float(), t_logits.reshape(-1, vocab).float()
    kl = torch.nn.functional.kl_div(torch.log_softmax(s_flat / T, -1), torch.log_softmax(t_flat / T, -1),
                                    log_target=True, reduction="batchmean") * T * T
    ce = torch.nn.functional.cross_entropy(s_flat, labels.reshape(-1))
    loss = s.kl_weight * kl + s.ce_weight * ce
    parts = {"kl": kl.item(), "ce": ce.item()}
    if s.hidden_weight > 0 and s_hidden is not None:
        cos = [torch.nn.functional.cosine_similarity(sh, th, dim=-1).mean() for sh, th in zip(s_hidden, t_hidden)]
        hid = 1 - torch.stack(cos).mean()
        loss = loss + s.hidden_weight * hid
        parts["hidden"] = hid.item()
    return loss, parts


def _save_checkpoint(ckpt: Path, model, tokenizer, optimizer, state: dict) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _calibration(data: textdata.TextData, n: int = 4) -> list[torch.Tensor]:
    return [data.train[i: i + 1, :-1] for i in range(min(n, len(data.train)))]


# --- several processes (accelerate launch): logging and clocks that agree across processes ---
def _main_only(accel, log: Callable[[str], None]) -> Callable[[str], None]:
    return log if accel.is_main_process else (lambda msg: None)


def _slowest_seconds(accel, seconds: float) -> float:
    """The step time of the slowest process, so every process counts the same training seconds and
    stops (max_minutes) and evaluates (eval_every_minutes) at the same step; one differing stop
    would leave the others waiting forever in the next gradient all-reduce."""
    if accel.num_processes == 1:
        return seconds
    return float(accel.reduce(torch.tensor([seconds], dtype=torch.float64, device=accel.device), "max").item())


def run_distill(settings: DistillSettings, budget: Budget, out_dir: Path, checkpoint_dir: Path,
                eval_files: list[str] = (), log: Callable[[str], None] = print, progress: bool = True,
                clock: Callable[[], float] = time.monotonic) -> dict:
    """Distill, save the student as a Hugging Face folder in `out_dir`, return the metrics."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from edgekit.build.teacher import load_causal_lm, resolve_teacher

    torch.manual_seed(settings.seed)
    accel = Accelerator(cpu=not torch.cuda.is_available())
    log = _main_only(accel, log)
    with accel.main_process_first():  # one process downloads/converts the teacher; the others reuse its cache
        teacher, tokenizer = load_causal_lm(resolve_teacher(settings.teacher, settings.teacher_file,
                                                            settings.teacher_sha256))
    teacher.requires_grad_(False)
    files = textdata.expand_paths(settings.data)
    data = textdata.prepare(tokenizer, files, settings.seq_len, settings.eval_fraction, budget.eval_tokens,
                            eval_files=textdata.expand_paths(list(eval_files)))
    log(f"data: {data.train_tokens:,} training tokens ({len(data.train)} windows of {settings.seq_len}) from "
        f"{len(files)} files; held-out: " + ", ".join(f"{k} {v.numel() - len(v):,} tokens" for k, v in data.evals.items()))

    ckpt = checkpoint_dir / "checkpoint"
    state = {"settings_key": settings.key(), "step": 0, "train_seconds": 0.0, "curve": [], "done": False}
    if (ckpt / "state.json").is_file():
        saved = json.loads((ckpt / "state.json").read_text())
        if saved["settings_key"] != state["settings_key"]:
            raise BuildError(f"{ckpt} holds a run with different settings; pass --restart to discard it "
                             "or choose another --out")
        state = saved
        student = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        log(f"resuming from step {state['step']} ({state['train_seconds'] / 60:.1f} min trained) in {ckpt}")
    else:
        keep = sorted(settings.keep_layers)
        if not keep:
            keep = student_mod.select_layers_by_influence(teacher, _calibration(data, 8), settings.auto_layers)
            log(f"layers chosen by influence: {keep}")
        state["keep_layers"] = keep
        student = student_mod.make_student(teacher, keep, settings.ffn_ratio, _calibration(data))
    keep = state["keep_layers"]
    counts_t, counts_s = student_mod.parameter_counts(teacher), student_mod.parameter_counts(student)

    teacher_ppl = state.get("teacher_perplexity") or {k: textdata.perplexity(teacher, w) for k, w in data.evals.items()}
    state["teacher_perplexity"] = teacher_ppl
    student.requires_grad_(True)
    student.get_input_embeddings().requires_grad_(False)  # frozen (tied to the LM head when tied)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    if (ckpt / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    student, optimizer = accel.prepare(student, optimizer)
    teacher.to(accel.device)

    def evaluate() -> dict:
        student.eval()
        first = next(iter(data.evals))
        ppl = textdata.perplexity(accel.unwrap_model(student), data.evals[first])
        student.train()
        return {"step": state["step"], "minutes": round(state["train_seconds"] / 60, 3), "eval_file": first,
                "perplexity": round(ppl, 4), "ratio": round(ppl / teacher_ppl[first], 4)}

    def checkpoint():
        if accel.is_main_process:
            _save_checkpoint(ckpt, accel.unwrap_model(student), tokenizer, optimizer, state)

    per_step = settings.batch_size * accel.num_processes  # the global batch, in windows
    log(f"{accel.num_processes} process(es) x batch {settings.batch_size} = global batch {per_step} windows")
    gen = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(data.train), generator=gen)
    max_seconds = budget.max_minutes * 60 if budget.max_minutes > 0 else float("inf")
    max_steps = budget.max_steps or float("inf")
    if not state["curve"]:
        state["curve"].append(evaluate())
    bar = tqdm(total=None if max_steps == float("inf") else int(max_steps), initial=state["step"], unit="step",
               disable=not (progress and accel.is_local_main_process), desc="distill")
    last_eval = state["train_seconds"]
    student.train()
    interrupted = False
    try:
        while state["step"] < max_steps and state["train_seconds"] < max_seconds:
            t0 = clock()
            start = (state["step"] * per_step) % max(1, len(order) - per_step)
            idx = order[start + accel.process_index * settings.batch_size:][: settings.batch_size]
            batch = data.train[idx].to(accel.device)
            x, y = batch[:, :-1], batch[:, 1:]
            want_hidden = settings.hidden_weight > 0
            with torch.no_grad():
                t_out = teacher(input_ids=x, output_hidden_states=want_hidden)
            s_out = student(input_ids=x, output_hidden_states=want_hidden)
            s_hid = t_hid = None
            if want_hidden:
                s_hid = s_out.hidden_states[1:]
                t_hid = [t_out.hidden_states[i + 1] for i in keep]
            loss, parts = _kd_loss(s_out.logits, t_out.logits, y, settings, s_hid, t_hid)
            optimizer.zero_grad(set_to_none=True)
            accel.backward(loss)
            accel.clip_grad_norm_(params, 1.0)
            optimizer.step()
            state["step"] += 1
            dt = _slowest_seconds(accel, clock() - t0)
            state["train_seconds"] += dt
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", kl=f"{parts['kl']:.3f}", tok_s=f"{x.numel() * accel.num_processes / dt:.0f}")
            if state["step"] % budget.checkpoint_every == 0:
                checkpoint()
            if budget.eval_every_minutes > 0 and state["train_seconds"] - last_eval >= budget.eval_every_minutes * 60:
                last_eval = state["train_seconds"]
                state["curve"].append(evaluate())
                log(f"step {state['step']}: held-out perplexity {state['curve'][-1]['perplexity']:.3f} "
                    f"({state['curve'][-1]['ratio']:.3f}x teacher) after {state['curve'][-1]['minutes']:.1f} min")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted:
        checkpoint()
        raise KeyboardInterrupt(f"distillation interrupted at step {state['step']}; checkpoint saved in {ckpt}; "
                                "run the same command again to resume")
    if not state["curve"] or state["curve"][-1]["step"] != state["step"]:
        state["curve"].append(evaluate())
    state["done"] = True
    checkpoint()

    final = accel.unwrap_model(student)
    final.eval()
    student_ppl = {k: textdata.perplexity(final, w) for k, w in data.evals.items()}
    metrics = {
        "teacher": settings.teacher,
        "keep_layers": keep,
        "steps": state["step"],
        "train_minutes": round(state["train_seconds"] / 60, 3),
        "train_tokens_seen": state["step"] * per_step * settings.seq_len,
        "parameters": {"teacher": counts_t, "student": counts_s,
                       "layer_ratio": round(counts_s["layers"] / counts_t["layers"], 4)},
        "perplexity": {k: {"teacher": round(teacher_ppl[k], 4), "student": round(student_ppl[k], 4),
                           "ratio": round(student_ppl[k] / teacher_ppl[k], 4),
                           "eval_tokens": int(data.evals[k][:, 1:].numel())} for k in data.evals},
        "curve": state["curve"],
        "settings": asdict(settings),
    }
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


def settings_from_recipe(recipe, teacher: str | None = None, data: list[str] | None = None,
                         keep_layers: list[int] | None = None, auto_layers: int | None = None,
                         ffn_ratio: float | None = None) -> DistillSettings:
    """Settings from a recipe; non-None arguments (CLI options) override it."""
    d, st, t = recipe.data["distill"], recipe.student, recipe.teacher
    if keep_layers is None and auto_layers is None:
        keep_layers, auto_layers = st["keep_layers"], st["auto_layers"]
    return DistillSettings(
        teacher=teacher or t["source"],
        teacher_file="" if teacher else t["file"],
        teacher_sha256="" if teacher else t["sha256"],
        keep_layers=list(keep_layers or []),
        auto_layers=auto_layers or 0,
        ffn_ratio=ffn_ratio if ffn_ratio is not None else st["ffn_ratio"],
        temperature=d["temperature"], kl_weight=d["kl_weight"], ce_weight=d["ce_weight"],
        hidden_weight=d["hidden_weight"], learning_rate=d["learning_rate"], batch_size=d["batch_size"],
        seq_len=d["seq_len"], data=list(data or recipe.data["data"]["train"]),
    )


if __name__ == "__main__":  # `accelerate launch -m edgekit.build.distill --recipe R ...`
    import sys

    from edgekit.cli import main

    main(["distill", *sys.argv[1:]])
