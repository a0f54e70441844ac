"""The parts of the device server, each alone (fast tier): request parsing, admission, the
generation session, metering's ledger and response shaping, with no HTTP stack in between."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from edgekit.core.bundle import Bundle
from edgekit.device.generate import GenerationResult
from edgekit.device.jsonl import JsonlLog
from edgekit.device.limits import Limits
from edgekit.device.runtime import LoadedModel
from edgekit.device.sampling import Penalties
from edgekit.device.server.admission import Door, ModelHost
from edgekit.device.server.metering import Ledger, Meters
from edgekit.device.server.parse import (CompletionRequest, RequestError, parse_completion, parse_embeddings,
                                         parse_json)
from edgekit.device.server.responses import (SSE_DONE, ChunkWriter, completion_body, error_response,
                                             generation_usage)
from edgekit.device.server.session import GenerationSession
from edgekit.device.serving import Admission, Metrics

from fakes import FakeTokenizer, ScriptedModel


def _loaded(task: str = "text-generation", generation: dict | None = None, model=None) -> LoadedModel:
    manifest = {"name": "toy", "task": task, "target": {"name": "fake"},
                "model": {"max_sequence_length": 32, "format": "onnx", "precision": "fp32", "runtime": "fake",
                          "architecture": {"hidden_size": 3, "vocab_size": 12}}}
    gen = {"max_new_tokens": 5, "temperature": 0.0} if generation is None else generation
    return LoadedModel(bundle=Bundle(Path("."), manifest), model=model or ScriptedModel([2, 3, 4, 5]),
                       tokenizer=FakeTokenizer(), generation=gen)


# --- parse ---------------------------------------------------------------------------------------

def test_parse_json_accepts_json_and_names_bad_bodies():
    assert parse_json(b'{"prompt": "a"}') == {"prompt": "a"}
    for raw in (b"{", b"\xff\xfe", b"[" * 100_000):
        with pytest.raises(RequestError, match="not valid JSON") as err:
            parse_json(raw)
        assert err.value.status == 400 and err.value.param is None


def test_parse_completion_gives_a_typed_request_with_bundle_defaults():
    req = parse_completion({"prompt": ["ab"], "seed": -1, "stop": "x", "presence_penalty": 0.5}, _loaded())
    assert isinstance(req, CompletionRequest) and not req.chat
    assert (req.prompt, req.prompt_ids) == ("ab", [0, 2, 3])
    assert (req.max_tokens, req.temperature, req.stream, req.stop) == (5, 0.0, False, ["x"])
    assert req.seed == (1 << 64) - 1  # reduced modulo 2**64
    assert req.penalties == Penalties(presence_penalty=0.5)
    assert req.sampler().temperature == 0.0


def test_parse_chat_takes_max_completion_tokens_and_renders_messages():
    req = parse_completion({"messages": [{"role": "user", "content": "abc"}], "max_completion_tokens": 2},
                           _loaded(), chat=True)
    assert req.chat and req.max_tokens == 2 and "abc" in req.prompt and len(req.prompt_ids) > 3


@pytest.mark.parametrize("body, chat, param, status", [
    ([], False, None, 400),
    ({"prompt": "a", "bogus": 1}, False, "bogus", 400),
    ({"prompt": ""}, False, "prompt", 400),
    ({"prompt": "a", "stream": "yes"}, False, "stream", 400),
    ({"prompt": "a", "top_p": 0}, False, "top_p", 400),
    ({"prompt": "a", "max_tokens": 33}, False, "max_tokens", 400),
    ({"prompt": "a" * 40}, False, "prompt", 400),  # 41 tokens with BOS: over the 32-token context
    ({"messages": "hi"}, True, "messages", 400),
])
def test_parse_completion_names_the_bad_field(body, chat, param, status):
    with pytest.raises(RequestError) as err:
        parse_completion(body, _loaded(), chat=chat, limits=Limits())
    assert (err.value.param, err.value.status) == (param, status)


def test_parse_embeddings_counts_tokens_and_reports_the_field():
    req = parse_embeddings({"input": ["ab", "abc"]}, _loaded("feature-extraction", {}))
    assert req.tokens == 3 + 4 and req.encoding_format == "float"
    with pytest.raises(RequestError) as err:
        parse_embeddings({"input": 5}, _loaded("feature-extraction", {}))
    assert err.value.param == "input" and err.value.status == 400


# --- admission -----------------------------------------------------------------------------------

def test_door_checks_auth_then_readiness():
    host = ModelHost()
    door = Door(host, "secret", max_queue=0)
    refusal = door.check(None)
    assert refusal.status == 401 and "API key" in refusal.message
    assert door.check("Bearer wrong").status == 401
    loading = door.check("Bearer secret")
    assert (loading.status, loading.message, loading.headers) == (503, "model is loading", {"Retry-After": "1"})
    host.error = "model failed to load: boom"
    assert door.check("Bearer secret").message == "model failed to load: boom"
    host.loaded = _loaded()
    assert door.check("Bearer secret") is None
    assert Door(host, None, 0).check(None) is None


def test_door_refuses_the_wrong_task_naming_the_right_route():
    door = Door(ModelHost(_loaded("feature-extraction", {})), None, 1)
    refusal = door.check_task("/v1/completions", "text-generation")
    assert (refusal.status, refusal.param) == (400, "model") and "use /v1/embeddings" in refusal.message
    assert door.check_task("/v1/embeddings", "feature-extraction") is None


def test_door_admits_one_running_plus_max_queue_then_503():
    door = Door(ModelHost(_loaded()), None, max_queue=1)
    assert door.admit() is None and door.admit() is None and door.waiting == 1
    full = door.admit()
    assert full.status == 503 and full.headers == {"Retry-After": "1"} and "server busy" in full.message
    door.release()
    assert door.admit() is None


def test_model_host_loads_in_the_background_and_keeps_the_error():
    host, failing = ModelHost(), ModelHost()
    done = threading.Event()

    def boom():
        try:
            raise OSError("no such bundle")
        finally:
            done.set()

    host.load_in_background(lambda: "model")
    failing.load_in_background(boom)
    done.wait(5)
    for _ in range(500):
        if host.loaded is not None and failing.error is not None:
            break
        threading.Event().wait(0.01)
    assert host.loaded == "model" and failing.loaded is None
    assert failing.error == "model failed to load: no such bundle"


# --- session -------------------------------------------------------------------------------------

class _Events:
    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)


def _run_session(body: dict, timeout: float = 60.0, model=None, cancel: bool = False):
    loaded = _loaded(model=model)
    session = GenerationSession(loaded, threading.Lock(), parse_completion(body, loaded), Meters(), "cmpl-1", timeout)
    if cancel:
        session.cancel()
    events, ends = _Events(), []
    session.run(events, lambda *end: ends.append(end))
    return session, events.items, ends


def test_session_collects_text_when_not_streaming():
    _, events, ends = _run_session({"prompt": "ab", "max_tokens": 3})
    assert [kind for kind, _ in events] == ["done"]
    res, text, usage = events[0][1]
    assert text == "cda" and res.finish_reason == "length" and usage["completion_tokens"] == 3
    assert ends == [(200, usage, None)]


def test_session_streams_one_delta_per_piece_and_honours_stop():
    _, events, ends = _run_session({"prompt": "ab", "max_tokens": 5, "stream": True, "stop": "a"})
    deltas = [v for kind, v in events if kind == "delta"]
    assert "".join(deltas) == "cd" and events[-1][0] == "done"
    assert events[-1][1][0].finish_reason == "stop" and ends[0][0] == 200


def test_session_status_tells_client_cancel_from_deadline():
    session, events, ends = _run_session({"prompt": "ab"}, cancel=True)
    assert events[-1][1][0].finish_reason == "cancelled" and not session.timed_out(events[-1][1][0])
    assert ends[0][0] == 499
    session, events, ends = _run_session({"prompt": "ab"}, timeout=-1.0)
    assert session.timed_out(events[-1][1][0]) and ends[0][0] == 504


def test_session_reports_a_failing_model_as_500():
    class Broken(ScriptedModel):
        def forward(self, *a, **kw):
            raise RuntimeError("runtime fell over")

    _, events, ends = _run_session({"prompt": "ab"}, model=Broken([2]))
    assert events[0][0] == "error" and str(events[0][1]) == "runtime fell over"
    assert ends == [(500, None, "runtime fell over")]


# --- metering ------------------------------------------------------------------------------------

def test_meters_without_sensors_add_nothing_and_describe_none():
    meters = Meters()
    assert meters.run("x", lambda: 42) == (42, None, None)
    assert meters.usage({"prompt_tokens": 1}, None, 1, None) == {"prompt_tokens": 1}
    assert meters.describe_power() is None and meters.describe_thermal() is None


def test_ledger_counts_and_logs_each_request(tmp_path):
    metrics = Metrics(Admission(0))
    ledger = Ledger(metrics, JsonlLog(tmp_path / "r.jsonl"))
    ledger.finish("/v1/completions", 200, 0.0, {"prompt_tokens": 3, "completion_tokens": 2, "prefill_ms": 1.5})
    ledger.finish("/props", 401, 0.0, error="missing key")
    text = metrics.text().decode()
    assert 'edgekit_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'edgekit_tokens_total{kind="completion"} 2.0' in text
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["route"], r["status"]) for r in recs] == [("/v1/completions", 200), ("/props", 401)]
    assert recs[0]["prefill_ms"] == 1.5 and recs[1]["error"] == "missing key"


# --- responses -----------------------------------------------------------------------------------

def _result(reason: str = "stop") -> GenerationResult:
    return GenerationResult(prompt_tokens=3, token_ids=[4, 5], prefill_seconds=0.0125, decode_seconds=0.5,
                            finish_reason=reason)


def test_generation_usage_counts_tokens_and_timings():
    u = generation_usage(_result())
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (3, 2, 5)
    assert u["prefill_ms"] == 12.5 and u["decode_tokens_per_second"] == round(_result().decode_tokens_per_second, 2)


def test_completion_bodies_in_text_and_chat_shape():
    text = completion_body("toy", False, "cmpl-1", "cd", "length", {"total_tokens": 5}, False)
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "cd"
    assert text["choices"][0]["logprobs"] is None and text["usage"] == {"total_tokens": 5}
    chat = completion_body("toy", True, "chatcmpl-1", "cd", "stop", None, False)
    assert chat["object"] == "chat.completion" and "usage" not in chat
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "cd"}
    first = completion_body("toy", True, "c", "x", None, None, True, first=True)["choices"][0]["delta"]
    later = completion_body("toy", True, "c", "y", None, None, True)["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": "x"} and later == {"content": "y"}


def test_chunk_writer_streams_deltas_then_usage_and_done():
    w = ChunkWriter("toy", True, "chatcmpl-1", "too slow", lambda res: False)
    first, second = w.event("delta", "c"), w.event("delta", "d")
    last = w.event("done", (_result(), "", {"completion_tokens": 2}))
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(second[6:])["choices"][0]["delta"] == {"content": "d"}
    assert last.endswith(SSE_DONE)
    final = json.loads(last[6:last.index("\n\n")])
    assert final["choices"][0]["finish_reason"] == "stop" and final["usage"] == {"completion_tokens": 2}


def test_chunk_writer_shapes_timeouts_and_server_errors():
    w = ChunkWriter("toy", False, "cmpl-1", "request exceeded the server's 1 s timeout", lambda res: True)
    timeout = json.loads(w.event("done", (_result("cancelled"), "", {}))[6:])
    assert timeout == {"error": {"message": "request exceeded the server's 1 s timeout", "type": "timeout"}}
    err = json.loads(w.event("error", RuntimeError("boom"))[6:])
    assert err == {"error": {"message": "boom", "type": "server_error"}}


def test_error_response_is_openai_shaped_with_headers():
    r = error_response("server busy", None, 503, headers={"Retry-After": "1"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert json.loads(r.body) == {"error": {"message": "server busy", "type": "invalid_request_error",
                                            "param": None, "code": None}}
