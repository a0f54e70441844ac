"""Chat-data prompts built from the training text: tasks on paragraphs and one-word judgements on short
passages, never from a file's held-out tail (edgekit.workshop.textdata.split_heldout).
May import: stdlib, edgekit.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

CORPUS_TASKS = (
    "Summarize this story in one sentence.",
    "Give this story a short title.",
    "Who is the main character of this story, and what happens to them?",
    "What lesson does this story teach?",
)
# One-word judgements on short passages of the training text (recipe `[chat] classify_prompts`, off by
# default: measured in docs/distillation.md): the teacher's answers to a classification request, for a
# student that lost the one-word chat answer's calibration (SST-2). Worded unlike the SST-2 prompts
# `edgekit eval` scores, and never on a movie review.
CLASSIFY_TASKS = (
    "Is the mood of this passage positive or negative? Answer with one word.",
    "Does this text sound happy or sad? Answer in one word.",
    "Is the writer's tone here positive, negative or neutral? Reply with one word.",
    "Would you call this passage cheerful or gloomy? One word, please.",
)


def _training_paragraphs(files: list[Path], eval_fraction: float) -> list[str]:
    from edgekit.workshop.textdata import read_text, split_heldout

    paragraphs = []
    for f in files:
        train, _ = split_heldout(read_text(f), eval_fraction)
        paragraphs += [p.strip() for p in train.split("\n\n") if p.strip()]
    return paragraphs


def _tasks_on(rng: random.Random, texts: list[str], count: int, tasks: tuple[str, ...], source: str) -> list[dict]:
    """`count` of `texts` picked by `rng`, each under one of `tasks` in turn."""
    picked = rng.sample(texts, min(count, len(texts)))
    return [{"prompt": f"{tasks[i % len(tasks)]}\n\n{p}", "source": source} for i, p in enumerate(picked)]


def corpus_prompts(files: list[Path], count: int, eval_fraction: float, seed: int) -> list[dict]:
    """Tasks on paragraphs of the training part of `files` (150-700 characters each)."""
    paragraphs = [p for p in _training_paragraphs(files, eval_fraction) if 150 <= len(p) <= 700]
    return _tasks_on(random.Random(seed), paragraphs, count, CORPUS_TASKS, "corpus")


def classify_prompts(files: list[Path], count: int, eval_fraction: float, seed: int) -> list[dict]:
    """One-word judgement tasks (CLASSIFY_TASKS) on 1-2 sentence passages (40-300 characters) of the
    training part of `files`, the way a short review is one or two sentences."""
    rng = random.Random(seed + 104_729)  # other passages than corpus_prompts picks
    passages = []
    for p in _training_paragraphs(files, eval_fraction):
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(p.split()))
        passages += [" ".join(sentences[i: i + 2]) for i in range(0, len(sentences), 2)]
    return _tasks_on(rng, [p for p in passages if 40 <= len(p) <= 300], count, CLASSIFY_TASKS, "classify")
