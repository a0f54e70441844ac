"""Sentence-encoder distillation (e.g. all-MiniLM-L6-v2 -> 3 layers) and STS-B evaluation.

The student keeps chosen teacher layers and learns to reproduce the teacher's mean-pooled
sentence embedding: loss = (1 - cosine) + mse_weight * MSE, on sentences from the recipe's
training files (STS-B train pairs by default; the test split is only evaluated on).
Evaluation: Spearman correlation between cosine similarity of the two sentences' embeddings and
the gold 0-5 score, on STS-B test (`sts-test.csv`, tab-separated, no quoting).
May import: stdlib, torch, transformers, scipy, edgekit.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from edgekit.workshop import student as student_mod
from edgekit.workshop import textdata
from edgekit.workshop.distill_settings import budget_limits
from edgekit.core.errors import ConfigError


def read_sts(path: Path) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) rows of an STS-benchmark csv."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(r) >= 7:
                rows.append((r[5], r[6], float(r[4])))
    if not rows:
        raise ConfigError(f"{path}: no STS rows (expected tab-separated genre, file, year, id, score, s1, s2)")
    return rows


def read_sentences(path: Path) -> list[str]:
    """Training sentences: both sides of STS rows for .csv files, non-empty lines otherwise."""
    if path.suffix == ".csv":
        return [s for a, b, _ in read_sts(path) for s in (a, b)]
    return [ln.strip() for ln in textdata.read_text(path).splitlines() if len(ln.strip()) > 20]


def load_encoder(path: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(str(path), dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(str(path))


def embed(model, tokenizer, sentences: list[str], max_len: int = 128, grad: bool = False) -> torch.Tensor:
    """Mean-pooled (attention-masked) last hidden states, [N, hidden]."""
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.set_grad_enabled(grad):
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def sts_spearman(model, tokenizer, rows: list[tuple[str, str, float]], batch: int = 64) -> float:
    from scipy.stats import spearmanr

    sims = []
    for i in range(0, len(rows), batch):
        part = rows[i: i + batch]
        a = embed(model, tokenizer, [r[0] for r in part])
        b = embed(model, tokenizer, [r[1] for r in part])
        sims += torch.nn.functional.cosine_similarity(a, b).tolist()
    return float(spearmanr(sims, [r[2] for r in rows]).statistic)


def distill_encoder(teacher_path: Path, keep_layers: list[int], train_files: list[Path], eval_file: Path,
                    out_dir: Path, max_minutes: float = 10.0, max_steps: int = 0, min_steps: int = 0, batch_size: int = 32,
                    learning_rate: float = 1e-4, mse_weight: float = 1.0, seed: int = 0,
                    log=print, clock=time.monotonic) -> dict:
    """Distil an encoder; save it (HF folder + sentence-transformers pooling files) to out_dir."""
    torch.manual_seed(seed)
    teacher, tok = load_encoder(teacher_path)
    teacher.requires_grad_(False)
    student = student_mod.make_student(teacher, keep_layers)
    student.requires_grad_(True)
    sentences = [s for f in train_files for s in read_sentences(f)]
    rows = read_sts(eval_file)
    log(f"encoder distillation: {len(sentences):,} training sentences, {len(rows)} STS pairs for evaluation")
    teacher_rho = sts_spearman(teacher, tok, rows)
    start_rho = sts_spearman(student, tok, rows)
    opt = torch.optim.AdamW(student.parameters(), lr=learning_rate)
    rng = random.Random(seed)
    steps, seconds, limit = 0, 0.0, (max_minutes * 60 if max_minutes > 0 else float("inf"))
    student.train()
    while (seconds < limit or steps < min_steps) and (max_steps == 0 or steps < max_steps):
        t0 = clock()
        batch = rng.sample(sentences, min(batch_size, len(sentences)))
        target = embed(teacher, tok, batch)
        pred = embed(student, tok, batch, grad=True)
        loss = (1 - torch.nn.functional.cosine_similarity(pred, target).mean()) + \
            mse_weight * torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        seconds += clock() - t0
    student.eval()
    rho = sts_spearman(student, tok, rows)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for extra in ("modules.json", "sentence_bert_config.json", "1_Pooling"):  # sentence-transformers layout
        src = teacher_path / extra
        if src.is_dir():
            shutil.copytree(src, tmp / extra)
        elif src.is_file():
            shutil.copyfile(src, tmp / extra)
    counts_t, counts_s = student_mod.parameter_counts(teacher), student_mod.parameter_counts(student)
    metrics = {
        "keep_layers": sorted(keep_layers), "steps": steps, "train_minutes": round(seconds / 60, 3),
        "parameters": {"teacher": counts_t, "student": counts_s,
                       "layer_ratio": round(counts_s["layers"] / counts_t["layers"], 4)},
        "sts": {eval_file.name: {"teacher": round(teacher_rho, 4), "student_before": round(start_rho, 4),
                                 "student": round(rho, 4), "ratio": round(rho / teacher_rho, 4), "pairs": len(rows)}},
    }
    (tmp / "distill_metrics.json").write_text(json.dumps(metrics, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return metrics


def distill_encoder_cli(recipe, teacher, keep_layers, data, limits: tuple, out) -> dict:
    """`edgekit distill` for feature-extraction recipes (restart is implied: runs are short). `limits`:
    the CLI's (max_minutes, max_steps, min_steps), None where the recipe's value applies."""
    import click

    from edgekit.workshop.teacher import resolve_teacher, teacher_from_cli

    t = recipe.teacher
    path = (resolve_teacher(teacher_from_cli(teacher)) if teacher
            else resolve_teacher(t["source"], t["file"], t["sha256"]))
    d = recipe.data["distill"]
    train = textdata.expand_paths(list(data) or recipe.data["data"]["train"])
    (eval_file,) = textdata.expand_paths(recipe.data["data"]["eval"][:1])
    out = out or Path("students") / recipe.name
    m = distill_encoder(path, list(keep_layers or recipe.student["keep_layers"]), train, eval_file, out,
                        **budget_limits(d, *limits),
                        batch_size=d["batch_size"], learning_rate=d["learning_rate"],
                        log=lambda msg: click.echo(msg, err=True))
    for name, r in m["sts"].items():
        click.echo(f"{name}: STS-B Spearman teacher {r['teacher']:.4f}, student {r['student']:.4f} "
                   f"({r['ratio']:.3f}x; {r['student_before']:.4f} before training)")
    click.echo(f"student: layers {m['keep_layers']}, {m['steps']} steps in {m['train_minutes']:.1f} min -> {out}")
    return m


def eval_encoder(model_ref: str, eval_refs: list[str]) -> dict:
    from edgekit.workshop.teacher import resolve_teacher, teacher_from_cli

    model, tok = load_encoder(resolve_teacher(teacher_from_cli(model_ref)))
    out = {}
    for f in textdata.expand_paths(eval_refs):
        rows = read_sts(f)
        out[f.name] = {"spearman": round(sts_spearman(model, tok, rows), 4), "pairs": len(rows)}
    return {"model": model_ref, "evaluated_with": "PyTorch fp32", "sts": out}
