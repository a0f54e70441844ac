"""bench/_server.py's SSE reader against a small stdlib HTTP server that streams fixed events."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAT = [{"choices": [{"delta": {"role": "assistant"}}]}, {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}}]}, {"choices": [], "usage": {"completion_tokens": 2}}]


def _server_module():
    spec = importlib.util.spec_from_file_location("bench_server", ROOT / "bench" / "_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def sse_server():
    """Answers every POST with CHAT as SSE events, a comment and `data: [DONE]`; records path and body."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b": keep-alive\n\n")
            for chunk in CHAT:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_sse_chunks_yields_each_parsed_event_with_its_arrival_time(sse_server):
    base, seen = sse_server
    got = list(_server_module().sse_chunks(base, "/v1/completions", {"prompt": "x", "max_tokens": 3}, 10))
    assert [chunk for _, chunk in got] == CHAT  # the comment and [DONE] are not chunks
    times = [t for t, _ in got]
    assert times == sorted(times) and times[0] > 0
    assert seen == [("/v1/completions", {"prompt": "x", "max_tokens": 3, "stream": True})]


def test_stream_chat_joins_the_text_and_keeps_the_final_usage(sse_server):
    base, seen = sse_server
    out = _server_module().stream_chat(base, [{"role": "user", "content": "hi"}], 4, 10)
    assert out["text"] == "Hello" and out["usage"] == {"completion_tokens": 2}
    assert 0 < out["ttft_seconds"] <= out["seconds"]
    assert seen[0][0] == "/v1/chat/completions" and seen[0][1]["stream"] is True and seen[0][1]["temperature"] == 0
