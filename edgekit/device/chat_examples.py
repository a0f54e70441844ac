"""Chat examples (a user prompt and an assistant answer) as the token ids a model is scored on.

One definition for training (edgekit.workshop) and evaluation (device runtime and PyTorch): the prompt is
the chat template rendered for one user turn with the generation prompt, encoded without special
tokens added (the template writes them); the answer is encoded on its own and closed with the
end-of-turn token, exactly the ids generation would produce after that prompt.
A file of examples is JSON Lines: {"prompt": str, "answer": str, ...} per line.
May import: stdlib, edgekit.core, edgekit.device.chat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from edgekit.core.errors import ConfigError
from edgekit.device.chat import render


@dataclass(frozen=True)
class ChatIds:
    """`ids` = prompt ids + answer ids (+ end of turn); positions >= `answer_start` are the answer."""

    ids: list[int]
    answer_start: int

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.answer_start


def prompt_text(prompt: str, template: str | None, bos_token: str = "", eos_token: str = "") -> str:
    """The text a model reads before answering `prompt` as the one user turn."""
    return render([{"role": "user", "content": prompt}], template, bos_token, eos_token)


def example_ids(encode: Callable[[str], list[int]], prompt: str, answer: str, template: str | None,
                end_of_turn_id: int | None, bos_token: str = "", eos_token: str = "") -> ChatIds:
    """Ids of one example; `encode(text)` must not add special tokens."""
    head = encode(prompt_text(prompt, template, bos_token, eos_token))
    tail = encode(answer) + ([end_of_turn_id] if end_of_turn_id is not None else [])
    return ChatIds(head + tail, len(head))


def read_examples(path: Path) -> list[dict]:
    """Examples from a JSON Lines file; a bad line or an empty file is one clear error."""
    if not path.is_file():
        raise ConfigError(f"chat examples file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise ConfigError(f"{path}:{n}: each line must be an object with a non-empty \"prompt\" string")
        if "answer" in rec and not isinstance(rec["answer"], str):
            raise ConfigError(f"{path}:{n}: \"answer\" must be a string")
        out.append(rec)
    if not out:
        raise ConfigError(f"{path}: no examples (the file is empty)")
    return out


def write_examples(path: Path, examples: Iterable[dict]) -> None:
    """Write examples atomically (a partial file never replaces a complete one)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in examples:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
