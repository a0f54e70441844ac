"""Repetition penalties (OpenAI frequency/presence, llama.cpp repeat_penalty) on hand-made logits,
and their effect on greedy generation (fast tier)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Penalties, Sampler

from fakes import FakeTokenizer, RepeatingModel

LOGITS = np.array([2.0, -1.0, 0.5, 3.0, 0.0], dtype=np.float32)


def _penalised(settings: Penalties, prompt: list[int], generated: list[int]) -> list[float]:
    state = settings.track(prompt, len(LOGITS))
    for token in generated:
        state.add(token)
    before = LOGITS.copy()
    out = state.apply(LOGITS)
    assert np.array_equal(LOGITS, before)  # the model's logits buffer is never changed
    return out.tolist()


def test_frequency_penalty_subtracts_count_times_penalty_and_ignores_the_prompt():
    got = _penalised(Penalties(frequency_penalty=0.5), prompt=[3, 3, 3], generated=[0, 0, 2])
    assert got == [1.0, -1.0, 0.0, 3.0, 0.0]  # 2 - 2*0.5, 0.5 - 1*0.5; token 3 only in the prompt


def test_presence_penalty_subtracts_once_per_generated_token():
    got = _penalised(Penalties(presence_penalty=0.75), prompt=[3], generated=[0, 0, 2])
    assert got == [1.25, -1.0, -0.25, 3.0, 0.0]


def test_frequency_and_presence_add_up_and_negative_values_encourage():
    both = _penalised(Penalties(frequency_penalty=0.5, presence_penalty=0.75), [], [0, 0, 2])
    assert both == [0.25, -1.0, -0.75, 3.0, 0.0]  # 2 - (1 + 0.75), 0.5 - (0.5 + 0.75)
    assert _penalised(Penalties(frequency_penalty=-1.0), [], [1, 1]) == [2.0, 1.0, 0.5, 3.0, 0.0]


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits_in_the_window():
    # window = the last 3 tokens of prompt + completion; each token penalised once however often it occurs
    assert _penalised(Penalties(repeat_penalty=2.0, repeat_last_n=3), [3, 0, 0, 1], []) == [1.0, -2.0, 0.5, 3.0, 0.0]
    # a generated token enters the window and pushes the oldest (0) out; a zero logit stays zero
    got = _penalised(Penalties(repeat_penalty=2.0, repeat_last_n=3), [0, 1, 4], [3])
    assert got == [2.0, -2.0, 0.5, 1.5, 0.0]


def test_repeat_last_n_zero_disables_and_minus_one_covers_the_whole_context():
    assert _penalised(Penalties(repeat_penalty=2.0, repeat_last_n=0), [0, 3], [2]) == LOGITS.tolist()
    got = _penalised(Penalties(repeat_penalty=4.0, repeat_last_n=-1), [0] + [4] * 100, [1])
    assert got == [0.5, -4.0, 0.5, 3.0, 0.0]


def test_repeat_penalty_runs_before_the_openai_penalties():
    got = _penalised(Penalties(repeat_penalty=2.0, repeat_last_n=4, presence_penalty=0.5), [], [0, 1])
    assert got == [0.5, -2.5, 0.5, 3.0, 0.0]  # 2/2 - 0.5, -1*2 - 0.5


def test_no_penalty_returns_the_logits_untouched():
    state = Penalties().track([1, 2], len(LOGITS))
    state.add(3)
    assert state.apply(LOGITS) is LOGITS


def _greedy(prompt: str, **penalties) -> str:
    tok = FakeTokenizer()
    sampler = Sampler(0.0, penalties=Penalties(**penalties))
    return drain(generate(RepeatingModel(), tok, tok.encode(prompt), 5, sampler)).text


@pytest.mark.parametrize("prompt,penalties,text", [
    ("b", {}, "aaaaa"),
    ("b", {"repeat_penalty": 2.0, "repeat_last_n": 1}, "ababa"),  # 4/2 < 3, then 3/2 < 4 ...
    ("a", {"repeat_penalty": 2.0, "repeat_last_n": 1}, "babab"),  # the prompt's 'a' is in the window
    ("a", {"frequency_penalty": 0.6}, "aabab"),  # 'a': 4, 3.4, 2.8 < 3; then 2.8 > 2.4; 2.2 < 2.4
    ("a", {"presence_penalty": 1.5}, "abaaa"),  # 'a' 2.5 < 3 once; then 'b' 1.5 < 2.5 for good
])
def test_penalties_change_greedy_choices(prompt, penalties, text):
    assert _greedy(prompt, **penalties) == text
