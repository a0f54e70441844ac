"""Full tier: structured output over real HTTP on a real stories260k bundle (torch blocked in the
server). The tiny model writes junk, yet all 50 schema-constrained replies parse and validate; tool
calls come back in OpenAI's shape through the `openai` client, streamed too."""

from __future__ import annotations

import json

import httpx
import pytest

from test_build_serve import serving

pytestmark = pytest.mark.full
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"mood": {"enum": ["happy", "sad", "sleepy"]}, "loud": {"type": "boolean"}},
     "required": ["mood", "loud"], "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"pet": {"type": "object", "properties": {
        "kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer", "minimum": 0, "maximum": 4}},
        "required": ["kind", "legs"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
     "required": ["pet"], "additionalProperties": False},
    {"type": "object", "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 20},
                                      "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
     "required": ["title", "rating"], "additionalProperties": False},
]
# small: stories260k's context is 256 tokens of ~1-2 characters, and the tool list goes in the prompt
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}


def _reply(base: str, schema: dict, seed: int, chat: bool, stream: bool) -> tuple[str, str]:
    """(text, finish_reason) of one schema-constrained request."""
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    body = {"max_tokens": 120, "seed": seed, "temperature": 0.9, "response_format": fmt, "stream": stream}
    body.update({"messages": [{"role": "user", "content": "Tell me about a cat."}]} if chat
                else {"prompt": "Once upon a time"})
    r = httpx.post(base + ("/v1/chat/completions" if chat else "/v1/completions"), json=body, timeout=120)
    assert r.status_code == 200, r.text
    if not stream:
        c = r.json()["choices"][0]
        return (c["message"]["content"] if chat else c["text"]), c["finish_reason"]
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    text = "".join((e["choices"][0]["delta"].get("content") or "") if chat else e["choices"][0]["text"]
                   for e in events)
    return text, events[-1]["choices"][0]["finish_reason"]


def fifty_constrained_requests(base: str) -> list[str]:
    """50 requests (5 schemas x 10 seeds; chat and completions, streamed and not): each reply must parse
    and validate against its schema. Returns the replies."""
    replies = []
    for seed in range(10):
        for k, schema in enumerate(SCHEMAS):
            text, reason = _reply(base, schema, seed, chat=(seed + k) % 2 == 0, stream=seed % 3 == 0)
            assert reason == "stop", (schema, seed, text)
            jsonschema.validate(json.loads(text), schema)
            replies.append(text)
    return replies


def test_fifty_schema_constrained_replies_parse_and_validate(stories_bundle):
    with serving(stories_bundle) as base:
        replies = fifty_constrained_requests(base)
        print("\n".join(replies[:5]))
        assert len(replies) == 50
        bad = httpx.post(base + "/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {
                "schema": {"type": "string", "pattern": "(?=a)b"}}}})
        assert bad.status_code == 400 and "look-around" in bad.json()["error"]["message"]


def openai_tools_round(base: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    res = client.chat.completions.create(model="stories260k", messages=msgs, tools=[WEATHER], tool_choice="required",
                                         seed=1, max_tokens=80)
    call = res.choices[0].message.tool_calls[0]
    assert res.choices[0].finish_reason == "tool_calls" and call.function.name == "weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    chunks = list(client.chat.completions.create(model="stories260k", messages=msgs, tools=[WEATHER], seed=1,
                                                 max_tokens=80, stream=True,
                                                 tool_choice={"type": "function", "function": {"name": "weather"}}))
    parts = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert parts[0].function.name == "weather" and chunks[-1].choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads("".join(p.function.arguments or "" for p in parts)),
                        WEATHER["function"]["parameters"])
    fmt = client.chat.completions.create(model="stories260k", messages=msgs, seed=3, max_tokens=120,
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "s", "schema": SCHEMAS[1]}})
    jsonschema.validate(json.loads(fmt.choices[0].message.content), SCHEMAS[1])


def test_openai_client_tools_and_json_schema_unchanged(stories_bundle):
    with serving(stories_bundle) as base:
        openai_tools_round(base)
