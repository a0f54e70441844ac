"""Constrained sampling (edgekit.device.constrain) with llguidance on a real byte-level BPE tokenizer
and a random toy model: every reply parses and validates, EOS only where the grammar ends, and
schemas the engine cannot handle are refused naming the feature (fast tier)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from edgekit.device.constrain import (Constraint, GrammarError, parse_tool_call, schema_grammar,  # noqa: E402
                                      tool_call_schema)
from edgekit.device.generate import drain, generate  # noqa: E402
from edgekit.device.sampling import Sampler  # noqa: E402

from fakes import BigramModel, byte_bpe_tokenizer  # noqa: E402

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pet": {"enum": ["cat", "dog"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}},
    "required": ["name", "age", "pet", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok():
    return byte_bpe_tokenizer()


def _run(tok, schema, seed, temperature=1.0):
    vocab = tok.raw.get_vocab_size(with_added_tokens=True)
    model = BigramModel(vocab=vocab, seed=seed, max_sequence_length=512)
    constraint = Constraint(schema_grammar(schema), tok)
    return drain(generate(model, tok, tok.encode("the cat"), 200, Sampler(temperature, 1.0, 0, seed), None,
                          constraint=constraint))


@pytest.mark.parametrize("seed", range(10))
def test_random_model_constrained_replies_parse_and_validate(tok, seed):
    res = _run(tok, PERSON, seed)
    assert res.finish_reason == "stop", res.text
    jsonschema.validate(json.loads(res.text), PERSON)


def test_json_object_replies_that_end_are_objects(tok):
    """Any JSON object is unbounded: a random model may run to max_tokens ("length"); those that end do so
    on a complete object (EOS is masked until then)."""
    ended = [r for r in (_run(tok, {"type": "object"}, seed) for seed in range(8)) if r.finish_reason == "stop"]
    assert len(ended) >= 2
    assert all(isinstance(json.loads(r.text), dict) for r in ended)


def test_eos_is_allowed_only_where_the_grammar_accepts(tok):
    vocab = tok.raw.get_vocab_size(with_added_tokens=True)
    c = Constraint(schema_grammar({"enum": ["cat"]}), tok, vocab)
    assert not c.allowed()[0]  # nothing generated yet: no EOS
    for t in tok.encode('"cat"', add_special_tokens=False):
        assert c.allowed()[t]
        c.advance(t)
    ok = c.allowed()
    assert ok[0] and ok.sum() == 1  # complete and nothing may follow: only EOS
    masked = Constraint(schema_grammar({"enum": ["cat"]}), tok).mask(np.zeros(vocab, np.float32))
    assert np.isinf(masked).sum() == vocab - masked[np.isfinite(masked)].size and masked[0] == -np.inf


@pytest.mark.parametrize("schema, feature", [
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "dependentRequired": {"a": ["b"]}},
     "dependentRequired"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
])
def test_unsupported_schema_features_are_named(schema, feature):
    with pytest.raises(GrammarError, match=feature):
        schema_grammar(schema)


def test_tool_call_grammar_and_parsing(tok):
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 10}}, "required": ["city"], "additionalProperties": False}},
        {"name": "noop", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}]
    for seed in range(5):
        res = _run(tok, tool_call_schema(tools), seed)
        call = parse_tool_call(res.text, tools)
        assert call is not None and call["name"] in {"get_weather", "noop"}, res.text
        schema = {t["name"]: t["parameters"] for t in tools}[call["name"]]
        jsonschema.validate(json.loads(call["arguments"]), schema)
    grammar = schema_grammar(tool_call_schema(tools))
    assert Constraint(grammar, tok).accepts('{"name":"get_weather","arguments":{"city":"Paris"}}')
    assert not Constraint(grammar, tok).accepts('{"name":"get_weather","arguments":{"town":"Paris"}}')
    assert parse_tool_call('{"name": "other", "arguments": {}}', tools) is None
    assert parse_tool_call("hello", tools) is None
