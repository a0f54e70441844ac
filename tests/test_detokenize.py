"""Incremental detokenization (fast tier): with a Llama-style tokenizer (SentencePiece "▁" spaces, byte
fallback for characters outside the vocabulary), streamed text equals decoding all ids at once,
leading spaces and split UTF-8 characters included, and each token costs a bounded decode whatever
the length so far. Plus stop strings found across pieces and the held-back tail bounded."""

from __future__ import annotations

import pytest

from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Sampler
from edgekit.device.tokenizer import IncrementalText, TextTokenizer

from fakes import ScriptedModel, run_generation


def _llama_style(path) -> TextTokenizer:
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz.,!", "▁t", "▁th", "▁the", "▁c", "▁ca", "▁cat"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁", "c"), ("▁c", "a"), ("▁ca", "t")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(path))
    return TextTokenizer.from_file(path, [2])


class CountingTokenizer:
    """Wraps a tokenizer, recording how many ids each decode call was given."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []
        self.eos_token_ids = inner.eos_token_ids

    def decode(self, ids):
        self.sizes.append(len(ids))
        return self.inner.decode(ids)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return _llama_style(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.mark.parametrize("prompt,completion", [
    ("the cat", " the cat sat."),
    ("the", " é, 😀 and ü!"),  # two- and four-byte characters arrive as several byte tokens
    ("cat", "😀😀 the"),
    ("ü", " cat"),
])
def test_pieces_add_up_to_the_whole_decode(tok, prompt, completion):
    prompt_ids = tok.encode(prompt)
    new_ids = tok.encode(prompt + completion)[len(prompt_ids):]
    assert tok.decode(prompt_ids + new_ids) == tok.decode(prompt_ids) + completion  # the fixture is sane
    detok = IncrementalText(tok, prompt_ids)
    pieces = [detok.add(t) for t in new_ids] + [detok.flush()]
    assert "".join(pieces) == completion == tok.completion_text(prompt_ids, new_ids)
    assert all("\ufffd" not in p for p in pieces)  # a split character is never sent half


def test_cost_per_token_does_not_grow_with_the_length(tok):
    counting = CountingTokenizer(tok)
    prompt_ids = tok.encode("the cat " * 50)
    detok = IncrementalText(counting, prompt_ids)
    text = "".join(detok.add(t) for t in tok.encode(" the cat é 😀" * 200, add_special_tokens=False)[1:])
    assert len(counting.sizes) > 2000 and max(counting.sizes) <= IncrementalText.CONTEXT + IncrementalText.MAX_SPLIT
    assert text.count("😀") == 200 and text.count("é") == 200


def test_stop_string_split_across_pieces_is_cut_and_never_sent():
    # ScriptedModel cycles ids 2..5 = "abcd": "abcdabcd..."; the stop "da" spans two tokens
    from fakes import FakeTokenizer

    gen = generate(ScriptedModel([2, 3, 4, 5]), FakeTokenizer(), [0], 20, Sampler(0.0), stop=["da", "zz"])
    sent, res = run_generation(gen)
    assert "".join(sent) == res.text == "abc" and res.finish_reason == "stop"


def test_held_back_tail_is_bounded_by_the_stop_length():
    from fakes import FakeTokenizer

    model = ScriptedModel([2, 3, 4, 5], max_sequence_length=400)  # "abcdabcd...", one character per token
    long_stop = "abcd" * 15 + "abcx"  # 64 characters (the limit): its first 63 keep matching, the whole never
    gen = generate(model, FakeTokenizer(), [0], 300, Sampler(0.0), stop=[long_stop])
    sent, held = 0, []
    for piece in gen:  # when a piece arrives, len(model.calls) tokens have been generated (prefill + steps)
        sent += len(piece)
        held.append(len(model.calls) - sent)
    # measured at each piece: 60 ("abcd" * 15 still matches); between pieces it grows to 63, never more
    assert 60 <= max(held) <= 63 and sent == 300
