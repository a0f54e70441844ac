"""On-policy chat steps (full tier: torch and the real stories260k model): the student samples answers
after the training prompts; prompts stay as they were, answers stop at end of turn or the length limit,
the same seed draws the same answers, and the model's train/eval mode is kept."""

import pytest

from edgekit.device.chat_examples import ChatIds

pytestmark = pytest.mark.full

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(shared_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(shared_dir / "models" / "stories260k").float()


def test_policy_steps_are_the_asked_share_spread_over_chat_steps_and_answers_end_at_end_of_turn():
    from edgekit.workshop.distill_settings import DistillSettings
    from edgekit.workshop.on_policy import is_policy_step, until_stop

    for fraction in (0.0, 0.25, 0.5, 1.0):
        picked = [is_policy_step(n, fraction) for n in range(400)]
        assert sum(picked) == pytest.approx(400 * fraction, abs=2)
    assert until_stop([5, 13, 7, 13], {13}) == [5, 13] and until_stop([5, 6], {13}) == [5, 6]
    base = DistillSettings(teacher="t", keep_layers=[0, 1])
    assert DistillSettings(teacher="t", keep_layers=[0, 1], on_policy=0.5).key() != base.key()  # never resumes the other
    quarter = [n for n in range(400) if is_policy_step(n, 0.25)]
    assert max(b - a for a, b in zip(quarter, quarter[1:])) <= 6  # no long runs without one


def test_student_answers_keep_prompts_stop_at_end_of_turn_and_repeat_with_the_seed(model):
    from edgekit.workshop.on_policy import student_answers

    items = [ChatIds([1, 403, 261, 54, 90, 7, 7, 7], 5), ChatIds([1, 78, 300, 5, 5], 3)]  # vocabulary: 512
    model.train()
    a = student_answers(model, items, 10, pad_id=0, stop_ids={13}, seed=5, max_tokens=64)
    assert model.training  # left as it was
    b = student_answers(model, items, 10, pad_id=0, stop_ids={13}, seed=5, max_tokens=64)
    c = student_answers(model, items, 10, pad_id=0, stop_ids={13}, seed=6, max_tokens=64)
    assert a == b and a != c
    for item, ans in zip(items, a):
        assert ans.ids[: ans.answer_start] == item.ids[: item.answer_start]
        answer = ans.ids[ans.answer_start:]
        assert 1 <= len(answer) <= 10
        assert 13 not in answer[:-1]  # cut at the first end of turn, which is kept
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    model.eval()
    short = student_answers(model, items, 40, pad_id=0, stop_ids=set(), seed=1, max_tokens=9)
    assert not model.training
    assert torch.rand(1) == before  # the training's random state is untouched
    assert all(len(c.ids) <= 9 and c.answer_start == i.answer_start for c, i in zip(short, items))
