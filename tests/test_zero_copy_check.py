"""The LiteRT zero-copy KV cache checks itself at load against the public SignatureRunner and falls
back to the public path on a mismatch or an exception, logged once (fast tier, FakeLiteRT)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgekit.device import tflite_model
from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Sampler
from edgekit.device.tflite_model import TfliteCausalLM

from fakes import FakeLiteRT

SIGNATURE = {"cache_length": FakeLiteRT.CACHE, "mask_value": -1e9}


def _lm(internals: str, zero_copy=None) -> TfliteCausalLM:
    rng = np.random.default_rng(0)
    tables = {"embed": rng.normal(size=(FakeLiteRT.VOCAB, FakeLiteRT.HIDDEN)).astype(np.float32),
              "cos": np.ones((FakeLiteRT.CACHE, 2), np.float32), "sin": np.zeros((FakeLiteRT.CACHE, 2), np.float32)}
    return TfliteCausalLM(FakeLiteRT(internals), SIGNATURE, tables, zero_copy=zero_copy)


def _logits(lm) -> np.ndarray:
    return lm.forward([1, 2, 3, 4, 0, 2], lm.new_cache())


@pytest.fixture(autouse=True)
def fresh_warning_state():
    tflite_model._ZERO_COPY_WARNED.clear()
    yield
    tflite_model._ZERO_COPY_WARNED.clear()


def test_zero_copy_passes_its_self_check_and_matches_the_public_path(caplog):
    lm, public = _lm("real"), _lm("real", zero_copy=False)
    assert lm.zero_copy == "on" and lm._resident is not None and public.zero_copy == "off"
    assert np.array_equal(_logits(lm), _logits(public))
    a, b = (drain(generate(m, _Tok(), [1, 2], 5, Sampler(0.0))).token_ids for m in (lm, public))
    assert a == b and len(a) == 5 and not caplog.records


@pytest.mark.parametrize("internals,reason", [("copies", "logits differ"), ("missing-invoke", "AttributeError")])
def test_a_mismatch_or_an_error_falls_back_to_the_public_path_logged_once(caplog, internals, reason):
    public = _lm("real", zero_copy=False)
    with caplog.at_level(logging.WARNING, logger="edgekit.device"):
        first, second = _lm(internals), _lm(internals)
    for lm in (first, second):
        assert lm._resident is None and lm.zero_copy.startswith("off (self-check failed: " + reason)
        assert np.array_equal(_logits(lm), _logits(public))  # the public path, still correct
    warnings = [r for r in caplog.records if "zero-copy" in r.getMessage()]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()


class _Tok:
    eos_token_ids = frozenset()

    def decode(self, ids):
        return "".join("abcde"[i] for i in ids)
