"""Request limits over HTTP: bodies refused before buffering (413), prompt/stop/messages/n caps (400),
all stated in /props. Starlette's test client and a real uvicorn on loopback (fast tier)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.limits import Limits
from edgekit.device.runtime import LoadedModel
from edgekit.device.server import create_app

from fakes import FakeTokenizer, ScriptedModel

LIMIT = 64 * 1024


def _loaded(task="text-generation"):
    manifest = {"name": "toy", "task": task, "target": {"name": "fake"},
                "model": {"max_sequence_length": 32, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    return LoadedModel(bundle=Bundle(Path("."), manifest), model=ScriptedModel([2, 3, 4, 5]),
                       tokenizer=FakeTokenizer(), generation={"max_new_tokens": 3})


@pytest.fixture
def client():
    return TestClient(create_app(_loaded(), limits=Limits(max_body_bytes=LIMIT)))


def _is_413(r):
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and f"exceeds {LIMIT} bytes" in err["message"]


@pytest.mark.parametrize("method,path", [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                         ("POST", "/v1/embeddings"), ("GET", "/health"), ("GET", "/props"),
                                         ("POST", "/nowhere")])
def test_declared_oversized_body_is_413_on_every_route_without_reading_it(client, method, path):
    read = []

    def body():  # declared length over the cap: not one chunk may be pulled
        read.append(1)
        yield b"x" * LIMIT

    r = client.request(method, path, content=body(), headers={"content-length": str(LIMIT + 1)})
    _is_413(r)
    assert read == []


def _asgi_post(app, path: str, chunk_bytes: int, chunks: int):
    """Drive the ASGI app directly with a chunked body (the test client reads a body whole before sending):
    (status, JSON-or-None body, how many chunks the app pulled)."""
    pulled, sent = [0], []

    async def receive():
        pulled[0] += 1
        more = pulled[0] < chunks
        return {"type": "http.request", "body": b"y" * chunk_bytes, "more_body": more}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"transfer-encoding", b"chunked")], "client": ("127.0.0.1", 1), "server": ("x", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if status == 413 else body, pulled[0]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/health"])
def test_chunked_body_is_counted_and_abandoned_at_the_limit(path):
    task = "feature-extraction" if path == "/v1/embeddings" else "text-generation"
    app = create_app(_loaded(task), limits=Limits(max_body_bytes=LIMIT))
    status, body, pulled = _asgi_post(app, path, 16384, 256 * 64)  # 256 MiB on offer, no Content-Length
    if path == "/health":  # a GET route: the body is never read, the method is refused
        assert status == 405 and pulled == 0
        return
    assert status == 413 and f"exceeds {LIMIT} bytes" in body["error"]["message"]
    assert pulled == LIMIT // 16384 + 1  # stopped at the first chunk past the limit


def test_bodies_at_the_limit_still_work_and_the_refusal_is_counted(client):
    body = b'{"prompt": "ab", "max_tokens": 2}'
    r = client.post("/v1/completions", content=body + b" " * (LIMIT - len(body)))
    assert r.status_code == 200, r.text
    client.post("/v1/completions", content=b" " * (LIMIT + 1))
    assert 'route="/v1/completions",status="413"' in client.get("/metrics").text


@pytest.mark.parametrize("body,param,words", [
    ({"prompt": "a" * (32 * 32 + 1)}, "prompt", "1025 characters"),
    ({"prompt": "a", "stop": "x" * 65}, "stop", "at most 64 characters"),
    ({"prompt": "a", "stop": ["x"] * 5}, "stop", "at most 4 strings"),
    ({"prompt": "a", "n": 2}, "n", "between 1 and 1"),
    ({"messages": [{"role": "user", "content": "a"}] * 257}, "messages", "at most 256"),
    ({"messages": [{"role": "user", "content": "a" * 600}] * 2}, "messages", "1200 characters"),
])
def test_request_caps_are_400_naming_the_field(client, body, param, words):
    r = client.post("/v1/chat/completions" if "messages" in body else "/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"]


def test_props_states_the_limits(client):
    limits = client.get("/props").json()["limits"]
    assert limits == {"max_body_bytes": LIMIT, "max_prompt_chars_per_context_token": 32, "max_stop_strings": 4,
                      "max_stop_chars": 64, "max_messages": 256, "max_n": 1, "max_prompt_tokens": 31,
                      "max_prompt_chars": 1024}


@contextmanager
def _serving(app):
    """A real uvicorn serving `app` on a loopback port: yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live():
    """The toy model served by a real uvicorn (body limit 1 MiB, the default)."""
    with _serving(create_app(_loaded())) as port:
        yield port


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _send_until_refused(port: int, head: bytes, chunk: bytes, most_bytes: int) -> tuple[bytes, int]:
    """Send `head`, then `chunk` repeatedly until the server answers or closes: (reply, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        s.setblocking(False)
        reply = b""
        while sent < most_bytes:
            try:
                reply += s.recv(65536)
                if reply:
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:  # reset: the server stopped reading
                break
        s.setblocking(True)
        try:
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):  # the head and the JSON error
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        except OSError:
            pass
    return reply, sent


def _health_seconds(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    return time.perf_counter() - t0


def test_real_server_refuses_hundreds_of_mb_without_buffering(live):
    rss0 = _rss_bytes()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300000000\r\n\r\n")
    reply, sent = _send_until_refused(live, head, b"z" * 65536, 300_000_000)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"exceeds 1048576 bytes" in reply
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply, sent = _send_until_refused(live, head, b"10000\r\n" + b"z" * 65536 + b"\r\n", 300_000_000)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 64 << 20  # stopped long before the 300 MB on offer
    assert _rss_bytes() - rss0 < 16 << 20
    assert _health_seconds(live) < 1.0


def test_half_sent_requests_do_not_delay_health(live):
    socks = []
    try:
        for i in range(64):
            s = socket.create_connection(("127.0.0.1", live), timeout=5)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{" if i % 2
                      else b"GET /health HTTP/1.1\r\nHost")
            socks.append(s)
        assert _health_seconds(live) < 1.0
    finally:
        for s in socks:
            s.close()


class SlowTokenizer(FakeTokenizer):
    """Encoding takes `seconds` of wall time (as a long prompt does on a Pi's CPU)."""

    seconds = 1.5

    def encode(self, text, add_special_tokens=True):
        time.sleep(self.seconds)
        return super().encode(text, add_special_tokens)


def _post(port: int, body: bytes, results: list) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        reply = b""
        while more := s.recv(65536):
            reply += more
    results.append(reply)


def test_megabyte_prompts_get_4xx_while_health_answers_within_a_second():
    loaded = _loaded()
    loaded.tokenizer = SlowTokenizer()
    with _serving(create_app(loaded)) as port:
        results, threads = [], []
        bodies = [json.dumps({"prompt": "a" * 1_000_000}).encode()] * 4  # 1 MB: refused before tokenizing
        bodies += [json.dumps({"prompt": "ab", "max_tokens": 1}).encode()] * 2  # tokenized: 1.5 s each
        for body in bodies:
            threads.append(threading.Thread(target=_post, args=(port, body, results)))
            threads[-1].start()
        time.sleep(0.2)
        waits = [_health_seconds(port) for _ in range(5)]
        for t in threads:
            t.join(30)
    assert max(waits) < 1.0, waits
    status = sorted(int(r.split(b" ", 2)[1]) for r in results)
    assert status == [200, 200, 400, 400, 400, 400], results
    assert all(b"1000000 characters" in r for r in results if b" 400 " in r[:16])
