"""Speculative decoding (edgekit.device.speculative) with toy models: greedy output identical to the
model alone, sampled output distributed as the model's, caches rewound (fast tier)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.device.generate import drain, generate
from edgekit.device.onnx_model import OnnxCausalLM
from edgekit.device.sampling import Penalties, Sampler
from edgekit.device.speculative import Speculation

from fakes import BigramModel, FakeOrtSession, FakeTokenizer, VOCAB


class CountingBigram(BigramModel):
    """A BigramModel that counts forward calls and the positions each one ran."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[int] = []

    def forward(self, token_ids, cache, last_only=False):
        self.calls.append(len(token_ids))
        return super().forward(token_ids, cache, last_only)


PROMPTS = [[0, 2, 3], [0, 5], [0, 7, 7, 4, 9]]


@pytest.mark.parametrize("k", [1, 2, 4, 7])
@pytest.mark.parametrize("penalties", [Penalties(), Penalties(repeat_penalty=1.3, frequency_penalty=0.5)])
def test_greedy_is_token_identical_to_the_model_alone(k, penalties):
    model = BigramModel(vocab=VOCAB, seed=4, max_sequence_length=64)
    draft = BigramModel(vocab=VOCAB, seed=4, noise=3.0, max_sequence_length=64)  # agrees only partly
    spec = Speculation(draft, k=k)
    for prompt in PROMPTS:
        alone = drain(generate(model, FakeTokenizer(), prompt, 30, Sampler(0.0, penalties=penalties)))
        fast = drain(generate(model, FakeTokenizer(), prompt, 30, Sampler(0.0, penalties=penalties),
                              speculation=spec))
        assert fast.token_ids == alone.token_ids and fast.text == alone.text
        assert fast.finish_reason == alone.finish_reason
    assert 0 < spec.accepted < spec.drafted  # the noisy draft is sometimes right, sometimes not
    assert spec.describe()["acceptance_rate"] == round(spec.accepted / spec.drafted, 4)


def test_a_perfect_draft_is_always_accepted_and_saves_passes():
    model = CountingBigram(vocab=VOCAB, seed=1, max_sequence_length=64)
    model.table[:, 1] -= 50.0  # no EOS: all 21 tokens come
    spec = Speculation(BigramModel(vocab=VOCAB, seed=1, max_sequence_length=64), k=4)
    spec.draft.table[:, 1] -= 50.0
    res = drain(generate(model, FakeTokenizer(), [0, 2], 21, Sampler(0.0), speculation=spec))
    assert res.completion_tokens == 21 and res.acceptance_rate == 1.0
    # prefill, then 4 passes of 5 positions give 20 more tokens: 5 model calls instead of 21
    assert model.calls == [2, 5, 5, 5, 5] and res.verify_passes == 4 and res.drafted_tokens == 16


def test_drafting_stops_at_the_context_limit():
    model = BigramModel(vocab=VOCAB, seed=2, max_sequence_length=12)
    model.table[:, 1] -= 50.0
    spec = Speculation(BigramModel(vocab=VOCAB, seed=2, noise=1.0, max_sequence_length=12), k=4)
    alone = drain(generate(model, FakeTokenizer(), [0, 2, 3], 50, Sampler(0.0)))
    fast = drain(generate(model, FakeTokenizer(), [0, 2, 3], 50, Sampler(0.0), speculation=spec))
    assert fast.token_ids == alone.token_ids and fast.completion_tokens == 9  # 12 - 3 prompt tokens


def _marginals(model: BigramModel, prompt_last: int, temperature: float, steps: int) -> list[np.ndarray]:
    """The exact distribution of each of the first `steps` tokens a bigram model samples."""
    def rows():
        z = (model.table + model.noise).astype(np.float64) / temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    trans = rows()
    dist, out = trans[prompt_last], []
    for _ in range(steps):
        out.append(dist)
        dist = dist @ trans
    return out


def test_sampled_tokens_follow_the_models_distribution_not_the_drafts():
    model = BigramModel(vocab=6, seed=4, max_sequence_length=64)
    draft = BigramModel(vocab=6, seed=4, noise=1.5, max_sequence_length=64)
    want = _marginals(model, 3, 1.0, 4)
    drafts = _marginals(draft, 3, 1.0, 4)
    assert max(0.5 * np.abs(w - d).sum() for w, d in zip(want[1:], drafts[1:])) > 0.15  # the test can fail
    spec, n = Speculation(draft, k=3), 4000
    counts = np.zeros((4, 6))
    sampler = Sampler(1.0, seed=11)
    for _ in range(n):
        gen = spec.tokens(model, [0, 3], sampler, 10, _Result())
        for step in range(4):
            counts[step, next(gen)[0]] += 1
    for step in range(1, 4):  # tokens 2..4 come from verify passes
        assert 0.5 * np.abs(counts[step] / n - want[step]).sum() < 0.04, step
    assert 0 < spec.accepted < spec.drafted


class _Result:
    drafted_tokens = accepted_tokens = verify_passes = 0


def test_onnx_rewind_keeps_the_first_tokens_and_the_next_step_continues_there():
    lm = OnnxCausalLM(FakeOrtSession(rows=True), max_sequence_length=32)
    cache = lm.new_cache()
    lm.forward([0, 2, 3, 4], cache)
    lm.forward([5, 6, 7], cache)
    lm.rewind(cache, 5)
    assert cache.length == 5 and all(p.shape[2] == 5 for p in cache.past)
    lm.forward([9], cache)
    feeds = lm.session.feeds[-1]
    assert feeds["position_ids"].tolist() == [[5]] and feeds["attention_mask"].shape == (1, 6)
    assert feeds["past_key_0"].shape[2] == 5
    with pytest.raises(ValueError):
        lm.rewind(cache, 7)
