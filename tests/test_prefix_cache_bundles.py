"""Full tier: the prefix cache on real stories260k bundles (ONNX, LiteRT arm-cpu, coral segments on
the CPU), over HTTP: a 4-turn greedy chat answers exactly as a server without the cache, and every
later turn takes the earlier turns from the cache (usage.prompt_tokens_details.cached_tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import load_bundle
from edgekit.device.prefix_cache import PrefixCache
from edgekit.device.runtime import open_model
from edgekit.device.server import create_app

pytestmark = pytest.mark.full
TURNS = ["A cat story.", "Her food?", "A friend?", "The end?"]  # 4 turns within coral's 128 tokens


def chat_side_by_side(bundle: Path, max_tokens: int = 10, reuse_answers: bool = False) -> list[tuple[str, int, int]]:
    """Run TURNS as one chat on the bundle with and without a prefix cache; assert identical answers
    (only promised without `reuse_answers`); return (answer, prompt tokens, cached tokens) per turn."""
    def opened():  # coral: its segments on the CPU (no Edge TPU here)
        return open_model(load_bundle(bundle), threads=1, allow_cpu_fallback=True)

    with_cache = opened()
    with_cache.prefix_cache = PrefixCache(64 << 20, reuse_answers)
    clients = TestClient(create_app(with_cache)), TestClient(create_app(opened()))
    messages, out = [], []
    for user in TURNS:
        messages.append({"role": "user", "content": user})
        bodies = [c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": max_tokens,
                                                      "temperature": 0}).json() for c in clients]
        on, off = ([b["choices"][0]["message"]["content"], b["usage"]] for b in bodies)
        assert on[0] and (reuse_answers or on[0] == off[0]), (user, on[0], off[0])
        assert off[1]["prompt_tokens_details"]["cached_tokens"] == 0
        out.append((on[0], on[1]["prompt_tokens"], on[1]["prompt_tokens_details"]["cached_tokens"]))
        messages.append({"role": "assistant", "content": on[0]})
    assert out[0][2] == 0
    for (_, prev_prompt, _), (_, prompt, cached) in zip(out, out[1:]):
        assert (prev_prompt <= cached if reuse_answers else prev_prompt == cached) and cached < prompt
    return out


@pytest.mark.parametrize("reuse_answers", [False, True])
def test_prefix_cache_on_onnx(stories_bundle, reuse_answers):
    chat_side_by_side(stories_bundle, reuse_answers=reuse_answers)


@pytest.mark.parametrize("variant", ["arm-cpu", "coral"])
def test_prefix_cache_on_litert(tflite_builds, variant):
    chat_side_by_side(tflite_builds[variant])
