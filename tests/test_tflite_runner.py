"""Fast tier: the LiteRT runner's chunking, masks, cache handling and int8 I/O, on a fake interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.device.tflite_model import TfliteCausalLM, make_interpreter
from fakes import VOCAB, FakeInterpreter, fake_host_tables

SIG = {"cache_length": 16, "mask_value": -30.0}


def _lm(prefill=4, cache=16, **kw):
    interp = FakeInterpreter(prefill, cache, **kw)
    return TfliteCausalLM(interp, dict(SIG, cache_length=cache), fake_host_tables(cache_length=cache)), interp.log


def test_prompt_runs_in_prefill_chunks_then_decode_steps():
    lm, log = _lm()
    cache = lm.new_cache()
    logits = lm.forward(list(range(2, 12)), cache)  # 10 tokens: prefill 4 + prefill 4 + padded prefill (2 real)
    assert [(name, pos) for name, pos, *_ in log] == [
        ("prefill", [0, 1, 2, 3]), ("prefill", [4, 5, 6, 7]), ("prefill", [8, 9, 10, 11])]
    assert logits.shape == (10, VOCAB) and list(logits.argmax(-1)) == [(p + 2) % VOCAB for p in range(10)]
    assert cache.length == 10
    lm.forward([3], cache)
    assert log[-1][:2] == ("decode", [10])
    # the padded slots 10, 11 were overwritten by real tokens before any query could attend to them
    assert cache.arrays[0][0, 0, 10, 0] == 11


def test_selecting_prefill_picks_the_last_real_token_and_every_row_comes_from_decode_steps():
    lm, log = _lm(select=True)
    assert lm.selects
    cache = lm.new_cache()
    logits = lm.forward(list(range(2, 12)), cache, last_only=True)  # chunks of 4, 4 and 2 real tokens
    assert [(name, pos) for name, pos, *_ in log] == [
        ("prefill", [0, 1, 2, 3]), ("prefill", [4, 5, 6, 7]), ("prefill", [8, 9, 10, 11])]
    assert [int(entry[-1][0, 0].argmax()) for entry in log] == [3, 3, 1]  # one-hot on the last real row
    assert logits.shape == (1, VOCAB) and int(logits[0].argmax()) == (9 + 2) % VOCAB
    assert cache.length == 10 and cache.arrays[0][0, 0, 9, 0] == 10
    del log[:]
    full = lm.forward([3, 4, 5], lm.new_cache())  # every row wanted: one decode step per token
    assert [(name, pos) for name, pos, *_ in log] == [("decode", [0]), ("decode", [1]), ("decode", [2])]
    assert full.shape == (3, VOCAB) and list(full.argmax(-1)) == [2, 3, 4]


def test_last_only_with_an_all_rows_prefill_returns_its_last_row():
    lm, log = _lm()
    logits = lm.forward([2, 3, 4], lm.new_cache(), last_only=True)
    assert log[-1][0] == "prefill" and logits.shape == (1, VOCAB) and int(logits[0].argmax()) == 4


def test_mask_allows_only_positions_up_to_the_query():
    lm, log = _lm()
    lm.forward([2, 3, 4], lm.new_cache())
    mask = log[0][2][0, 0]
    assert mask.shape == (4, 16)
    for q in range(4):
        assert (mask[q, : q + 1] == 0).all() and (mask[q, q + 1:] == -30.0).all()


def test_near_the_end_of_the_cache_falls_back_to_decode_steps():
    lm, log = _lm(prefill=4, cache=8)
    cache = lm.new_cache()
    lm.forward([2] * 5, cache)  # prefill 0..3, then 1 token: decode at 4
    lm.forward([2, 3], cache)  # 5 + 4 > 8 -> two decode steps, never a clamped slice write
    assert [(n, p) for n, p, *_ in log] == [("prefill", [0, 1, 2, 3]), ("decode", [4]), ("decode", [5]), ("decode", [6])]
    with pytest.raises(ValueError, match="exceeds the model's 8"):
        lm.forward([2, 2], cache)


def test_int8_cache_is_quantized_in_and_dequantized_out():
    lm, log = _lm(kv_dtype=np.int8, kv_quant=(0.5, 1))
    cache = lm.new_cache()
    lm.forward([2, 3], cache)
    assert log[0][3].dtype == np.int8 and (log[0][3] == 1).all()  # float zeros -> zero point
    # the fake writes (position + 1) into int8 slots; the runner reads them back as (q - zp) * scale
    assert cache.arrays[0].dtype == np.float32 and cache.arrays[0][0, 0, 1, 0] == pytest.approx((2 - 1) * 0.5)


def test_int8_host_embeddings_are_scaled_per_row():
    tables = fake_host_tables()
    tables["embed"] = np.full((VOCAB, 4), 2, np.int8)
    tables["embed_scale"] = np.arange(VOCAB, dtype=np.float32)
    lm = TfliteCausalLM(FakeInterpreter(4, 16), SIG, tables)
    assert lm.embed_rows(np.array([[3, 5]]))[0, :, 0].tolist() == [6.0, 10.0]


def test_missing_delegate_library_is_reported_not_logged(tmp_path, caplog):
    pytest.importorskip("ai_edge_litert")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")  # never opened: the delegate probe comes first and the interpreter is not asked for
    with caplog.at_level("WARNING", logger="edgekit.device"):
        with pytest.raises(ValueError):  # an empty file is not a model; the probe came before that
            make_interpreter(model, 1, "gpu", str(tmp_path / "libnothere.so"))
    assert caplog.records == []  # the Delegation carries the reason; open_model decides (refuse or fall back)
