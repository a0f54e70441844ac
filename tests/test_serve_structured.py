"""response_format and tools over HTTP on a toy model (fast tier): a random byte-level-BPE bigram model
whose constrained replies must still parse and validate; tool calls in OpenAI's shape, streamed too;
400s naming the field or the unsupported schema feature; the `openai` client unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from starlette.testclient import TestClient  # noqa: E402

from edgekit.core.bundle import Bundle  # noqa: E402
from edgekit.device.chat import render, template_takes_tools, with_tools  # noqa: E402
from edgekit.device.runtime import LoadedModel  # noqa: E402
from edgekit.device.server import create_app  # noqa: E402

from fakes import BigramModel, byte_bpe_tokenizer  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "ok": {"type": "boolean"},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "ok", "n"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"], "additionalProperties": False}}}
MSG = [{"role": "user", "content": "the cat"}]


@pytest.fixture(scope="module")
def client():
    tok = byte_bpe_tokenizer()
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 1024, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    model = BigramModel(vocab=tok.raw.get_vocab_size(with_added_tokens=True), seed=1, max_sequence_length=1024)
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=model, tokenizer=tok,
                         generation={"max_new_tokens": 200, "temperature": 1.0})
    return TestClient(create_app(loaded))


def _chat(client, **body):
    return client.post("/v1/chat/completions", json={"messages": MSG, **body})


def test_json_schema_replies_parse_and_validate(client):
    for seed in range(8):
        r = _chat(client, seed=seed, response_format={"type": "json_schema",
                                                      "json_schema": {"name": "p", "schema": SCHEMA}})
        choice = r.json()["choices"][0]
        assert r.status_code == 200 and choice["finish_reason"] == "stop", r.text
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    text = client.post("/v1/completions", json={"prompt": "the", "seed": 0, "response_format": {
        "type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}}).json()["choices"][0]["text"]
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_replies_that_end_are_objects(client):
    replies = [_chat(client, seed=seed, response_format={"type": "json_object"}).json()["choices"][0]
               for seed in range(6)]
    ended = [r["message"]["content"] for r in replies if r["finish_reason"] == "stop"]
    assert ended and all(isinstance(json.loads(t), dict) for t in ended)
    assert _chat(client, response_format={"type": "text"}, max_tokens=3).status_code == 200


def test_required_tool_call_in_openai_shape_streamed_and_not(client):
    body = {"tools": [WEATHER], "tool_choice": "required", "seed": 4}
    choice = _chat(client, **body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    events = [json.loads(line[6:]) for line in _chat(client, stream=True, **body).text.splitlines()
              if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    streamed = [c for d in deltas for c in d.get("tool_calls", [])]
    assert streamed[0]["index"] == 0 and streamed[0]["function"] == call["function"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls" and deltas[0]["role"] == "assistant"


def test_named_tool_choice_forces_that_function(client):
    other = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
    for seed in range(3):
        msg = _chat(client, seed=seed, tools=[other, WEATHER],
                    tool_choice={"type": "function", "function": {"name": "get_weather"}}).json()["choices"][0]["message"]
        assert msg["tool_calls"][0]["function"]["name"] == "get_weather"


def test_auto_leaves_text_as_content_and_none_never_calls(client):
    for choice in ("auto", "none"):
        r = _chat(client, tools=[WEATHER], tool_choice=choice, seed=0, max_tokens=12).json()["choices"][0]
        assert r["finish_reason"] in ("stop", "length") and "tool_calls" not in r["message"]
        streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in
                           _chat(client, tools=[WEATHER], tool_choice=choice, seed=0, max_tokens=12,
                                 stream=True).text.splitlines() if line.startswith("data: {"))
        assert streamed == r["message"]["content"]


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {
        "a": {"type": "integer"}}, "dependentRequired": {"a": ["b"]}}}}}, "response_format.json_schema.schema",
     "dependentRequired"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "letters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string",
                                                                             "pattern": "(?=a)b"}}}]},
     "tools[0].function.parameters", "look-around"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "declared"),
    ({"tool_choice": "required"}, "tool_choice", "no 'tools'"),
])
def test_bad_structure_fields_are_400_naming_field_and_feature(client, body, param, words):
    r = _chat(client, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param and words in r.json()["error"]["message"]


def test_tools_render_through_a_template_that_takes_them_else_a_system_message():
    template = ("{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
                "{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}")
    tools = [WEATHER["function"]]
    assert template_takes_tools(template) and not template_takes_tools(None)
    msgs, var = with_tools(MSG, tools, template)
    assert render(msgs, template, tools=var).startswith("[get_weather]user:the cat")
    msgs, var = with_tools([{"role": "system", "content": "Be brief."}] + MSG, tools, None)
    assert var is None and msgs[0]["content"].startswith("Be brief.") and '"get_weather"' in msgs[0]["content"]


def test_openai_client_json_schema_and_tools_unchanged(client):
    """The `openai` client's own types parse the replies (in-process: ASGI transport, the async client)."""
    openai = pytest.importorskip("openai")
    import asyncio

    import httpx

    async def run():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="http://toy")
        api = openai.AsyncOpenAI(base_url="http://toy/v1", api_key="unused", http_client=http)
        res = await api.chat.completions.create(model="toy", messages=MSG, seed=2, response_format={
            "type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
        jsonschema.validate(json.loads(res.choices[0].message.content), SCHEMA)
        call = await api.chat.completions.create(model="toy", messages=MSG, seed=2, tools=[WEATHER],
                                                 tool_choice="required")
        fn = call.choices[0].message.tool_calls[0].function
        assert call.choices[0].finish_reason == "tool_calls" and fn.name == "get_weather"
        jsonschema.validate(json.loads(fn.arguments), WEATHER["function"]["parameters"])
        chunks = [c async for c in await api.chat.completions.create(model="toy", messages=MSG, seed=2, stream=True,
                                                                     tools=[WEATHER], tool_choice="required")]
        parts = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert parts[0].function.name == fn.name and "".join(p.function.arguments or "" for p in parts) == fn.arguments
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        # a round trip: the call and its result go back in the conversation
        tc = call.choices[0].message.tool_calls[0]
        follow = await api.chat.completions.create(model="toy", max_tokens=4, tools=[WEATHER], tool_choice="none",
                                                   messages=MSG + [{"role": "assistant", "content": None,
                                                                    "tool_calls": [tc.model_dump()]},
                                                                   {"role": "tool", "tool_call_id": tc.id,
                                                                    "content": "sunny"}])
        assert follow.choices[0].finish_reason in ("stop", "length")

    asyncio.run(run())


class Says:
    """A model that writes `text` (greedy), then EOS (token 0)."""

    def __init__(self, tok, text: str):
        self.ids = tok.encode(text, add_special_tokens=False) + [0]
        self.vocab, self.max_sequence_length, self.accelerator = tok.raw.get_vocab_size(with_added_tokens=True), 1024, "cpu"

    def new_cache(self):
        return {"n": 0}

    def forward(self, token_ids, cache, last_only=False):
        import numpy as np

        logits = np.zeros((1, self.vocab), np.float32)
        logits[0, self.ids[min(cache["n"], len(self.ids) - 1)]] = 9.0
        cache["n"] += 1
        return logits


def _says(text: str) -> TestClient:
    tok = byte_bpe_tokenizer()
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 1024, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    return TestClient(create_app(LoadedModel(bundle=Bundle(Path("."), manifest), model=Says(tok, text), tokenizer=tok,
                                             generation={"max_new_tokens": 200, "temperature": 0.0})))


CALL = '{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}'


@pytest.mark.parametrize("text, is_call", [
    (CALL, True),
    (" " + CALL, True),
    ('{"name":"get_weather","arguments":{"city":"Paris","unit":"kelvin"}}', False),  # arguments off-schema
    ('{"name":"other","arguments":{}}', False),  # not a declared function
    ("ok " + CALL, False),  # text first: content, even though a call follows
])
def test_auto_turns_exactly_one_valid_call_into_tool_calls(text, is_call):
    client = _says(text)
    body = {"messages": MSG, "tools": [WEATHER], "tool_choice": "auto"}
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    events = [json.loads(x[6:]) for x in client.post("/v1/chat/completions", json=dict(body, stream=True)).text.splitlines()
              if x.startswith("data: {")]
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
    if is_call:
        assert choice["finish_reason"] == events[-1]["choices"][0]["finish_reason"] == "tool_calls"
        assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris",
                                                                                             "unit": "celsius"}
        assert choice["message"]["content"] is None and content == "" and calls[0]["function"]["name"] == "get_weather"
    else:
        assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"] and not calls
        assert choice["message"]["content"] == content == text
