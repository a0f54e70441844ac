"""Chat data for distillation: prompt cleaning, held-out split without leakage, corpus tasks, the
student-vs-teacher gate and the budget -> depth rule (fast tier)."""

import json

import pytest

from edgekit.workshop.chatdata import clean_question, corpus_prompts, split_prompts
from edgekit.workshop.student_gate import apply_student_gate, student_gate_failures
from edgekit.core.errors import BuildError


def test_clean_question_keeps_one_real_question():
    assert clean_question('"What makes the sky blue?"\nAnd more text') == "What makes the sky blue?"
    assert clean_question("Question: How do bees fly?") == "How do bees fly?"
    assert clean_question("Bees are insects.") is None  # not a question
    assert clean_question("Why?") is None  # too short


def test_held_out_prompts_never_leak_into_training():
    prompts = [{"prompt": "What is the capital city of France?", "source": "self-instruct"},
               {"prompt": "How do volcanoes erupt?", "source": "self-instruct"},
               {"prompt": "How do volcanoes erupt?", "source": "self-instruct"},  # duplicate
               {"prompt": "Why is the ocean salty?", "source": "self-instruct"}]
    out = split_prompts(prompts, ["What is the capital of France?"], fraction=0.0, seed=0)
    by = {p["prompt"]: p["split"] for p in out}
    assert by["What is the capital of France?"] == "heldout"
    assert "What is the capital city of France?" not in by  # shares most words with a held-out prompt
    assert by["How do volcanoes erupt?"] == "train" and by["Why is the ocean salty?"] == "train"
    assert len(out) == 3  # the duplicate is dropped


def test_random_share_is_held_out():
    prompts = [{"prompt": f"Question number {i} about topic {i * 7}?", "source": "self-instruct"} for i in range(200)]
    out = split_prompts(prompts, [], fraction=0.25, seed=3)
    held = sum(p["split"] == "heldout" for p in out)
    assert 25 <= held <= 75


def test_corpus_prompts_come_from_the_training_part_only(tmp_path):
    paras = [f"Story {i}: " + "Tom had a red ball and he played with it every day in the park. " * 3
             for i in range(40)]
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(paras))
    out = corpus_prompts([f], 100, eval_fraction=0.25, seed=0)
    used = {int(p["prompt"].split("Story ")[1].split(":")[0]) for p in out}
    assert used and max(used) < 31  # the last quarter (stories 31-39) is the held-out tail
    assert all(p["source"] == "corpus" and "\n\n" in p["prompt"] for p in out)



def test_classify_prompts_are_short_passages_of_the_training_part(tmp_path):
    from edgekit.workshop.chatdata import CLASSIFY_TASKS, classify_prompts

    paras = [f"Story {i} begins. Tom had a red ball and he was very happy. He played in the park all day."
             for i in range(40)]
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(paras))
    out = classify_prompts([f], 30, eval_fraction=0.25, seed=0)
    assert len(out) == 30 and all(p["source"] == "classify" for p in out)
    tasks = {p["prompt"].split("\n\n")[0] for p in out}
    assert tasks == set(CLASSIFY_TASKS)  # the wordings take turns
    passages = [p["prompt"].split("\n\n", 1)[1] for p in out]
    assert all(40 <= len(x) <= 300 and x.count(".") <= 2 for x in passages)  # at most two sentences
    used = {int(x.split("Story ")[1].split(" ")[0]) for x in passages if "Story " in x}
    assert used and max(used) < 31  # never the held-out tail
    assert classify_prompts([f], 30, eval_fraction=0.25, seed=0) == out  # the same seed, the same prompts


def test_settings_key_ignores_a_later_field_at_its_default():
    from edgekit.workshop.chatdata import ChatSettings

    s = ChatSettings(teacher_key="t", topics=["rivers"], self_instruct=1, corpus_prompts=0, corpus_files=[],
                     heldout_prompts=["Why?"])
    # The key of these settings before classify_prompts existed (data cached then keeps its folder).
    assert s.key() == "ca8b2e615f68f598"
    assert ChatSettings(**{**s.__dict__, "classify_prompts": 4}).key() != s.key()

