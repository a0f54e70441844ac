"""Chat metrics, SST-2 scoring and the side-by-side table with hand-made logits (fast tier: no torch)."""

import json
import math

import numpy as np
import pytest

from conftest import run_cli
from edgekit.workshop.eval_table import compare, format_table
from edgekit.core.errors import ConfigError
from edgekit.device.chat_examples import ChatIds
from edgekit.device.chat_quality import Scorer, answer_score, chat_metrics, end_of_turn_id
from edgekit.device.sst2 import PHRASINGS, phrasing_for, read_sst2, sst2_accuracy

VOCAB = 300  # char codes < 256, end of turn 299


class FakeScorer(Scorer):
    """Chars as ids; logits put `boost` nats on `favour`'s first char where the answer starts (after
    "Assistant:") and are zero everywhere else."""

    end_of_turn_id = 299

    def __init__(self, favour: str = "", boost: float = 5.0):
        self.favour, self.boost, self.calls = favour, boost, []

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 256 for c in text]

    def logits(self, ids):
        self.calls.append(list(ids))
        out = np.zeros((len(ids), VOCAB))
        text = "".join(chr(i) for i in ids)
        at = text.rfind("Assistant:")
        if self.favour and at >= 0:  # the row that reads the prompt's last char predicts the answer's first
            out[at + len("Assistant:") - 1, ord(self.favour[0])] = self.boost
        return out


def test_answer_score_exact_values():
    # ids: prompt [5, 6], answer [1, 2] + end of turn 3; logits of ids[:-1] = 4 rows over a vocab of 4
    ex = ChatIds([5, 6, 1, 2, 3], answer_start=2)
    logits = np.zeros((4, 4))
    logits[1, 1] = math.log(3)  # row 1 predicts ids[2] = 1: p = 3/6, argmax right
    logits[2, 0] = 10.0  # row 2 predicts ids[3] = 2: p = 1/(e^10 + 3), argmax wrong (0)
    logits[3, 3] = math.log(2)  # row 3 predicts ids[4] = 3: p = 2/5, argmax right
    s = answer_score(logits, ex)
    nll = -math.log(0.5) + math.log(math.exp(10) + 3) - math.log(0.4)
    assert s.tokens == 3 and s.correct == 2 and s.nll == pytest.approx(nll)
    assert s.perplexity == pytest.approx(math.exp(nll / 3)) and s.agreement == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="logit rows"):
        answer_score(logits[:3], ex)


def test_chat_metrics_uniform_model_is_vocab_perplexity():
    scorer = FakeScorer()
    m = chat_metrics(scorer, [{"prompt": "Hi", "answer": "ab"}, {"prompt": "Yo"}, {"prompt": "Ok", "answer": "c"}])
    assert m["examples"] == 2 and m["tokens"] == 3 + 2  # answers + end of turn each
    assert m["perplexity"] == pytest.approx(VOCAB) and m["agreement"] == 0.0  # all-zero logits: argmax is id 0
    assert scorer.calls[0] == [ord(c) for c in "User: Hi\nAssistant:ab"]  # ids[:-1]: the end of turn is a target
    with pytest.raises(ValueError, match="no chat example"):
        chat_metrics(scorer, [{"prompt": "Hi"}])


def test_end_of_turn_id_prefers_the_eos_token_string():
    ids = {"<|im_end|>": 2}
    assert end_of_turn_id("<|im_end|>", ids.get, [0, 2]) == 2
    assert end_of_turn_id("</x>", ids.get, [7, 5]) == 5
    assert end_of_turn_id("", ids.get, []) is None


def _sst2(tmp_path, rows):
    path = tmp_path / "sst2.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return path


def test_sst2_accuracy_follows_the_favoured_label(tmp_path):
    rows = read_sst2(_sst2(tmp_path, [("a fine film", 1), ("dull", 0), ("great", 1)]))
    scorer = FakeScorer(favour="positive")
    scorer.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"
    r = sst2_accuracy(scorer, rows, "chat-question")
    assert r == {"accuracy": pytest.approx(2 / 3, abs=1e-4), "sentences": 3, "phrasing": "chat-question",
                 "predicted_positive": 1.0, "majority_baseline": pytest.approx(2 / 3, abs=1e-4)}
    r = sst2_accuracy(FakeScorer(favour="negative"), rows, "chat-question")  # no chat template: DEFAULT_TEMPLATE
    assert r["accuracy"] == pytest.approx(1 / 3, abs=1e-4) and r["predicted_positive"] == 0.0
    assert len(read_sst2(_sst2(tmp_path, [("x", 0)] * 5), limit=2)) == 2


def test_sst2_plain_prompt_scores_only_the_continuation(tmp_path):
    scorer = FakeScorer()
    assert phrasing_for(scorer) == "plain"
    sst2_accuracy(scorer, [("ok", 1)])
    prompt = PHRASINGS["plain"].prompt.format(sentence="ok")
    assert scorer.calls[0] == [ord(c) for c in prompt + " negative"][:-1]
    with pytest.raises(ConfigError, match="unknown SST-2 phrasing"):
        phrasing_for(scorer, "nope")


