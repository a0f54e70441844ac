"""Chat-preserving distillation end to end on a real tiny model (full tier): stories260k given a chat
template, the teacher writes questions and answers them through its ONNX export, the student trains on
them mixed with text, and the metrics hold teacher and student chat figures. The data is cached and a
second run reuses it; a teacher without a chat template is one clear error line."""

import json
import shutil

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.full

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


def _recipe(path, teacher, chat=True, on_policy=0.0):
    path.write_text(f'''name = "{path.stem}"
description = "stories260k chat test"
task = "text-generation"
[teacher]
source = "path:{teacher}"
[student]
mode = "layer-drop"
keep_layers = [0, 2, 4]
[distill]
batch_size = 4
seq_len = 64
learning_rate = 2e-3
max_steps = 8
checkpoint_every = 4
[data]
train = ["shared:data/tinystories/tinystories_v1_validation_head.txt"]
[chat]
enabled = {"true" if chat else "false"}
fraction = 0.5
self_instruct = 3
fact_questions = 2
topics = ["a dog", "the park"]
corpus_prompts = 4
heldout_prompts = ["Once upon a time there was a cat. What did the cat do?", "Tell me about the sun."]
answer_tokens = 16
seq_len = 96
on_policy = {on_policy}
on_policy_tokens = 12
[gate]
max_chat_perplexity_ratio = 1000.0
''')
    return path


@pytest.fixture(scope="module")
def chat_teacher(shared_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher") / "stories260k-chat"
    shutil.copytree(shared_dir / "models" / "stories260k", d)
    (d / "chat_template.jinja").write_text(TEMPLATE)
    return d


def test_chat_distillation_generates_caches_and_scores(chat_teacher, tmp_path):
    home = tmp_path / "home"
    env = {"EDGEKIT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    recipe = _recipe(tmp_path / "chat260k.toml", chat_teacher)
    r = run_cli("distill", "--recipe", str(recipe), "--out", str(tmp_path / "st"), "--eval-every-minutes", "0", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out chat answers: perplexity teacher" in r.stdout
    m = json.loads((tmp_path / "st" / "distill_metrics.json").read_text())
    chat = m["chat"]
    assert chat["heldout_examples"] >= 2 and chat["train_examples"] >= 1
    assert 0 <= chat["student"]["agreement"] <= 1 and chat["teacher"]["perplexity"] > 1
    assert chat["perplexity_ratio"] == pytest.approx(chat["student"]["perplexity"] / chat["teacher"]["perplexity"],
                                                     rel=1e-3)
    assert 1 <= m["chat_steps"] < m["steps"] == 8  # chat and text steps mixed
    [data] = [p for p in (home / "chatdata").iterdir() if not p.name.startswith("generator-")]
    rows = [json.loads(line) for line in (data / "answers.jsonl").read_text().splitlines()]
    held = {r["prompt"] for r in rows if r["split"] == "heldout"}
    assert {"Tell me about the sun.", "Once upon a time there was a cat. What did the cat do?"} <= held
    assert all(r["answer"] == r["answer"].strip() for r in rows)
    assert {r["source"] for r in rows} >= {"fixed", "corpus"}
    # second run (another student folder): the chat data comes from the cache, nothing regenerated
    r2 = run_cli("distill", "--recipe", str(recipe), "--out", str(tmp_path / "st2"), "--eval-every-minutes", "0",
                 "--max-steps", "2", env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "answer/s" not in r2.stderr and "exporting the teacher" not in r2.stderr and "teacher answers from" in r2.stderr
    # on-policy: every chat step on answers the student samples (same cached chat data, a run of its own)
    policy = _recipe(tmp_path / "policy260k.toml", chat_teacher, on_policy=1.0)
    r3 = run_cli("distill", "--recipe", str(policy), "--out", str(tmp_path / "st3"), "--eval-every-minutes", "0",
                 "--max-steps", "6", env=env)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "answer/s" not in r3.stderr
    m3 = json.loads((tmp_path / "st3" / "distill_metrics.json").read_text())
    assert m3["steps"] == 6 and m3["on_policy_steps"] == m3["chat_steps"] >= 1
    assert m["on_policy_steps"] == 0 and m3["settings"]["on_policy"] == 1.0


def test_teacher_without_chat_template_is_one_clear_error(shared_dir, tmp_path):
    recipe = _recipe(tmp_path / "nochat.toml", shared_dir / "models" / "stories260k")
    r = run_cli("distill", "--recipe", str(recipe), "--out", str(tmp_path / "st"),
                env={"EDGEKIT_HOME": str(tmp_path / "home")})
    assert r.returncode != 0
    assert "has no chat template" in r.stderr and "Traceback" not in r.stderr
