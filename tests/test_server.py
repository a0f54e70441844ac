"""The HTTP API on a fake model, through Starlette's test client (fast tier)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.runtime import LoadedModel
from edgekit.device.server import create_app

from fakes import FakeTokenizer, RepeatingModel, ScriptedModel


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


def _repeating_client(generation: dict) -> TestClient:
    manifest = {"name": "rep", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    return TestClient(create_app(LoadedModel(bundle=Bundle(Path("."), manifest), model=RepeatingModel(),
                                             tokenizer=FakeTokenizer(), generation=generation)))


def test_penalties_over_http_and_bundle_defaults_for_omitted_fields():
    plain = _repeating_client({"max_new_tokens": 5})
    assert plain.post("/v1/completions", json={"prompt": "b"}).json()["choices"][0]["text"] == "aaaaa"
    body = {"prompt": "b", "repeat_penalty": 2.0, "repeat_last_n": 1}
    assert plain.post("/v1/completions", json=body).json()["choices"][0]["text"] == "ababa"
    body = {"prompt": "a", "frequency_penalty": 0.6, "presence_penalty": 0}
    assert plain.post("/v1/completions", json=body).json()["choices"][0]["text"] == "aabab"
    defaults = {"max_new_tokens": 5, "repeat_penalty": 2.0, "repeat_last_n": 1,
                "sources": {"repeat_penalty": "recipe [generation]"}}
    penalised = _repeating_client(defaults)
    assert penalised.post("/v1/completions", json={"prompt": "b"}).json()["choices"][0]["text"] == "ababa"
    off = {"prompt": "b", "repeat_penalty": 1.0}  # a request's field beats the bundle default
    assert penalised.post("/v1/completions", json=off).json()["choices"][0]["text"] == "aaaaa"
    shown = penalised.get("/props").json()["generation_defaults"]
    assert shown["repeat_penalty"] == {"value": 2.0, "source": "recipe [generation]"}
    assert shown["repeat_last_n"] == {"value": 1, "source": "bundle generation.json"}
    assert shown["presence_penalty"] == {"value": 0.0, "source": "edgekit default (not in the bundle)"}


def test_stop_and_stream(client):
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 5, "stop": "d"})
    assert r.json()["choices"][0] == {"text": "bc", "index": 0, "logprobs": None, "finish_reason": "stop"}
    with client.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 3, "stream": True}) as r:
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "bcd"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("body,param,route", [(c + ("completions",))[:3] for c in [
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
    ({"prompt": "a", "seed": 1.5}, "seed"),
    ({"prompt": "a", "top_k": -1}, "top_k"),
    ({"prompt": "a", "max_tokens": True}, "max_tokens"),
    ({"prompt": "a", "frequency_penalty": 2.5}, "frequency_penalty"),
    ({"prompt": "a", "frequency_penalty": "1"}, "frequency_penalty"),
    ({"prompt": "a", "presence_penalty": -2.01}, "presence_penalty"),
    ({"prompt": "a", "repeat_penalty": 0}, "repeat_penalty"),
    ({"prompt": "a", "repeat_penalty": -1.1}, "repeat_penalty"),
    ({"prompt": "a", "repeat_last_n": -2}, "repeat_last_n"),
    ({"prompt": "a", "repeat_last_n": 1.5}, "repeat_last_n"),
    ({"messages": [{"role": "user", "content": "a"}], "presence_penalty": 3}, "presence_penalty", "chat"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"messages": []}, "messages", "chat"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "messages", "chat"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages", "chat"),
    ({"messages": [{"role": "user"}]}, "messages", "chat"),
    ({"messages": "hi"}, "messages", "chat"),
    ({"messages": [{"role": "user", "content": "a"}], "prompt": "a"}, "prompt", "chat"),
    ({"messages": [{"role": "user", "content": "a"}], "temperature": 9}, "temperature", "chat"),
    ({"messages": [{"role": "user", "content": "abcdefghij" * 4}]}, "messages", "chat"),
]])
def test_bad_requests_are_400_naming_the_field(client, body, param, route):
    r = client.post("/v1/chat/completions" if route == "chat" else "/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_malformed_bodies(client):
    assert client.post("/v1/completions", content=b"{nope").status_code == 400
    assert client.post("/v1/completions", content=b"\xff\xfe").status_code == 400
    assert client.post("/v1/completions", content=b"[1]").status_code == 400
    assert client.post("/v1/completions", content=b"x" * (1 << 21)).status_code == 413


def test_chat_completion_uses_the_default_template_and_chat_shapes(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "ab"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and len(msg["content"]) == 2
    # "User: ab\nAssistant:" has letters u,s,e,r,a,b,a,s,s,i,s,t,a,n,t -> only a..j count, no BOS (template text)
    assert body["usage"]["prompt_tokens"] == 1 + len([c for c in "User: ab\nAssistant:" if c in "abcdefghij"])
    with client.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                                              "max_tokens": 3, "stream": True}) as s:
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in events[1]["choices"][0]["delta"] and events[-1]["usage"]["completion_tokens"] == 3


def _toy(**kw):
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 32, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    return LoadedModel(bundle=Bundle(Path("."), manifest), model=ScriptedModel([2, 3, 4, 5]),
                       tokenizer=FakeTokenizer(), generation={"max_new_tokens": 5, "temperature": 0.0}, **kw)


def test_api_key_is_required_except_for_health():
    c = TestClient(create_app(_toy(), api_key="s3cret"))
    assert c.get("/health").status_code == 200
    r = c.post("/v1/completions", json={"prompt": "a"})
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("missing or wrong API key")
    assert c.post("/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = c.post("/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_health_is_503_while_loading_then_200():
    import threading

    release = threading.Event()

    def loader():
        release.wait(10)
        return _toy()

    with TestClient(create_app(loader=loader)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
        assert c.post("/v1/completions", json={"prompt": "a"}).status_code == 503
        release.set()
        for _ in range(100):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get("/health").json()["status"] == "ok"


def test_admission_bounds_the_queue():
    from edgekit.device.serving import Admission, QueueFull

    a = Admission(max_queue=1)
    a.acquire()
    a.acquire()
    assert a.waiting == 1
    with pytest.raises(QueueFull):
        a.acquire()
    a.release()
    a.acquire()


def test_metrics_and_request_log(tmp_path):
    from edgekit.device.jsonl import JsonlLog

    log = JsonlLog(tmp_path / "log" / "requests.jsonl")
    c = TestClient(create_app(_toy(), request_log=log))
    c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
    c.post("/v1/completions", json={"prompt": 5})
    text = c.get("/metrics").text
    assert 'edgekit_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'edgekit_requests_total{route="/v1/completions",status="400"} 1.0' in text
    assert 'edgekit_tokens_total{kind="completion"} 2.0' in text and "edgekit_queue_depth 0.0" in text
    lines = (tmp_path / "log" / "requests.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [(r["route"], r["status"]) for r in recs] == [("/v1/completions", 200), ("/v1/completions", 400)]
    assert recs[0]["completion_tokens"] == 2 and "prefill_ms" in recs[0] and "'prompt' must be" in recs[1]["error"]
    # a torn last line (kill -9 mid-write) leaves every earlier line intact
    with open(tmp_path / "log" / "requests.jsonl", "ab") as fh:
        fh.write(b'{"time": "2026')
    log2 = JsonlLog(tmp_path / "log" / "requests.jsonl")
    log2.write({"route": "/x", "status": 200})
    good = [ln for ln in (tmp_path / "log" / "requests.jsonl").read_text().splitlines()[:2]]
    assert [json.loads(x)["status"] for x in good] == [200, 400]


_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(_SCALARS,
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                             st.sampled_from(["prompt", "messages", "max_tokens", "temperature", "top_p", "stop",
                                              "seed", "stream", "role", "content", "input", "x"]), inner, max_size=5),
                         max_leaves=12),
       route=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]))
def test_random_json_bodies_never_break_the_server(client, body, route):
    r = client.post(route, json=body)
    assert 200 <= r.status_code < 500, (body, r.status_code, r.text)
    assert isinstance(r.json(), dict)
    assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1}).status_code == 200


class _FakeEncoder:
    def embed(self, batch_ids):
        import numpy as np

        out = np.array([[len(ids), 1.0, 0.0] for ids in batch_ids], np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_embeddings_route_on_a_feature_extraction_model():
    import base64

    import numpy as np

    manifest = {"name": "enc", "task": "feature-extraction", "target": {"name": "fake"},
                "model": {"max_sequence_length": 16, "format": "onnx", "precision": "fp32", "runtime": "fake",
                          "architecture": {"hidden_size": 3, "vocab_size": 12}}}
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=_FakeEncoder(), tokenizer=FakeTokenizer(),
                         generation={})
    c = TestClient(create_app(loaded))
    r = c.post("/v1/embeddings", json={"input": ["ab", "abc"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] == 3 + 4
    assert abs(np.linalg.norm(body["data"][0]["embedding"]) - 1) < 1e-6
    b64 = c.post("/v1/embeddings", json={"input": "ab", "encoding_format": "base64"}).json()["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(b64), "<f4"), body["data"][0]["embedding"])
    assert c.post("/v1/completions", json={"prompt": "a"}).status_code == 400
    assert 'route="/v1/embeddings",status="200"' in c.get("/metrics").text


def test_request_timeout_stops_generation_with_504():
    c = TestClient(create_app(_toy(), request_timeout=0.0))  # every deadline has passed at the first check
    r = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 5})
    assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
    with c.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 5, "stream": True}) as s:
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    assert events[-1]["error"]["type"] == "timeout"
    assert 'route="/v1/completions",status="504"' in c.get("/metrics").text
    ok = TestClient(create_app(_toy(), request_timeout=60)).post("/v1/completions", json={"prompt": "a"})
    assert ok.status_code == 200


def test_channel_delivers_in_order_with_one_wakeup_per_undrained_batch():
    import asyncio
    import threading

    from edgekit.device.serving import Channel

    async def run():
        wakeups = []
        real = asyncio.get_running_loop().call_soon_threadsafe
        class CountingLoop:  # counts the wake-ups the channel schedules, delegates the rest
            def call_soon_threadsafe(self, *args):
                wakeups.append(args)
                return real(*args)

        channel = Channel(CountingLoop())
        t = threading.Thread(target=lambda: [channel.put(i) for i in range(50)])
        t.start()
        t.join()  # all 50 put before the loop could drain: one wake-up
        first = await channel.drain()
        channel.put("late")
        second = await channel.drain()
        return first, second, len(wakeups)

    first, second, wakeups = asyncio.run(run())
    assert first == list(range(50))
    assert second == ["late"]
    assert wakeups == 2