LIMITS = {"max_text_perplexity_ratio": 1.5, "max_chat_perplexity_ratio": 2.0, "min_chat_agreement": 0.6}


def _metrics(text_ratio, chat_ratio, agreement):
    return {"perplexity": {"wiki": {"teacher": 10.0, "student": 10.0 * text_ratio, "ratio": text_ratio}},
            "chat": {"teacher": {"perplexity": 2.0, "agreement": 1.0}, "student": {"perplexity": 2.0 * chat_ratio,
                     "agreement": agreement}, "perplexity_ratio": chat_ratio}}


def test_student_gate_names_both_numbers():
    fails, figures = student_gate_failures(_metrics(1.7, 2.5, 0.5), LIMITS)
    assert len(fails) == 3
    assert "student perplexity 17.000 vs teacher 10.000 = 1.700x > 1.5x" in fails[0]
    assert "5.000 vs teacher 2.000 = 2.500x > 2x" in fails[1]
    assert "agreement 0.500 (teacher 1.000) < 0.6" in fails[2]
    assert figures["chat"]["perplexity_ratio"] == 2.5
    assert student_gate_failures(_metrics(1.2, 1.5, 0.7), LIMITS)[0] == []


def test_student_gate_enforced_or_recorded():
    logs = []
    with pytest.raises(BuildError, match="student-vs-teacher gate failed.*--no-gate"):
        apply_student_gate(_metrics(1.7, 1.0, 0.9), LIMITS, True, logs.append)
    rec = apply_student_gate(_metrics(1.7, 1.0, 0.9), LIMITS, False, logs.append)
    assert rec["passed"] is False and rec["enforced"] is False and logs and "packaged anyway" in logs[-1]
    no_chat = {"perplexity": _metrics(1.0, 1.0, 1.0)["perplexity"]}
    fails, figures = student_gate_failures(no_chat, LIMITS)
    assert fails == [] and "do not apply" in figures["chat"]["skipped"]


def test_budget_picks_the_depth():
    from edgekit.workshop.distill_settings import layers_for_budget

    student = {"auto_layers": 15, "budget_minutes": [5.0, 20.0], "budget_layers": [24, 20]}
    assert layers_for_budget(student, 5)[0] == 24
    assert layers_for_budget(student, 10)[0] == 20
    n, why = layers_for_budget(student, 60)
    assert n == 15 and "over 20 min" in why
    assert layers_for_budget(student, 0)[0] == 15  # no time limit: the full-quality choice


def test_chat_steps_and_process_slices():
    pytest.importorskip("torch")
    from edgekit.workshop.distill_loop import batch_share, is_chat_step

    chat = sum(is_chat_step(i, 0.75) for i in range(1000))
    assert 740 <= chat <= 760
    order = list(range(10))
    both = batch_share(order, 3, 4, 2, 0) + batch_share(order, 3, 4, 2, 1)
    assert both == batch_share(order, 3, 4, 4, 0) == [2, 3, 4, 5]  # 2 processes x 2 = 1 process x 4


