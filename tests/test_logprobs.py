"""logprobs / top_logprobs: the recorder's arithmetic, token bytes, and the OpenAI shapes over HTTP
(fast tier, fake models; the openai client test is in the full tier, test_build_serve.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.logprobs import BYTE_DECODER, LogprobRecorder, TokenText
from edgekit.device.runtime import LoadedModel
from edgekit.device.server import create_app
from edgekit.device.tokenizer import TextTokenizer

from fakes import FakeTokenizer, RepeatingModel

# RepeatingModel's logits at every position: EOS -1, 'a' 4, 'b' 3, the other 9 ids 0
LOG_Z = math.log(math.exp(4) + math.exp(3) + math.exp(-1) + 9)
LOGP_A, LOGP_B = 4 - LOG_Z, 3 - LOG_Z


def test_recorder_gives_log_softmax_and_sorted_alternatives_and_takes_in_chunks():
    rec = LogprobRecorder(top_n=2)
    row = np.array([0.0, -1.0, 4.0, 3.0] + [0.0] * 8, dtype=np.float32)
    rec.record(row, 3)
    rec.record(row, 2)
    first = rec.take()
    assert [e.token_id for e in first] == [3, 2]
    assert first[0].logprob == pytest.approx(LOGP_B) and first[1].logprob == pytest.approx(LOGP_A)
    assert [t for t, _ in first[0].top] == [2, 3] and first[0].top[0][1] == pytest.approx(LOGP_A)
    assert rec.take() == []
    rec.record(row, 0)
    assert [e.token_id for e in rec.take()] == [0] and len(rec.entries) == 3
    bare = LogprobRecorder(top_n=0)
    bare.record(row, 2)
    assert bare.entries[0].top == () and bare.entries[0].logprob == pytest.approx(LOGP_A)


def _byte_level_tokenizer(tmp_path: Path) -> TextTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"Ã": 0, "©": 1, "Ġ": 2, "h": 3, "i": 4, "Ġh": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "h")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(tmp_path / "tokenizer.json"))
    return TextTokenizer.from_file(tmp_path / "tokenizer.json", eos_token_ids=[])


def test_token_bytes_are_exact_for_byte_level_pieces_of_a_character(tmp_path):
    assert BYTE_DECODER["Ġ"] == 0x20 and BYTE_DECODER["Ċ"] == 0x0A and BYTE_DECODER["A"] == 0x41
    assert sorted(BYTE_DECODER.values()) == list(range(256))
    tok = _byte_level_tokenizer(tmp_path)
    names = TokenText(tok)
    assert tok.encode("é hi", add_special_tokens=False) == [0, 1, 5, 4]
    assert names.bytes(0) == [0xC3] and names.bytes(1) == [0xA9]  # "é" = C3 A9, one byte per token
    assert bytes(names.bytes(0) + names.bytes(1)).decode() == "é"
    assert names.text(5) == " h" and names.bytes(5) == [0x20, ord("h")]


def test_sentencepiece_byte_fallback_pieces_give_their_byte():
    class Raw:
        def id_to_token(self, i):
            return {7: "<0x0A>", 8: "▁cat"}[i]

    class Tok(FakeTokenizer):
        raw = Raw()

        def decode(self, ids):
            return {7: "\n", 8: "cat"}[ids[0]]

    names = TokenText(Tok())
    assert names.bytes(7) == [0x0A] and names.text(7) == "\n"
    assert names.text(8) == " cat" and names.bytes(8) == list(b" cat")  # a word start keeps its space


@pytest.fixture
def client():
    manifest = {"name": "rep", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=RepeatingModel(), tokenizer=FakeTokenizer(),
                         generation={"max_new_tokens": 4, "temperature": 0.0})
    return TestClient(create_app(loaded))


def test_completions_logprobs_shape_and_values(client):
    r = client.post("/v1/completions", json={"prompt": "b", "max_tokens": 3, "logprobs": 2})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == "aaa" and lp["tokens"] == ["a", "a", "a"] and lp["text_offset"] == [0, 1, 2]
    assert lp["token_logprobs"] == pytest.approx([LOGP_A] * 3)
    assert lp["top_logprobs"][0] == pytest.approx({"a": LOGP_A, "b": LOGP_B})
    # penalties change the choice, not the model's logprobs: 'b' is picked, with the model's figure for 'b'
    r = client.post("/v1/completions", json={"prompt": "b", "max_tokens": 2, "logprobs": 0, "repeat_penalty": 2.0,
                                             "repeat_last_n": 1})
    lp = r.json()["choices"][0]["logprobs"]
    assert r.json()["choices"][0]["text"] == "ab" and lp["token_logprobs"] == pytest.approx([LOGP_A, LOGP_B])
    assert lp["top_logprobs"] == [{}, {}]
    assert client.post("/v1/completions", json={"prompt": "b"}).json()["choices"][0]["logprobs"] is None


def test_chat_logprobs_shape(client):
    body = {"messages": [{"role": "user", "content": "b"}], "max_tokens": 2, "logprobs": True, "top_logprobs": 3}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["a", "a"] and content[0]["bytes"] == [ord("a")]
    assert content[0]["logprob"] == pytest.approx(LOGP_A)
    top = content[0]["top_logprobs"]
    assert [t["token"] for t in top[:2]] == ["a", "b"] and len(top) == 3 and top[2]["logprob"] == pytest.approx(-LOG_Z)
    plain = client.post("/v1/chat/completions", json=dict(body, logprobs=False, top_logprobs=None))
    assert "logprobs" not in plain.json()["choices"][0]


def test_streamed_logprobs_cover_exactly_the_streamed_text(client):
    body = {"prompt": "b", "max_tokens": 4, "logprobs": 1, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [(e["choices"][0]["text"], e["choices"][0]["logprobs"]) for e in events if e["choices"][0]["text"]]
    assert "".join(t for t, _ in pieces) == "aaaa"
    assert [tok for _, lp in pieces for tok in lp["tokens"]] == ["a"] * 4
    assert [o for _, lp in pieces for o in lp["text_offset"]] == [0, 1, 2, 3]
    chat = {"messages": [{"role": "user", "content": "b"}], "max_tokens": 3, "logprobs": True, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=chat) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    content = [c for e in events if e["choices"][0].get("logprobs") for c in e["choices"][0]["logprobs"]["content"]]
    assert [c["token"] for c in content] == ["a", "a", "a"]


@pytest.mark.parametrize("route, body, param", [
    ("/v1/completions", {"prompt": "b", "logprobs": 6}, "logprobs"),
    ("/v1/completions", {"prompt": "b", "logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "b"}], "logprobs": 2}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "b"}], "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "b"}], "logprobs": True,
                              "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"prompt": "b", "top_logprobs": 2}, "top_logprobs"),
])
def test_bad_logprobs_fields_are_400_naming_the_field(client, route, body, param):
    r = client.post(route, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