def test_a_chat_model_is_scored_with_its_chat_prompt_and_the_plain_one(tmp_path):
    from edgekit.device.sst2 import phrasings_for
    from edgekit.workshop.eval_table import compare

    chat = FakeScorer(favour="positive")
    chat.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"
    assert phrasings_for(chat) == ["chat-question", "plain"]
    assert phrasings_for(FakeScorer()) == ["plain"]
    assert phrasings_for(chat, "plain, chat-review-first,plain") == ["plain", "chat-review-first"]
    with pytest.raises(ConfigError, match="unknown SST-2 phrasing 'nope'"):
        phrasings_for(None, "plain,nope")
    with pytest.raises(ConfigError, match="no SST-2 phrasing"):
        phrasings_for(None, " , ")
    rows = read_sst2(_sst2(tmp_path, [("a fine film", 1), ("dull", 0), ("great", 1)]))
    # the fake favours "positive" after "Assistant:" only: the chat prompt says positive (2 of 3 right),
    # the plain prompt has no "Assistant:", a tie, label 0 (1 of 3 right)
    teacher = {"model": "t", "evaluated_with": "x", "sst2": sst2_accuracy(chat, rows, "chat-question"),
               "sst2_more": [sst2_accuracy(chat, rows, "plain")]}
    plain_only = {"model": "p", "evaluated_with": "x", "sst2": sst2_accuracy(FakeScorer(favour="negative"), rows)}
    table = {r["metric"]: r for r in compare({"teacher": teacher, "bundle": plain_only})["rows"]}
    # each phrasing its own row: the plain-only model's figure sits beside the teacher's plain figure
    assert set(table) == {"SST-2 accuracy (chat-question)", "SST-2 accuracy (plain)"}
    assert table["SST-2 accuracy (chat-question)"]["values"] == {"teacher": pytest.approx(0.6667)}
    assert table["SST-2 accuracy (plain)"]["values"] == {"teacher": pytest.approx(0.3333),
                                                        "bundle": pytest.approx(0.3333)}


def test_chat_none_leaves_the_chat_rows_out_even_when_the_recipe_has_some(tmp_path, monkeypatch):
    from edgekit.cli.eval import chat_examples
    from edgekit.workshop import evaluate

    held = tmp_path / "heldout.jsonl"
    held.write_text(json.dumps({"prompt": "Hi", "answer": "Hello"}) + "\n")
    monkeypatch.setattr(evaluate, "default_chat_examples", lambda recipe: held)
    assert chat_examples(None, None) == [{"prompt": "Hi", "answer": "Hello"}]
    assert chat_examples(None, "none") is None
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(ConfigError, match="no example has an \"answer\""):
        chat_examples(None, str(tmp_path / "q.jsonl"))


def test_sst2_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_sst2(tmp_path / "missing.tsv")
    (tmp_path / "empty.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ConfigError, match="no sentences"):
        read_sst2(tmp_path / "empty.tsv")
    with pytest.raises(ConfigError, match=":2: expected"):
        read_sst2(_sst2(tmp_path, [("good", 7)]))


def test_side_by_side_table_and_ratios():
    def result(name, ppl, chat_ppl, agree, acc):
        return {"model": name, "evaluated_with": "x", "perplexity": {"held.txt": {"perplexity": ppl, "tokens": 10}},
                "chat": {"perplexity": chat_ppl, "agreement": agree, "examples": 2, "tokens": 9},
                "sst2": {"accuracy": acc, "sentences": 4, "phrasing": "plain", "majority_baseline": 0.5}}

    t = compare({"teacher": result("t", 10.0, 4.0, 0.8, 0.75), "student": result("s", 15.0, 6.0, 0.6, 0.5),
                 "bundle": result("b", 15.3, 6.0, 0.6, 0.5)})
    rows = {r["metric"]: r for r in t["rows"]}
    assert list(rows) == ["perplexity: held.txt", "chat-answer perplexity", "chat top-1 agreement",
                          "SST-2 accuracy (plain)"]
    assert rows["perplexity: held.txt"]["ratios"] == {"student": 1.5, "bundle": 1.53}
    assert rows["chat top-1 agreement"]["ratios"]["student"] == 0.75 and rows["SST-2 accuracy (plain)"]["better"] == "higher"
    text = "\n".join(format_table(t))
    assert "student/teacher" in text and "1.530x" in text and "0.7500" in text


def test_eval_cli_errors_are_one_line(tmp_path):
    res = run_cli("eval", "--bundle", str(tmp_path / "nope"), "--recipe", "stories260k", "--chat",
                  str(tmp_path / "missing.jsonl"), no_torch=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: chat examples file not found")
    (tmp_path / "ex.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    res = run_cli("eval", "--bundle", "b", "--chat", str(tmp_path / "ex.jsonl"), "--recipe", "stories260k",
                  no_torch=True)
    assert res.returncode == 1 and "no example has an \"answer\"" in res.stderr
    res = run_cli("eval", "m", "--bundle", "b", no_torch=True)
    assert res.returncode != 0 and "not both" in res.stderr
    res = run_cli("eval", "--teacher", "recipe", "--bundle", str(tmp_path / "missing"), "--recipe", "stories260k",
                  no_torch=True)  # fails before the teacher loads (torch blocked here)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith(f"error: model not found: {tmp_path}")


class _WindowScorer(FakeScorer):
    def perplexity(self, wins):
        self.windows = wins
        return 2.0


def test_tokens_below_the_window_score_one_window_and_short_texts_say_why():
    from edgekit.workshop.evaluate import heldout_perplexity

    scorer = _WindowScorer()
    out = heldout_perplexity(scorer, {"t.txt": "x" * 1000}, max_tokens=64, window=256)
    assert out == {"t.txt": {"perplexity": 2.0, "tokens": 64}} and [len(w) for w in scorer.windows] == [65]
    with pytest.raises(ConfigError, match=r"t.txt: 10 tokens, fewer than the 33 one window needs"):
        heldout_perplexity(scorer, {"t.txt": "x" * 10}, max_tokens=64, window=32)