def test_clean_question_takes_the_question_out_of_its_wrapping():
    assert clean_question('A curious person might ask, "What is the moon made of?') == "What is the moon made of?"
    assert clean_question("Can you provide a short answer to the question: What type of animal is a whale?") == \
        "What type of animal is a whale?"
    assert clean_question('What is the answer to the question "How many days are in a year?') == \
        "How many days are in a year?"
    assert clean_question("What a delightful topic! Why do cats purr?") == "Why do cats purr?"
    # questions about asking questions are not prompts worth an answer
    assert clean_question("What would that question be?") is None
    assert clean_question("What would a curious person want to know about gardening?") is None
    assert clean_question("Can you provide a simple math question that has a short answer?") is None
    # a plain question is kept whole: abbreviations, colons and quoted questions inside it do not cut it
    assert clean_question("Who was Mr. Darcy in Pride and Prejudice?") == "Who was Mr. Darcy in Pride and Prejudice?"
    assert clean_question("What is the title of the book: Harry Potter and the Stone?") == \
        "What is the title of the book: Harry Potter and the Stone?"
    assert clean_question('Why did Shakespeare write "Wherefore art thou Romeo?" in his play?') == \
        'Why did Shakespeare write "Wherefore art thou Romeo?" in his play?'
    assert clean_question('What do you mean by "Sports science" when I talk about sports?') == \
        'What do you mean by "Sports science" when I talk about sports?'
    # a quoted word inside a plain question keeps the whole question
    quoted = 'What does the word "capital" mean in economics?'
    assert clean_question(quoted) == quoted


class _Killed(Exception):
    pass


class _ScriptedTeacher:
    """Stands in for TeacherGenerator: answers each request with the next scripted text; a run that
    has used up its script is killed."""

    def __init__(self, texts):
        self.models, self.texts, self.requests = [None], list(texts), []

    def map(self, fn, items):
        return [fn(None, item) for item in items]

    def answer(self, prompt, max_new_tokens, sampler=None, model=None):
        if not self.texts:
            raise _Killed
        self.requests.append(prompt)
        return self.texts.pop(0), True


class _Bar:
    def update(self, n):
        pass


def test_fact_questions_are_written_to_their_own_file_and_resume(tmp_path):
    from edgekit.workshop.chatdata import FACT_REQUEST, ChatSettings, teacher_questions

    s = ChatSettings(teacher_key="t", topics=["rivers", "birds"], self_instruct=0, corpus_prompts=0, corpus_files=[],
                     heldout_prompts=[], fact_questions=2)
    gen = _ScriptedTeacher(['Question: "What is the longest river in Africa?"', "Birds are nice."])
    with pytest.raises(_Killed):  # tries 0 and 1 answered (one kept), killed asking try 2
        teacher_questions(gen, s, tmp_path, _Bar(), "fact")
    assert gen.requests == [FACT_REQUEST.format(topic="rivers"), FACT_REQUEST.format(topic="birds")]
    kept = [json.loads(line) for line in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert [(q["prompt"], q["source"]) for q in kept] == [("What is the longest river in Africa?", "fact")]
    # the next run keeps what was written and goes on from the try after the last kept one
    gen2 = _ScriptedTeacher(["Which bird cannot fly?"])
    again = teacher_questions(gen2, s, tmp_path, _Bar(), "fact")
    assert [q["prompt"] for q in again] == ["What is the longest river in Africa?", "Which bird cannot fly?"]
    assert gen2.requests == [FACT_REQUEST.format(topic="birds")]  # try 1 -> topic 1
    assert not (tmp_path / "questions.jsonl").exists()
    with pytest.raises(ValueError, match="unknown question kind"):
        teacher_questions(gen2, s, tmp_path, _Bar(), "facts")


def test_chat_prompt_cap_is_split_in_proportion_and_adds_up():
    from edgekit.workshop.distill_settings import capped_counts

    assert capped_counts([100, 60, 40], None) == [100, 60, 40]
    assert capped_counts([100, 60, 40], 500) == [100, 60, 40]
    assert capped_counts([100, 60, 40], 20) == [10, 6, 4]
    for counts in ([5, 5, 0], [3, 3, 0], [1, 1, 0], [7, 0, 2], [1, 2, 3]):
        for cap in range(1, sum(counts)):
            out = capped_counts(counts, cap)
            assert sum(out) == cap and all(o >= 0 for o in out), (counts, cap, out)
            assert all(o == 0 for o, c in zip(out, counts) if c == 0), (counts, cap, out)  # a kind turned off stays off
