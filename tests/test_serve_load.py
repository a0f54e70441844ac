"""Full tier: the real server under load and misuse, over real HTTP (stories260k bundle, no torch
in the server process)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_build_serve import PROMPT, serving

pytestmark = pytest.mark.full


def test_32_clients_x_10_requests_get_answers_or_503_and_health_stays_up(stories_bundle, tmp_path):
    log = tmp_path / "requests.jsonl"
    with serving(stories_bundle, "--max-queue", "4", "--request-log", str(log)) as base:
        stop, health = threading.Event(), []

        def watch():
            with httpx.Client(timeout=5) as c:
                while not stop.is_set():
                    health.append(c.get(base + "/health").status_code)
                    stop.wait(0.05)

        def client(i):
            codes = []
            with httpx.Client(timeout=60) as c:
                for j in range(10):
                    r = c.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "seed": i * 10 + j,
                                                               "temperature": 0.8})
                    codes.append(r.status_code)
                    if r.status_code == 503:
                        assert r.headers["retry-after"] == "1" and r.json()["error"]["message"].startswith("server busy")
                    else:
                        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
            return codes

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(32) as pool:
            codes = [c for cs in pool.map(client, range(32)) for c in cs]
        stop.set()
        watcher.join()
        assert len(codes) == 320 and set(codes) <= {200, 503} and codes.count(200) >= 32
        assert health and set(health) == {200}
        text = httpx.get(base + "/metrics", timeout=10).text
        assert f'edgekit_requests_total{{route="/v1/completions",status="200"}} {codes.count(200)}.0' in text
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(recs) == 320 and sorted(r["status"] for r in recs) == sorted(codes)


def test_client_disconnect_mid_stream_stops_generation(stories_bundle, tmp_path):
    log = tmp_path / "requests.jsonl"
    with serving(stories_bundle, "--request-log", str(log)) as base:
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", base + "/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 200, "stream": True, "stop": []}) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")  # one token arrived, then the client goes away
        ok = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=30)
        assert ok.status_code == 200  # the model is free again
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    stream = [r for r in recs if r["status"] == 499]
    assert len(stream) == 1 and stream[0]["completion_tokens"] < 200


def test_bad_input_over_http_gets_4xx_json_and_the_server_survives(stories_bundle):
    bad = [b"{", b"\xff\xfe\xfd", b"[]", b'{"prompt": "a", "max_tokens": 1e309}', b'"just a string"',
           b'{"prompt": "a", "max_tokens": -5}', b'{"messages": [{"role": "user", "content": null}]}', b"x" * (1 << 21)]
    with serving(stories_bundle) as base:
        for route in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            for body in bad:
                r = httpx.post(base + route, content=body, headers={"Content-Type": "application/json"}, timeout=30)
                assert 400 <= r.status_code < 500, (route, body[:40], r.status_code, r.text[:200])
                assert "error" in r.json()
        assert httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=30).status_code == 200


def test_api_key_over_http_with_the_openai_client(stories_bundle):
    openai = pytest.importorskip("openai")
    with serving(stories_bundle, "--api-key", "k-123") as base:
        assert httpx.get(base + "/health", timeout=10).status_code == 200  # probes need no key
        r = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="wrong").completions.create(
                model="stories260k", prompt=PROMPT, max_tokens=2)
        ok = openai.OpenAI(base_url=base + "/v1", api_key="k-123").completions.create(
            model="stories260k", prompt=PROMPT, max_tokens=2)
        assert ok.usage.completion_tokens == 2
