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
                    seed: int, max_tokens: int) -> list[ChatIds]:
    """`items` with each teacher answer replaced by one the student `model` samples (temperature 1,
    no top-k/top-p cut, no repetition penalty) after the same prompt, at most `max_new_tokens` long
    and the whole example at most `max_tokens` (the recipe's chat seq_len + 1). `seed` fixes the
    samples (a resumed run draws the same answers) without touching the training's random state.
    The model's own end-of-turn ids stop an answer too; the model is left in the mode it was in."""
    from transformers import GenerationConfig

    prompts = [c.ids[: c.answer_start] for c in items]
    ids, attention = _left_padded(prompts, pad_id)
    device = next(model.parameters()).device
    eos = getattr(model.generation_config, "eos_token_id", None)
    stop_ids = set(stop_ids) | set([eos] if isinstance(eos, int) else (eos or []))
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                              pad_token_id=pad_id, eos_token_id=sorted(stop_ids) or None)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), generation_config=config)
    finally:
        model.train(was_training)
    new = out[:, ids.shape[1]:].tolist()
    return [ChatIds((prompt + until_stop(tokens, stop_ids))[:max_tokens], len(prompt))
            for prompt, tokens in zip(prompts, new)]
