"""Full tier: serve --parallel 4 on the real stories260k fp32 ONNX bundle over HTTP: 4 concurrent greedy
requests each get the text they get alone, and their decode steps really ran batched."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import load_bundle
from edgekit.device.batching import enable_parallel
from edgekit.device.runtime import open_model
from edgekit.device.server import create_app

pytestmark = pytest.mark.full
PROMPTS = ["Once upon a time", "The little dog", "Lily went to the park and", "Tom had a red ball."]


def _client(bundle, parallel: int):
    loaded = open_model(load_bundle(bundle), threads=1)
    enable_parallel(loaded, parallel)
    return TestClient(create_app(loaded)), loaded


def test_four_concurrent_requests_get_their_greedy_text_alone(stories_build):
    body = {"max_tokens": 24, "temperature": 0}
    alone, _ = _client(stories_build["fp32"], 1)
    want = [alone.post("/v1/completions", json=dict(body, prompt=p)).json()["choices"][0]["text"] for p in PROMPTS]
    together, loaded = _client(stories_build["fp32"], 4)
    assert together.get("/props").json()["slots"]["total"] == 4
    got = {}

    def ask(i):
        got[i] = together.post("/v1/completions", json=dict(body, prompt=PROMPTS[i])).json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [got.get(i) for i in range(len(PROMPTS))] == want and all(want)
    assert loaded.model.batched_rows > 0  # decode steps of several requests ran as one pass
