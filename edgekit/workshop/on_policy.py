"""On-policy distillation (GKD style): on some chat steps the student writes its own answers to the
training prompts (sampled at temperature 1) and the teacher scores every position of them, so the
student learns from the teacher where its own answers drift, not only on the teacher's answers.
Lengths are tokens. May import: stdlib, torch, edgekit.
"""

from __future__ import annotations

import torch

from edgekit.device.chat_examples import ChatIds

_SPREAD = 0.7548776662  # a second irrational step (1/plastic number), independent of the chat/text spread


def is_policy_step(chat_step: int, fraction: float) -> bool:
    """Whether the `chat_step`-th chat step is on-policy; `fraction` of chat steps are, spread evenly."""
    return fraction > 0 and (chat_step * _SPREAD) % 1.0 < fraction


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        attention[i, width - len(p):] = 1
    return ids, attention


def until_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The sampled answer up to and including its first end-of-turn token."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens


@torch.no_grad()
def student_answers(model, items: list[ChatIds], max_new_tokens: int, pad_id: int, stop_ids: set[int],
                    seed: int) -> list[ChatIds]:
    """`items` with each teacher answer replaced by one the student `model` samples (temperature 1,
    no top-k/top-p cut) after the same prompt, at most `max_new_tokens` long; `seed` fixes the
    samples, so a resumed run draws the same answers. The model is left in the mode it was in."""
    prompts = [c.ids[: c.answer_start] for c in items]
    ids, attention = _left_padded(prompts, pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=pad_id, eos_token_id=sorted(stop_ids) or None)
    finally:
        model.train(was_training)
    new = out[:, ids.shape[1]:].tolist()
    answers = []
    for prompt, tokens in zip(prompts, new):
        answer = until_stop(tokens, stop_ids) or tokens[:1]  # at least one token to score
        answers.append(ChatIds(prompt + answer, len(prompt)))
    return answers
