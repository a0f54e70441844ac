"""Generation loop, sampling and the onnxruntime wrapper, with fakes (fast tier)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgekit.device.generate import drain, generate
from edgekit.device.onnx_model import OnnxCausalLM
from edgekit.device.sampling import Sampler

from fakes import FakeOrtSession, FakeTokenizer, ScriptedModel, run_generation


def test_greedy_prefills_once_then_one_token_per_step():
    model = ScriptedModel([2, 3, 4, 5, 6])
    res = drain(generate(model, FakeTokenizer(), [0, 2, 3], 4, Sampler(0.0)))
    assert model.calls == [3, 1, 1, 1]  # prompt once, then single tokens; no re-run of the sequence
    assert res.token_ids == [4, 5, 6, 2] and res.text == "cdea"
    assert res.finish_reason == "length" and res.prompt_tokens == 3 and res.completion_tokens == 4


def test_eos_stops_with_reason_stop():
    res = drain(generate(ScriptedModel([2, 3, 1]), FakeTokenizer(), [0], 10, Sampler(0.0)))
    assert res.token_ids == [2, 3] and res.finish_reason == "stop"


def test_stop_string_truncates_and_is_never_streamed():
    model = ScriptedModel([2, 3, 4, 5, 6, 7])  # prompt [0] -> "abcdef..."
    deltas, res = run_generation(generate(model, FakeTokenizer(), [0], 10, Sampler(0.0), stop=["cd"]))
    assert res.text == "ab" and res.finish_reason == "stop"
    assert "".join(deltas) == "ab"  # the "c" that might have begun "cd" was held back, then dropped


def test_context_limit_caps_new_tokens():
    model = ScriptedModel([2, 3], max_sequence_length=6)
    res = drain(generate(model, FakeTokenizer(), [0, 2, 3, 4], 100, Sampler(0.0)))
    assert res.completion_tokens == 2 and res.finish_reason == "length"


def test_timings_come_from_the_injected_clock():
    ticks = itertools.count(0.0, 0.5)  # each clock() call advances half a second
    res = drain(generate(ScriptedModel([2, 3]), FakeTokenizer(), [0], 3, Sampler(0.0), clock=lambda: next(ticks)))
    assert res.prefill_seconds == 0.5 and res.decode_seconds == 0.5
    assert res.decode_tokens_per_second == pytest.approx(2 / 0.5)


def test_cancel_stops_generation():
    res = drain(generate(ScriptedModel([2, 3]), FakeTokenizer(), [0], 10, Sampler(0.0), should_stop=lambda: True))
    assert res.completion_tokens == 1 and res.finish_reason == "cancelled"


def test_sampler_filters_and_seeds():
    logits = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    assert Sampler(0.0)(logits) == 4
    draws = [Sampler(5.0, top_k=2, seed=s)(logits) for s in range(200)]
    assert set(draws) <= {3, 4} and 3 in draws and 4 in draws
    assert all(Sampler(1.0, top_p=0.5, seed=s)(logits) == 4 for s in range(50))  # token 4 holds > 50%
    s1, s2 = Sampler(20.0, seed=11), Sampler(20.0, seed=11)
    seq = [s1(logits) for _ in range(30)]
    assert seq == [s2(logits) for _ in range(30)] and len(set(seq)) > 1


def test_onnx_wrapper_feeds_positions_mask_and_cache():
    sess = FakeOrtSession(layers=2, kv_heads=2, head_dim=4)
    model = OnnxCausalLM(sess, max_sequence_length=16)
    assert model.past_names == ["past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    cache = model.new_cache()
    assert cache.past[0].shape == (1, 2, 0, 4)
    logits = model.forward([0, 5, 6], cache)
    assert logits.shape == (3, 12) and cache.length == 3
    first = sess.feeds[0]
    assert first["position_ids"].tolist() == [[0, 1, 2]] and first["attention_mask"].shape == (1, 3)
    model.forward([7], cache)
    second = sess.feeds[1]
    assert second["position_ids"].tolist() == [[3]] and second["attention_mask"].shape == (1, 4)
    assert second["past_key_0"].shape == (1, 2, 3, 4)  # the presents of step 1 came back as the past
    with pytest.raises(ValueError, match="exceeds the model's 16"):
        model.forward(list(range(13)), cache)


def test_onnx_graph_with_logits_rows_computes_only_the_rows_asked_for():
    sess = FakeOrtSession(rows=True)
    model = OnnxCausalLM(sess, max_sequence_length=16)
    assert model.selects
    cache = model.new_cache()
    last = model.forward([0, 5, 6], cache, last_only=True)
    assert sess.feeds[-1]["logits_rows"].tolist() == [2] and last.shape == (1, 12) and int(last[0].argmax()) == 4
    every = model.forward([7, 8], cache)
    assert sess.feeds[-1]["logits_rows"].tolist() == [0, 1] and list(every.argmax(-1)) == [5, 6]
