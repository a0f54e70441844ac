"""Chat quality from a model's logits: chat-answer perplexity and teacher-forced top-1 agreement.

For each example (prompt, reference answer) the ids come from chat_examples.example_ids only (prompt
template + answer + end-of-turn token). The model reads the ids once (teacher forcing); the answer
positions are scored:
  chat-answer perplexity = exp(mean negative log-likelihood, nats, over answer tokens incl. end of turn)
  top-1 agreement        = fraction of answer positions where the model's argmax is the reference token.
A scorer is a `Scorer`: `logits(ids) -> np.ndarray [len(ids), vocab]` (row i predicts ids[i + 1]),
`encode(text, add_special_tokens)`, `chat_template`, `bos_token`, `eos_token` and `end_of_turn_id`
(edgekit.device.scorer for bundles, edgekit.workshop.evaluate for PyTorch models).
May import: stdlib, numpy, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgekit.device.chat_examples import ChatIds, example_ids
from edgekit.device.quality import nll_sum


class Scorer:
    """Base of the scorers. `continuation_logits` may be overridden to read a shared prefix once."""

    chat_template: str | None = None
    bos_token = eos_token = ""
    end_of_turn_id: int | None = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def continuation_logits(self, prefix: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        """For each continuation c: the rows predicting c (the prefix's last row, then c[:-1]'s rows)."""
        return [self.logits(prefix + c[:-1])[len(prefix) - 1:] for c in continuations]


@dataclass(frozen=True)
class AnswerScore:
    """Summed NLL (nats), argmax hits and token count over the answer positions of some examples."""

    nll: float
    correct: int
    tokens: int

    def __add__(self, other: "AnswerScore") -> "AnswerScore":
        return AnswerScore(self.nll + other.nll, self.correct + other.correct, self.tokens + other.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def agreement(self) -> float:
        return self.correct / self.tokens


def answer_score(logits: np.ndarray, ex: ChatIds) -> AnswerScore:
    """Score the answer of `ex` from the logits of `ex.ids[:-1]` (row i predicts ids[i + 1])."""
    if ex.answer_start < 1 or ex.answer_tokens < 1:
        raise ValueError("an example needs at least one prompt token and one answer token")
    rows = np.asarray(logits)[ex.answer_start - 1: len(ex.ids) - 1]
    targets = np.asarray(ex.ids[ex.answer_start:])
    if len(rows) != len(targets):
        raise ValueError(f"{len(rows)} logit rows for {len(targets)} answer tokens")
    correct = int((rows.argmax(axis=1) == targets).sum())
    return AnswerScore(nll_sum(rows, targets), correct, len(targets))


def scorer_example_ids(scorer, prompt: str, answer: str) -> ChatIds:
    """The ids of one example for this scorer's tokenizer and chat template (chat_examples' definition)."""
    return example_ids(lambda t: scorer.encode(t, add_special_tokens=False), prompt, answer, scorer.chat_template,
                       scorer.end_of_turn_id, scorer.bos_token, scorer.eos_token)


def score_ids(scorer, ex: ChatIds) -> AnswerScore:
    return answer_score(scorer.logits(ex.ids[:-1]), ex)


def score_alternatives(scorer, exs: list[ChatIds]) -> list[AnswerScore]:
    """Scores of examples that differ only in their answers: the shared prompt is read once when the
    scorer can (PyTorch reuses its cache); examples with different prompts are scored one by one."""
    prefix = exs[0].ids[:exs[0].answer_start]
    if any(e.ids[:e.answer_start] != prefix for e in exs):
        return [score_ids(scorer, e) for e in exs]
    rows = scorer.continuation_logits(prefix, [e.ids[e.answer_start:] for e in exs])
    return [AnswerScore(nll_sum(r, np.asarray(e.ids[e.answer_start:])),
                        int((r.argmax(axis=1) == np.asarray(e.ids[e.answer_start:])).sum()), e.answer_tokens)
            for r, e in zip(rows, exs)]


def chat_metrics(scorer, examples: list[dict]) -> dict:
    """{"perplexity", "agreement", "examples", "tokens"} over examples with a reference "answer"."""
    scored = [e for e in examples if e.get("answer")]
    if not scored:
        raise ValueError("no chat example has a reference answer to score")
    total = AnswerScore(0.0, 0, 0)
    for e in scored:
        total = total + score_ids(scorer, scorer_example_ids(scorer, e["prompt"], e["answer"]))
    return {"perplexity": round(total.perplexity, 4), "agreement": round(total.agreement, 4),
            "examples": len(scored), "tokens": total.tokens}


def end_of_turn_id(eos_token: str | None, token_to_id, eos_token_ids) -> int | None:
    """The token that closes an assistant turn: the tokenizer's eos token string when it has an id
    (SmolLM2-Instruct: <|im_end|>), else the smallest of the model's eos ids, else None."""
    if eos_token:
        tid = token_to_id(eos_token)
        if tid is not None:
            return int(tid)
    ids = sorted(eos_token_ids or [])
    return ids[0] if ids else None
