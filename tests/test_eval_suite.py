"""Full tier: chat metrics and SST-2 on a real stories260k bundle and its PyTorch student (same ids, close
numbers), the HF and device tokenizers giving identical chat-example ids, and the side-by-side table."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.full

EXAMPLES = [{"prompt": "Tell me a story about a cat.", "answer": "Once upon a time, there was a little cat."},
            {"prompt": "What did Lily find?", "answer": "Lily found a big red ball in the park."}]


def _scorers(stories_build):
    from edgekit.workshop.evaluate import open_scorer

    return open_scorer(str(stories_build["student"])), open_scorer(str(stories_build["fp32"]))


def test_hf_and_device_tokenizers_give_the_same_chat_ids(stories_build):
    from edgekit.device.chat_quality import scorer_example_ids

    torch_side, device_side = _scorers(stories_build)
    assert torch_side.end_of_turn_id == device_side.end_of_turn_id == 2
    for e in EXAMPLES:
        a = scorer_example_ids(torch_side, e["prompt"], e["answer"])
        b = scorer_example_ids(device_side, e["prompt"], e["answer"])
        assert a == b and a.answer_tokens > 5


def test_smollm2_teacher_and_device_tokenizers_agree():
    """The cached SmolLM2-135M-Instruct teacher (if converted before): its HF tokenizer and the device
    `tokenizers` path over its tokenizer.json build identical ids with the chat template."""
    from edgekit.core.paths import edgekit_home
    from edgekit.device.chat_examples import example_ids
    from edgekit.device.tokenizer import TextTokenizer

    folders = sorted((edgekit_home() / "teachers").glob("gguf-*/chat_template.jinja"))
    if not folders:
        pytest.skip("no converted GGUF teacher with a chat template cached under EDGEKIT_HOME")
    from transformers import AutoTokenizer

    folder = folders[0].parent
    hf = AutoTokenizer.from_pretrained(str(folder))
    dev = TextTokenizer.from_file(folder / "tokenizer.json", [hf.eos_token_id])
    for e in EXAMPLES:
        a = example_ids(lambda t: hf(t, add_special_tokens=False).input_ids, e["prompt"], e["answer"],
                        hf.chat_template, hf.eos_token_id, hf.bos_token, hf.eos_token)
        b = example_ids(lambda t: dev.encode(t, add_special_tokens=False), e["prompt"], e["answer"],
                        hf.chat_template, dev.token_to_id(hf.eos_token), hf.bos_token, hf.eos_token)
        assert a == b and a.ids[-1] == dev.token_to_id("<|im_end|>")


def test_pytorch_shared_prefix_matches_full_forwards(stories_build):
    import numpy as np

    from edgekit.device.chat_quality import scorer_example_ids

    torch_side, _ = _scorers(stories_build)
    exs = [scorer_example_ids(torch_side, "Is it good?", a) for a in ("yes it is", "no")]
    fast = torch_side.continuation_logits(exs[0].ids[:exs[0].answer_start], [e.ids[e.answer_start:] for e in exs])
    for e, rows in zip(exs, fast):
        full = torch_side.logits(e.ids[:-1])[e.answer_start - 1:]
        assert rows.shape == full.shape == (e.answer_tokens, 512)
        assert np.abs(rows - full).max() < 1e-4


def test_bundle_and_pytorch_metrics_are_close(stories_build, shared_dir):
    from edgekit.core.paths import resolve_data_ref
    from edgekit.device.chat_quality import chat_metrics
    from edgekit.device.sst2 import DATA_REF, read_sst2, sst2_accuracy

    torch_side, device_side = _scorers(stories_build)
    a, b = chat_metrics(torch_side, EXAMPLES), chat_metrics(device_side, EXAMPLES)
    assert a["tokens"] == b["tokens"] and 1 < a["perplexity"] < 512  # below the uniform guess (vocab 512)
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-3)
    assert abs(b["agreement"] - a["agreement"]) <= 1 / a["tokens"] + 1e-9
    rows = read_sst2(resolve_data_ref(DATA_REF), 20)
    sa, sb = sst2_accuracy(torch_side, rows), sst2_accuracy(device_side, rows)
    assert sa["phrasing"] == sb["phrasing"] == "plain" and abs(sa["accuracy"] - sb["accuracy"]) <= 0.05


def test_eval_cli_prints_the_side_by_side_table(stories_build, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    args = ["eval", "--teacher", "recipe", "--student", str(stories_build["student"]), "--bundle",
            str(stories_build["fp32"]), "--recipe", "stories260k", "--chat", str(chat), "--suite", "sst2",
            "--sst2-sentences", "20", "--tokens", "512"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    head = next(line for line in res.stdout.splitlines() if line.startswith("metric"))
    assert head.split() == ["metric", "teacher", "student", "bundle", "student/teacher", "bundle/teacher"]
    for metric in ("chat-answer perplexity", "chat top-1 agreement", "SST-2 accuracy", "perplexity: "):
        assert any(line.startswith(metric) for line in res.stdout.splitlines()), metric
    res = run_cli(*args, "--json")
    out = json.loads(res.stdout)
    rows = {r["metric"]: r for r in out["rows"]}
    chat_ppl = rows["chat-answer perplexity"]
    assert set(chat_ppl["values"]) == {"teacher", "student", "bundle"}
    assert chat_ppl["ratios"]["bundle"] == pytest.approx(chat_ppl["values"]["bundle"] / chat_ppl["values"]["teacher"],
                                                         rel=1e-3)
    assert chat_ppl["values"]["bundle"] == pytest.approx(chat_ppl["values"]["student"], rel=1e-3)
    assert out["results"]["bundle"]["sst2"]["sentences"] == 20


def test_eval_cli_tokens_below_the_window_score_one_window(stories_build):
    res = run_cli("eval", str(stories_build["fp32"]), "--recipe", "stories260k", "--tokens", "64", "--json",
                  no_torch=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["perplexity"] and all(r["tokens"] == 64 for r in out["perplexity"].values())
