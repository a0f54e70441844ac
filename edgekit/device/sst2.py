"""SST-2 sentiment accuracy by log-likelihood: the label whose continuation the model finds likelier wins.

For each sentence the model reads the prompt followed by each candidate answer (teacher forcing) and
the candidate with the larger summed log-likelihood (nats) over its answer tokens is the prediction;
no text is generated. A chat model is scored with two phrasings by default (its chat prompt and the
plain one). A model with a chat template reads a chat prompt and the candidates are assistant
answers closed by the end-of-turn token (chat_examples.example_ids); a model without one reads a plain
"Review: ...\\nSentiment:" prompt and the candidates " negative" / " positive".
Data: GLUE SST-2 validation as TSV `sentence<TAB>label` (0 negative, 1 positive) with a header line.
A scorer is the interface described in edgekit.device.chat_quality.
May import: stdlib, numpy, edgekit.core, edgekit.device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import ConfigError
from edgekit.device.chat_examples import ChatIds
from edgekit.device.chat_quality import score_alternatives, scorer_example_ids

DATA_REF = "shared:data/sst2/glue_validation.tsv"
DEFAULT_SENTENCES = 200


@dataclass(frozen=True)
class Phrasing:
    """A prompt (with `{sentence}`) and the answers for label 0 and label 1; `chat` uses the chat template."""

    prompt: str
    answers: tuple[str, str]
    chat: bool


PHRASINGS = {
    "chat-question": Phrasing("Is the sentiment of this movie review positive or negative? Answer with one word.\n"
                              "Review: {sentence}", ("negative", "positive"), chat=True),
    "chat-review-first": Phrasing("Review: {sentence}\nWas this movie review positive or negative? "
                                  "Answer with one word.", ("Negative", "Positive"), chat=True),
    "plain": Phrasing("Review: {sentence}\nSentiment:", (" negative", " positive"), chat=False),
}
DEFAULT_CHAT_PHRASING = "chat-question"


def read_sst2(path: Path, limit: int | None = DEFAULT_SENTENCES) -> list[tuple[str, int]]:
    """(sentence, label) rows, the first `limit` of the file (None: all); bad files are one clear error."""
    if not path.is_file():
        raise ConfigError(f"SST-2 file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        sentence, _, label = line.rpartition("\t")
        if label.strip() not in ("0", "1") or not sentence.strip():
            raise ConfigError(f"{path}:{n}: expected 'sentence<TAB>label' with label 0 or 1")
        rows.append((sentence.strip(), int(label)))
        if limit is not None and len(rows) == limit:
            break
    if not rows:
        raise ConfigError(f"{path}: no sentences (expected a header line, then 'sentence<TAB>label' lines)")
    return rows


def phrasing_for(scorer, name: str | None = None) -> str:
    """The named phrasing, or the default: the chat one when the model has a chat template, else plain."""
    if name is None:
        return DEFAULT_CHAT_PHRASING if scorer.chat_template else "plain"
    if name not in PHRASINGS:
        raise ConfigError(f"unknown SST-2 phrasing '{name}' (known: {', '.join(PHRASINGS)})")
    return name


def phrasings_for(scorer, names: str | None = None) -> list[str]:
    """The phrasings to score: the named ones (comma-separated), or by default the model's own
    (phrasing_for) and, for a chat model, `plain` too: a chat student can keep the teacher's sense of
    sentiment (plain prompt) yet lose its one-word chat answer, and a user should see both."""
    if names is None:
        first = phrasing_for(scorer)
        return [first] + (["plain"] if first != "plain" else [])
    out = list(dict.fromkeys(phrasing_for(scorer, n.strip()) for n in names.split(",") if n.strip()))
    if not out:
        raise ConfigError(f"no SST-2 phrasing named in '{names}' (known: {', '.join(PHRASINGS)})")
    return out


def candidate_ids(scorer, phrasing: Phrasing, sentence: str, answer: str) -> ChatIds:
    prompt = phrasing.prompt.format(sentence=sentence)
    if phrasing.chat:
        return scorer_example_ids(scorer, prompt, answer)
    head = scorer.encode(prompt, add_special_tokens=True)
    ids = scorer.encode(prompt + answer, add_special_tokens=True)
    start = next((i for i, (a, b) in enumerate(zip(head, ids)) if a != b), min(len(head), len(ids)))
    return ChatIds(ids, start)  # the answer is what the prompt's ids do not already cover


def margin(scorer, phrasing: Phrasing, sentence: str) -> float:
    """Log-likelihood of the positive answer minus that of the negative one (nats; > 0 favours label 1)."""
    neg, pos = score_alternatives(scorer, [candidate_ids(scorer, phrasing, sentence, a) for a in phrasing.answers])
    return neg.nll - pos.nll


def predict(scorer, phrasing: Phrasing, sentence: str) -> int:
    """0 or 1: the label whose answer has the larger log-likelihood (a tie goes to label 0)."""
    return int(margin(scorer, phrasing, sentence) > 0)


def sst2_accuracy(scorer, rows: list[tuple[str, int]], phrasing_name: str | None = None) -> dict:
    """{"accuracy", "sentences", "phrasing", "predicted_positive", "majority_baseline"} over `rows`."""
    name = phrasing_for(scorer, phrasing_name)
    phrasing = PHRASINGS[name]
    preds = [predict(scorer, phrasing, s) for s, _ in rows]
    correct = sum(p == label for p, (_, label) in zip(preds, rows))
    positives = sum(label for _, label in rows)
    return {"accuracy": round(correct / len(rows), 4), "sentences": len(rows), "phrasing": name,
            "predicted_positive": round(sum(preds) / len(rows), 4),
            "majority_baseline": round(max(positives, len(rows) - positives) / len(rows), 4)}
