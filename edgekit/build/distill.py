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
    chat_key: str = ""  # key of the chat data (edgekit.build.chatdata.ChatSettings); "" = text only
    chat_fraction: float = 0.0
    chat_seq_len: int = 256
    layer_reason: str = ""

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


def _kd_loss(s_logits, t_logits, labels, s: DistillSettings, s_hidden=None, t_hidden=None, mask=None):
    """KD loss over every position, or only where `mask` [B, L] is true (a chat example's answer)."""
    T = s.temperature
    vocab = s_logits.shape[-1]
    s_flat, t_flat = s_logits.reshape(-1, vocab).float(), t_logits.reshape(-1, vocab).float()
    if mask is not None:
        keep = mask.reshape(-1)
        s_flat, t_flat, labels = s_flat[keep], t_flat[keep], labels.reshape(-1)[keep]
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


@dataclass
class _Chat:
    """Tokenized chat examples for training and the held-out ones for scoring."""

    train: list
    heldout: list
    teacher_scores: dict
    source: dict


def _prepare_chat(settings: DistillSettings, chat_settings, teacher_path, teacher, tokenizer, log, progress):
    from edgekit.build import chatdata

    if chat_settings is None:
        return None
    data = chatdata.build_chat_data(chat_settings, teacher_path, teacher, tokenizer, log=log, progress=progress)
    train = chatdata.tokenized(tokenizer, data.train, settings.chat_seq_len + 1)
    heldout = chatdata.tokenized(tokenizer, data.heldout, settings.chat_seq_len + 1)
    if not train or not heldout:
        raise BuildError(f"chat data in {data.folder} has {len(train)} training and {len(heldout)} held-out "
                         "examples; both are needed")
    log(f"chat: {len(train)} training examples, {len(heldout)} held out "
        f"({sum(c.answer_tokens for c in heldout):,} answer tokens), teacher answers from {data.folder}")
    return _Chat(train, heldout, {}, {"folder": str(data.folder), "train_examples": len(train),
                                      "heldout_examples": len(heldout),
                                      "generated_seconds": data.generated_seconds})


def _is_chat_step(step: int, fraction: float) -> bool:
    """Spread chat steps evenly over training (a low-discrepancy sequence: no long runs of one kind)."""
    return fraction > 0 and (step * 0.6180339887) % 1.0 < fraction


def _slice(order, step: int, per_step: int, batch_size: int, process_index: int):
    """This process's share of the global batch for `step` (the same windows for any process count)."""
    n = len(order)
    start = (step * per_step) % n
    glob = [order[(start + i) % n] for i in range(per_step)]
    return glob[process_index * batch_size:(process_index + 1) * batch_size]


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
    with accel.main_process_first():  # one process downloads/converts the teacher and makes the chat data
        teacher_path = resolve_teacher(settings.teacher, settings.teacher_file, settings.teacher_sha256)
        teacher, tokenizer = load_causal_lm(teacher_path)
    teacher.requires_grad_(False)
    files = textdata.expand_paths(settings.data)
    data = textdata.prepare(tokenizer, files, settings.seq_len, settings.eval_fraction, budget.eval_tokens,
                            eval_files=textdata.expand_paths(list(eval_files)))
    log(f"data: {data.train_tokens:,} training tokens ({len(data.train)} windows of {settings.seq_len}) from "
        f"{len(files)} files; held-out: " + ", ".join(f"{k} {v.numel() - len(v):,} tokens" for k, v in data.evals.items()))
    with accel.main_process_first():
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


