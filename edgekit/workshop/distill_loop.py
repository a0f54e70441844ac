"""The distillation training loop: batches (text windows, chat examples), the KD loss, optimizer
steps under Accelerate, checkpoints, evaluation points and the training-time budget.
Times are seconds unless named minutes. May import: stdlib, torch, tqdm, edgekit.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from edgekit.core.errors import BuildError
from edgekit.workshop import textdata
from edgekit.workshop.distill_settings import DistillSettings


def _kd_loss(s_logits, t_logits, labels, s: DistillSettings, s_hidden=None, t_hidden=None, mask=None,
             ce_weight: float | None = None):
    """KD loss over every position, or only where `mask` [B, L] is true (a chat example's answer).
    `ce_weight` overrides the settings' (0 on an on-policy step: its labels are the student's own samples)."""
    T = s.temperature
    vocab = s_logits.shape[-1]
    s_flat, t_flat = s_logits.reshape(-1, vocab).float(), t_logits.reshape(-1, vocab).float()
    if mask is not None:
        keep = mask.reshape(-1)
        s_flat, t_flat, labels = s_flat[keep], t_flat[keep], labels.reshape(-1)[keep]
    kl = torch.nn.functional.kl_div(torch.log_softmax(s_flat / T, -1), torch.log_softmax(t_flat / T, -1),
                                    log_target=True, reduction="batchmean") * T * T
    ce = torch.nn.functional.cross_entropy(s_flat, labels.reshape(-1))
    loss = s.kl_weight * kl + (s.ce_weight if ce_weight is None else ce_weight) * ce
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


# --- several processes (accelerate launch): logging and clocks that agree across processes ---
def main_process_log(accel, log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` on the main process, a no-op on the others (each message printed once)."""
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
    source: dict


def prepare_chat(settings: DistillSettings, chat_settings, teacher_path, teacher, tokenizer, log, progress):
    """The tokenized chat examples (teacher answers, made or read from their cache), or None
    without `chat_settings`; BuildError when the training or held-out part is empty."""
    from edgekit.workshop import chatdata

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
    return _Chat(train, heldout, {"folder": str(data.folder), "train_examples": len(train),
                                      "heldout_examples": len(heldout),
                                      "generated_seconds": data.generated_seconds})


def is_chat_step(step: int, fraction: float) -> bool:
    """Spread chat steps evenly over training (a low-discrepancy sequence: no long runs of one kind)."""
    return fraction > 0 and (step * 0.6180339887) % 1.0 < fraction


def batch_share(order, step: int, per_step: int, batch_size: int, process_index: int):
    """This process's share of the global batch for `step` (the same windows for any process count)."""
    n = len(order)
    start = (step * per_step) % n
    glob = [order[(start + i) % n] for i in range(per_step)]
    return glob[process_index * batch_size:(process_index + 1) * batch_size]


class TrainingLoop:
    """The training loop: one optimizer step per global batch, checkpoints, evaluation, budget."""

    def __init__(self, settings, budget, accel, teacher, student, optimizer, params, tokenizer, data, chat, state,
                 ckpt, log, clock):
        self.s, self.b, self.accel = settings, budget, accel
        self.teacher, self.student, self.opt, self.params = teacher, student, optimizer, params
        self.pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.data, self.chat, self.state, self.ckpt, self.log, self.clock = data, chat, state, ckpt, log, clock
        self.tokenizer = tokenizer
        self._floor_noted = False  # said once that the time budget ran out before budget.min_steps
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
            from edgekit.workshop.chatdata import chat_scores

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
        """(input ids, targets, answer mask or None, kind) of this process's share of the next step;
        kind is "text", "chat" (the teacher's answers) or "policy" (answers the student samples)."""
        st, s, accel = self.state, self.s, self.accel
        per_step = s.batch_size * accel.num_processes
        if self.chat is not None and is_chat_step(st["step"], s.chat_fraction):
            from edgekit.workshop.chatdata import pad_batch
            from edgekit.workshop.on_policy import is_policy_step, student_answers

            n = st.get("chat_steps", 0)
            items = [self.chat.train[i] for i in batch_share(self.chat_order, n, per_step, s.batch_size, accel.process_index)]
            kind = "policy" if is_policy_step(n, s.on_policy) else "chat"
            if kind == "policy":
                seed = (s.seed * 1_000_003 + n) * 64 + accel.process_index
                stop = {self.tokenizer.eos_token_id} - {None}
                items = student_answers(accel.unwrap_model(self.student), items, s.on_policy_tokens, self.pad_id,
                                        stop, seed, s.chat_seq_len + 1)
            ids, mask = pad_batch(items, self.pad_id)
            return ids[:, :-1].to(accel.device), ids[:, 1:].to(accel.device), mask.to(accel.device), kind
        n = st["step"] - st.get("chat_steps", 0)
        rows = self.data.train[batch_share(self.order, n, per_step, s.batch_size, accel.process_index)].to(accel.device)
        return rows[:, :-1], rows[:, 1:], None, "text"

    def commit(self, parts: dict) -> None:
        """Count a finished step (only after the optimizer step, so an interrupt never skips a batch)."""
        st = self.state
        st["step"] += 1
        st["chat_steps"] = st.get("chat_steps", 0) + int(parts["kind"] != "text")
        if parts["kind"] == "policy":
            st["policy_steps"] = st.get("policy_steps", 0) + 1
        st["tokens_seen"] = st.get("tokens_seen", 0) + parts["tokens"]

    def step(self) -> dict:
        s = self.s
        x, y, mask, kind = self.batch()
        want_hidden = s.hidden_weight > 0
        with torch.no_grad():
            t_out = self.teacher(input_ids=x, output_hidden_states=want_hidden)
        s_out = self.student(input_ids=x, output_hidden_states=want_hidden)
        s_hid = t_hid = None
        if want_hidden:
            s_hid = s_out.hidden_states[1:]
            t_hid = [t_out.hidden_states[i + 1] for i in self.state["keep_layers"]]
        loss, parts = _kd_loss(s_out.logits, t_out.logits, y, s, s_hid, t_hid, mask,
                               ce_weight=0.0 if kind == "policy" else None)
        self.opt.zero_grad(set_to_none=True)
        self.accel.backward(loss)
        self.accel.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return {"loss": loss.item(), "kl": parts["kl"], "tokens": x.numel() * self.accel.num_processes, "kind": kind}

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
            while st["step"] < max_steps and (st["train_seconds"] < max_seconds or st["step"] < b.min_steps):
                if st["train_seconds"] >= max_seconds:
                    self._note_floor(st["step"], min(b.min_steps, max_steps))
                t0 = self.clock()
                parts = self.step()
                self.commit(parts)
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

    def _note_floor(self, step: int, until: float) -> None:
        """Say once that the time budget ran out before the step floor (the run goes on to step `until`)."""
        if not self._floor_noted:
            self._floor_noted = True
            self.log(f"the {self.b.max_minutes:g}-minute budget ran out at step {step}, before the floor of "
                     f"min_steps={self.b.min_steps} (recipe or --min-steps): training on to step {int(until)}; "
                     f"--min-steps 0 stops at the budget")

    def log_point(self, p: dict) -> None:
        chat = (f"; chat answers {p['chat_perplexity_ratio']:.3f}x, agreement {p['chat_agreement']:.3f}"
                if "chat_agreement" in p else "")
        self.log(f"step {p['step']}: held-out perplexity {p['perplexity']:.3f} ({p['ratio']:.3f}x teacher){chat} "
                 f"after {p['minutes']:.1f} min")
