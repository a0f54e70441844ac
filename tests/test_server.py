"""The HTTP API on a fake model, through Starlette's test client (fast tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.runtime import LoadedModel
from edgekit.device.server import create_app

from fakes import FakeTokenizer, ScriptedModel


@pytest.fixture
def client():
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 32, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=ScriptedModel([2, 3, 4, 5]),
                         tokenizer=FakeTokenizer(), generation={"max_new_tokens": 5, "temperature": 0.0})
    return TestClient(create_app(loaded))


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/v1/models").json()["data"][0]["id"] == "toy"


def test_props_and_wrong_task_route(client):
    props = client.get("/props").json()
    assert props["task"] == "text-generation" and props["accelerator"] == "cpu" and props["target"] == "fake"
    r = client.post("/v1/embeddings", json={"input": "ab"})
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]["message"]


def test_completion_shape_and_usage(client):
    r = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "toy"
    assert body["choices"][0]["text"] == "cda"  # prompt "ab" = [0, 2, 3]; positions 2, 3, 4 predict 4, 5, 2
    assert body["choices"][0]["finish_reason"] == "length"
    u = body["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (3, 3, 6)
    assert u["prefill_ms"] >= 0 and u["decode_tokens_per_second"] >= 0


def test_defaults_come_from_generation_settings(client):
    r = client.post("/v1/completions", json={"prompt": "a"})
    assert r.json()["usage"]["completion_tokens"] == 5


def test_stop_and_stream(client):
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 5, "stop": "d"})
    assert r.json()["choices"][0] == {"text": "bc", "index": 0, "logprobs": None, "finish_reason": "stop"}
    with client.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 3, "stream": True}) as r:
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "bcd"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("body,param", [
    ({"prompt": 5}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "max_tokens": "3"}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 10**9}, "max_tokens"),
    ({"prompt": "a", "temperature": -1}, "temperature"),
    ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "n": 2}, "n"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "a", "stream": "yes"}, "stream"),
    ({"prompt": "a", "bogus": 1}, "bogus"),
    ({"prompt": "abcdefghij" * 4}, "prompt"),  # 41 tokens > 32 context
])
def test_bad_requests_are_400_naming_the_field(client, body, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_malformed_bodies(client):
    assert client.post("/v1/completions", content=b"{nope").status_code == 400
    assert client.post("/v1/completions", content=b"\xff\xfe").status_code == 400
    assert client.post("/v1/completions", content=b"[1]").status_code == 400
    assert client.post("/v1/completions", content=b"x" * (1 << 21)).status_code == 413