class _Loop:
    """The training loop: one optimizer step per global batch, checkpoints, evaluation, budget."""

    def __init__(self, settings, budget, accel, teacher, student, optimizer, params, tokenizer, data, chat, state,
                 ckpt, log, clock):
        self.s, self.b, self.accel = settings, budget, accel
        self.teacher, self.student, self.opt, self.params = teacher, student, optimizer, params
        self.pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.data, self.chat, self.state, self.ckpt, self.log, self.clock = data, chat, state, ckpt, log, clock
        self.tokenizer = tokenizer
        gen = torch.Generator().manual_seed(settings.seed)
        self.order = torch.randperm(len(data.train), generator=gen).tolist()
        self.chat_order = torch.randperm(len(chat.train), generator=gen).tolist() if chat else []

    def evaluate(self) -> dict:
        st, s = self.state, self.student
        s.eval()
        first = next(iter(self.data.evals))
        ppl = textdata.perplexity(self.accel.unwrap_model(s), self.data.evals[first])
        point = {"step": st["step"], "minutes": round(st["train_seconds"] / 60, 3), "eval_file": first,
                 "perplexity": round(ppl, 4), "ratio": round(ppl / st["teacher_perplexity"][first], 4)}
        if self.chat is not None:
            from edgekit.build.chatdata import chat_scores

            c = chat_scores(self.accel.unwrap_model(s), self.chat.heldout)
            point.update(chat_perplexity_ratio=round(c["perplexity"] / st["teacher_chat"]["perplexity"], 4),
                         chat_agreement=round(c["agreement"], 4))
        s.train()
        return point

    def checkpoint(self) -> None:
        if self.accel.is_main_process:
            _save_checkpoint(self.ckpt, self.accel.unwrap_model(self.student), self.tokenizer, self.opt, self.state)
        self.accel.wait_for_everyone()

    def batch(self):
        """(input ids, targets, answer mask or None) of this process's share of the next step."""
        st, s, accel = self.state, self.s, self.accel
        per_step = s.batch_size * accel.num_processes
        if self.chat is not None and _is_chat_step(st["step"], s.chat_fraction):
            from edgekit.build.chatdata import pad_batch

            n = st.get("chat_steps", 0)
            st["chat_steps"] = n + 1
            items = [self.chat.train[i] for i in _slice(self.chat_order, n, per_step, s.batch_size, accel.process_index)]
            ids, mask = pad_batch(items, self.pad_id)
            return ids[:, :-1].to(accel.device), ids[:, 1:].to(accel.device), mask.to(accel.device)
        n = st["step"] - st.get("chat_steps", 0)
        rows = self.data.train[_slice(self.order, n, per_step, s.batch_size, accel.process_index)].to(accel.device)
        return rows[:, :-1], rows[:, 1:], None

    def step(self) -> dict:
        s = self.s
        x, y, mask = self.batch()
        want_hidden = s.hidden_weight > 0
        with torch.no_grad():
            t_out = self.teacher(input_ids=x, output_hidden_states=want_hidden)
        s_out = self.student(input_ids=x, output_hidden_states=want_hidden)
        s_hid = t_hid = None
        if want_hidden:
            s_hid = s_out.hidden_states[1:]
            t_hid = [t_out.hidden_states[i + 1] for i in self.state["keep_layers"]]
        loss, parts = _kd_loss(s_out.logits, t_out.logits, y, s, s_hid, t_hid, mask)
        self.opt.zero_grad(set_to_none=True)
        self.accel.backward(loss)
        self.accel.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.state["tokens_seen"] = self.state.get("tokens_seen", 0) + x.numel() * self.accel.num_processes
        return {"loss": loss.item(), "kl": parts["kl"], "tokens": x.numel() * self.accel.num_processes}

    def train(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        st, b = self.state, self.b
        max_seconds = b.max_minutes * 60 if b.max_minutes > 0 else float("inf")
        max_steps = b.max_steps or float("inf")
        if not st["curve"]:
            st["curve"].append(self.evaluate())
        bar = tqdm(total=None if max_steps == float("inf") else int(max_steps), initial=st["step"], unit="step",
                   disable=not (progress and self.accel.is_local_main_process), desc="distill")
        last_eval = st["train_seconds"]
        self.student.train()
        try:
            while st["step"] < max_steps and st["train_seconds"] < max_seconds:
                t0 = self.clock()
                parts = self.step()
                st["step"] += 1
                dt = _slowest_seconds(self.accel, self.clock() - t0)
                st["train_seconds"] += dt
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}", kl=f"{parts['kl']:.3f}", tok_s=f"{parts['tokens'] / dt:.0f}")
                if st["step"] % b.checkpoint_every == 0:
                    self.checkpoint()
                if b.eval_every_minutes > 0 and st["train_seconds"] - last_eval >= b.eval_every_minutes * 60:
                    last_eval = st["train_seconds"]
                    st["curve"].append(self.evaluate())
                    self.log_point(st["curve"][-1])
        except KeyboardInterrupt:
            bar.close()
            self.checkpoint()
            raise KeyboardInterrupt(f"distillation interrupted at step {st['step']}; checkpoint saved in {self.ckpt}; "
                                    "run the same command again to resume") from None
        bar.close()
        if not st["curve"] or st["curve"][-1]["step"] != st["step"]:
            st["curve"].append(self.evaluate())
        st["done"] = True
        self.checkpoint()

    def log_point(self, p: dict) -> None:
        chat = (f"; chat answers {p['chat_perplexity_ratio']:.3f}x, agreement {p['chat_agreement']:.3f}"
                if "chat_agreement" in p else "")
        self.log(f"step {p['step']}: held-out perplexity {p['perplexity']:.3f} ({p['ratio']:.3f}x teacher){chat} "
                 f"after {p['minutes']:.1f} min")


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
        chat_fraction=c["fraction"] if c["enabled"] else 0.0, chat_seq_len=c["seq_len"],
    )


def chat_settings_from_recipe(recipe, settings: DistillSettings):
    """The recipe's chat-data settings for this teacher (None when the recipe distills text only);
    also stores their key in `settings` so a checkpoint never resumes on other chat data."""
    from edgekit.build.chatdata import ChatSettings

    c = recipe.data["chat"]
    if not c["enabled"]:
        return None
    ident = json.dumps([settings.teacher, settings.teacher_file, settings.teacher_sha256])
    cs = ChatSettings(teacher_key=hashlib.sha256(ident.encode()).hexdigest()[:16], topics=list(c["topics"]),
                      self_instruct=c["self_instruct"], corpus_prompts=c["corpus_prompts"],
                      corpus_files=list(settings.data), heldout_prompts=list(c["heldout_prompts"]),
                      heldout_fraction=c["heldout_fraction"], answer_tokens=c["answer_tokens"], seed=settings.seed)
    settings.chat_key = cs.key()
    return cs


if __name__ == "__main__":  # `accelerate launch -m edgekit.build.distill --recipe R ...`
    import sys

    from edgekit.cli import main

    main(["distill", *sys.argv[1:]])
