"""The prompt/prefix cache: LRU within a byte budget, longest-prefix reuse that leaves one token to
run, snapshots of ONNX and LiteRT caches (copying and zero-copy paths) that give the same logits as a
fresh prefill, and the HTTP surface: usage.prompt_tokens_details.cached_tokens, /props, /metrics
(fast tier: fake sessions whose logits depend on every cached token)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.generate import drain, generate
from edgekit.device.onnx_model import OnnxCausalLM
from edgekit.device.prefix_cache import PrefixCache, common_prefix
from edgekit.device.runtime import LoadedModel
from edgekit.device.sampling import Sampler
from edgekit.device.server import create_app
from edgekit.device.speculative import Speculation
from edgekit.device.tflite_model import TfliteCausalLM

from fakes import VOCAB, FakeLiteRT, FakeTokenizer, ScriptedModel, _Info


class ContextOrtSession:
    """An onnxruntime-like session whose next token depends on every token in the cache: the one key
    channel holds the token ids, and the logits favour 2 + (sum of (position + 1) * id) % 10."""

    def __init__(self):
        self.fed: list[int] = []  # tokens run, over all calls

    def get_inputs(self):
        names = ["input_ids", "attention_mask", "position_ids", "past_key_0", "past_value_0"]
        return [_Info(n, [1, 1, "past", 1] if n.startswith("past") else [1, "s"]) for n in names]

    def get_outputs(self):
        return [_Info(n, []) for n in ("logits", "present_key_0", "present_value_0")]

    def run(self, output_names, feeds):
        ids = feeds["input_ids"][0]
        self.fed.extend(int(i) for i in ids)
        key = np.concatenate([feeds["past_key_0"], ids.astype(np.float32)[None, None, :, None]], axis=2)
        seq = key[0, 0, :, 0]
        logits = np.zeros((1, len(ids), VOCAB), np.float32)
        for k in range(len(ids)):
            upto = seq[: len(seq) - len(ids) + k + 1]
            h = int(np.dot(np.arange(1, len(upto) + 1), upto))
            logits[0, k, 2 + h % 10] = 5.0
        return [logits, key, key * 2]


def _onnx() -> OnnxCausalLM:
    return OnnxCausalLM(ContextOrtSession(), max_sequence_length=64)


def _tflite(zero_copy: bool) -> TfliteCausalLM:
    rng = np.random.default_rng(0)
    tables = {"embed": rng.normal(size=(FakeLiteRT.VOCAB, FakeLiteRT.HIDDEN)).astype(np.float32),
              "cos": np.ones((FakeLiteRT.CACHE, 2), np.float32), "sin": np.zeros((FakeLiteRT.CACHE, 2), np.float32)}
    return TfliteCausalLM(FakeLiteRT("real"), {"cache_length": FakeLiteRT.CACHE, "mask_value": -1e9}, tables,
                          zero_copy=zero_copy)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([1], [1, 2]) == 1 and common_prefix([], [1]) == 0


def test_longest_prefix_wins_and_one_token_is_always_left_to_run():
    m, pc = _onnx(), PrefixCache(1 << 20)
    for tokens in ([0, 2, 3], [0, 2, 3, 4, 5], [0, 7]):
        cache = m.new_cache()
        m.forward(tokens, cache)
        pc.store(m, tokens, cache)
    assert len(pc.entries) == 2  # [0, 2, 3] is a prefix of [0, 2, 3, 4, 5]: superseded
    used = pc.used_bytes
    cache = m.new_cache()
    m.forward([0, 2, 3, 4], cache)
    assert pc.store(m, [0, 2, 3, 4], cache) and pc.used_bytes == used  # held by [0, 2, 3, 4, 5] already
    assert list(pc.entries)[-1] == (0, 2, 3, 4, 5)  # ... which is now the most recently used
    cache, n = pc.lookup(m, [0, 2, 3, 4, 9])
    assert n == 4 and cache.length == 4 and cache.past[0][0, 0, :, 0].tolist() == [0, 2, 3, 4]
    cache, n = pc.lookup(m, [0, 2, 3, 4, 5])  # the whole prompt is stored: its last token still runs
    assert n == 4
    cache, n = pc.lookup(m, [5, 5])
    assert n == 0 and cache.length == 0
    assert (pc.lookups, pc.hits, pc.tokens_reused) == (3, 2, 8)


def test_lru_within_the_byte_budget():
    m = _onnx()
    per_token = 2 * 4  # key and value, one float32 each
    pc = PrefixCache(10 * per_token)
    stored = []
    for first in (2, 3, 4):
        tokens = [first] * 4
        cache = m.new_cache()
        m.forward(tokens, cache)
        assert pc.store(m, tokens, cache)
        stored.append(tokens)
        assert pc.used_bytes <= pc.budget_bytes
    assert list(pc.entries) == [tuple(stored[1]), tuple(stored[2])] and pc.evictions == 1
    pc.lookup(m, stored[1] + [9])  # touch [3]*4: [4]*4 is now the least recently used
    big = [5] * 4
    cache = m.new_cache()
    m.forward(big, cache)
    pc.store(m, big, cache)
    assert list(pc.entries) == [tuple(stored[1]), tuple(big)]
    huge = [6] * 11
    cache = m.new_cache()
    m.forward(huge, cache)
    assert not pc.store(m, huge, cache) and tuple(huge) not in pc.entries  # larger than the budget
    assert pc.describe()["used_bytes"] == 8 * per_token and pc.describe()["tokens_held"] == 8
    pc.clear()
    assert (pc.used_bytes, pc.tokens_held, len(pc.entries)) == (0, 0, 0)


def test_a_runner_without_snapshots_gets_no_reuse():
    m, pc = ScriptedModel([2, 3]), PrefixCache(1 << 20)
    r1 = drain(generate(m, FakeTokenizer(), [0, 2, 3], 3, Sampler(0.0), prefix_cache=pc))
    r2 = drain(generate(m, FakeTokenizer(), [0, 2, 3, 4], 3, Sampler(0.0), prefix_cache=pc))
    assert r1.cached_tokens == r2.cached_tokens == 0 and not pc.entries and pc.hits == 0


@pytest.mark.parametrize("make", [_onnx, lambda: _tflite(True), lambda: _tflite(False)],
                         ids=["onnx", "litert-zero-copy", "litert-copying"])
def test_restored_prefix_gives_the_logits_of_a_fresh_prefill(make):
    m = make()
    prompt = [1, 2, 3, 4, 0, 2, 3]
    want = m.forward(prompt, m.new_cache(), last_only=True)
    full = m.new_cache()
    m.forward(prompt[:5], full)
    for n in (1, 3, 5):
        part = m.cache_copy(full, n)
        assert part.length == n and m.cache_nbytes(part) > 0
        got = m.forward(prompt[n:], part, last_only=True)
        assert np.allclose(got, want, atol=1e-5), n
    other = m.forward([4, 4], m.new_cache(), last_only=True)  # a cache that forgets its prefix differs
    assert not np.allclose(other, want)


@pytest.mark.parametrize("make", [_onnx, lambda: _tflite(True), lambda: _tflite(False)],
                         ids=["onnx", "litert-zero-copy", "litert-copying"])
def test_chat_turns_reuse_the_previous_turn_and_give_the_same_tokens(make):
    with_cache, without, pc = make(), make(), PrefixCache(1 << 20)
    prompt, cached = [1, 2], []
    for turn in range(3):
        a = drain(generate(with_cache, _Tok(), prompt, 1, Sampler(0.0), prefix_cache=pc))
        b = drain(generate(without, _Tok(), prompt, 1, Sampler(0.0)))
        assert a.token_ids == b.token_ids and a.prompt_tokens == b.prompt_tokens
        cached.append(a.cached_tokens)
        prompt = prompt + a.token_ids + [turn % 3]  # the answer repeated, then the next user token
    assert cached == [0, 2, 4]  # each later turn runs only the token after the previous answer


def test_speculative_decoding_reuses_the_models_prompt_and_gives_the_same_tokens():
    """With a draft, the model's prompt prefill comes from the prefix cache too (the draft prefills its
    own cache); tokens are those of the model alone without any cache."""
    model, pc, spec = _onnx(), PrefixCache(1 << 20), Speculation(_onnx(), k=3)
    alone, prompt, cached = _onnx(), [1, 2], []
    for turn in range(3):
        fed_before = len(model.session.fed)
        a = drain(generate(model, _Tok(), prompt, 5, Sampler(0.0), prefix_cache=pc, speculation=spec))
        b = drain(generate(alone, _Tok(), prompt, 5, Sampler(0.0)))
        assert a.token_ids == b.token_ids and a.verify_passes > 0
        cached.append(a.cached_tokens)
        # the model ran the prompt's uncached tail once, then verify passes only (never the cached part)
        assert model.session.fed[fed_before:fed_before + len(prompt) - a.cached_tokens] == prompt[a.cached_tokens:]
        prompt = prompt + a.token_ids + [turn % 3]
    assert cached == [0, 2, 8]  # each later turn reuses the previous turn's whole prompt
    assert pc.hits == 2


class _Tok:
    eos_token_ids = frozenset()

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


def _client(budget_bytes: int | None, reuse_answers: bool = False) -> TestClient:
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=_onnx(), tokenizer=FakeTokenizer(),
                         generation={"max_new_tokens": 4, "temperature": 0.0},
                         prefix_cache=None if budget_bytes is None else PrefixCache(budget_bytes, reuse_answers))
    return TestClient(create_app(loaded))


def _chat(client, messages, stream=False):
    body = {"messages": messages, "max_tokens": 4, "stream": stream}
    if not stream:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"], r.json()["usage"]
    with client.stream("POST", "/v1/chat/completions", json=body) as s:
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events), events[-1]["usage"]


@pytest.mark.parametrize("reuse_answers", [False, True])
def test_http_chat_reports_cached_tokens_and_answers_as_without_the_cache(reuse_answers):
    on, off = _client(1 << 20, reuse_answers), _client(None)
    prompts = []
    msgs, cached = [], []
    for turn, user in enumerate(["abc", "de", "fa"]):
        msgs.append({"role": "user", "content": user})
        text_on, usage_on = _chat(on, msgs, stream=turn == 2)  # the last turn streamed: its final usage chunk
        text_off, usage_off = _chat(off, msgs)
        assert text_on == text_off and usage_on["prompt_tokens"] == usage_off["prompt_tokens"]
        assert usage_off["prompt_tokens_details"] == {"cached_tokens": 0}
        cached.append(usage_on["prompt_tokens_details"]["cached_tokens"])
        prompts.append(usage_on["prompt_tokens"])
        msgs.append({"role": "assistant", "content": text_on})
    assert cached[0] == 0 and 0 < cached[1] < cached[2] < prompts[2]
    if reuse_answers:  # the previous prompt and its answer's tokens (all but the last, never fed back)
        assert cached[1] > prompts[0] and cached[2] > prompts[1]
    else:  # exactly the previous prompt
        assert cached[1:] == prompts[:2]
    props = on.get("/props").json()["prefix_cache"]
    assert props["hits"] == 2 and props["tokens_reused"] == cached[1] + cached[2]
    assert props["runner_supported"] and 0 < props["used_bytes"] <= props["budget_bytes"] == 1 << 20
    assert off.get("/props").json()["prefix_cache"] is None
    text = on.get("/metrics").text
    assert "edgekit_prefix_cache_hits_total 2.0" in text
    assert f'edgekit_tokens_total{{kind="prompt_cached"}} {float(cached[1] + cached[2])}' in text


@pytest.mark.parametrize("reuse_answers,reused", [(False, 7), (True, 7 + 1)])
def test_completions_report_cached_tokens_too(reuse_answers, reused):
    c = _client(1 << 20, reuse_answers)
    first = c.post("/v1/completions", json={"prompt": "abcdef", "max_tokens": 2}).json()
    again = c.post("/v1/completions", json={"prompt": "abcdef" + first["choices"][0]["text"] + "g",
                                           "max_tokens": 2}).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == reused  # BOS + 6 letters (+ 1 answer token fed)


def test_a_full_int8_litert_graph_gets_no_reuse():
    """Its int8 cache leaves with the output's scale and comes back with the input's: a restored prefix
    is not the rows one prefill computes in-graph (greedy text changed on coral-single), so no reuse."""
    from edgekit.device.prefix_cache import supports

    rng = np.random.default_rng(0)
    tables = {"embed": rng.normal(size=(FakeLiteRT.VOCAB, FakeLiteRT.HIDDEN)).astype(np.float32),
              "cos": np.ones((FakeLiteRT.CACHE, 2), np.float32), "sin": np.zeros((FakeLiteRT.CACHE, 2), np.float32)}
    fake = FakeLiteRT("real")
    for name in ("args_5", "args_6"):
        fake.sigs["decode"]["ins"][name]["dtype"] = np.int8
    quantized = TfliteCausalLM(fake, {"cache_length": FakeLiteRT.CACHE, "mask_value": -30.0}, tables, zero_copy=False)
    assert quantized.prefix_reuse_exact is False and not supports(quantized)
    assert _tflite(False).prefix_reuse_exact is True and supports(_tflite(False)) and supports(_onnx())
    pc = PrefixCache(1 << 20)
    assert pc.store(quantized, [0, 1, 2], quantized.new_cache()) is False
    assert not pc.entries and pc.lookup(quantized, [0, 1, 2, 3])[1] == 0
