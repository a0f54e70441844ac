"""Chat example ids and the examples file (fast tier: no torch)."""

import json

import pytest

from edgekit.core.errors import ConfigError
from edgekit.device.chat_examples import example_ids, prompt_text, read_examples, write_examples

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def encode(text):
    return [ord(c) for c in text]


def test_answer_ids_follow_the_rendered_prompt():
    ex = example_ids(encode, "Hi?", "Yes.", TEMPLATE, end_of_turn_id=2)
    head = prompt_text("Hi?", TEMPLATE)
    assert head == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert ex.answer_start == len(head)
    assert ex.ids[ex.answer_start:] == encode("Yes.") + [2]
    assert ex.answer_tokens == 5


def test_examples_round_trip_and_errors(tmp_path):
    path = tmp_path / "ex.jsonl"
    write_examples(path, [{"prompt": "a", "answer": "b"}, {"prompt": "c"}])
    assert read_examples(path) == [{"prompt": "a", "answer": "b"}, {"prompt": "c"}]
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty"):
        read_examples(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ConfigError, match=":1: each line"):
        read_examples(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="not found"):
        read_examples(tmp_path / "missing.jsonl")
