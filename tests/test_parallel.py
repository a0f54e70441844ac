"""serve --parallel (fast tier): the batched decode step's feeds and split (edgekit.device.onnx_model),
the coalescing runner (edgekit.device.batching), slots in /props and /metrics, and the energy of
overlapping requests split evenly (edgekit.device.power.meter)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.batching import BatchingModel, enable_parallel
from edgekit.device.onnx_model import OnnxCausalLM, batch_feeds
from edgekit.device.power.meter import EnergyMeter
from edgekit.device.runtime import LoadedModel
from edgekit.device.server import create_app

from fakes import VOCAB, FakeClock, FakeOrtSession, FakeTokenizer, TraceSource


class _Info:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class BatchContextSession:
    """An onnxruntime-like session with a batch axis whose next token depends on every real token of
    its row: the one key channel holds the token ids, pads (attention_mask 0) are left out, and it
    checks that position_ids count the row's real tokens. Records the feeds of every run."""

    def __init__(self, batch="batch", gate: threading.Event | None = None):
        self.batch, self.runs, self.outputs, self.gate = batch, [], [], gate

    def get_inputs(self):
        names = ["input_ids", "attention_mask", "position_ids", "logits_rows", "past_key_0", "past_value_0"]
        return [_Info(n, [self.batch, 1, "past", 1] if n.startswith("past") else [self.batch, "s"]) for n in names]

    def get_outputs(self):
        return [_Info(n, []) for n in ("logits", "present_key_0", "present_value_0")]

    def run(self, output_names, feeds):
        if self.gate is not None:  # hold every step until the test opens the gate
            self.gate.wait(timeout=30)
        self.runs.append(feeds)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        key = np.concatenate([feeds["past_key_0"], ids.astype(np.float32)[:, None, :, None]], axis=2)
        logits = np.zeros((len(ids), ids.shape[1], VOCAB), np.float32)
        for b in range(len(ids)):
            real = key[b, 0, :, 0][mask[b] == 1]
            for k in range(ids.shape[1]):
                upto = real[: len(real) - ids.shape[1] + k + 1]
                assert feeds["position_ids"][b, k] == len(upto) - 1, "position is the row's own length"
                h = int(np.dot(np.arange(1, len(upto) + 1), upto))
                logits[b, k, 2 + h % 10] = 5.0 + h % 7
        self.outputs.append([logits[:, feeds["logits_rows"]], key, key * 2])
        return self.outputs[-1]


def _lm(session=None, max_len=64):
    return OnnxCausalLM(session or BatchContextSession(), max_sequence_length=max_len)


def test_batch_feeds_pad_left_and_position_each_row():
    f = batch_feeds([7, 8, 9], [2, 0, 3])
    assert f["input_ids"].tolist() == [[7], [8], [9]]
    assert f["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert f["position_ids"].tolist() == [[2], [0], [3]]


def test_batched_step_equals_each_row_alone_and_splits_the_caches():
    lm = _lm()
    prompts = [[3, 4], [5, 6, 7, 8, 9], [2]]
    solo, batch = [lm.new_cache() for _ in prompts], [lm.new_cache() for _ in prompts]
    for p, a, b in zip(prompts, solo, batch):
        lm.forward(p, a, last_only=True), lm.forward(p, b, last_only=True)
    tokens = [4, 5, 6]
    for _ in range(3):
        one = np.concatenate([lm.forward([t], c) for t, c in zip(tokens, solo)])
        many = lm.forward_batch(tokens, batch)
        assert many.shape == (3, VOCAB) and np.array_equal(one, many)
        for a, b in zip(solo, batch):
            assert a.length == b.length and all(np.array_equal(x, y) for x, y in zip(a.past, b.past))
        tokens = [int(t) for t in one.argmax(1)]
    runs, outs = lm.session.runs, lm.session.outputs
    assert runs[-1]["past_key_0"].shape == (3, 1, 7, 1) and runs[-1]["logits_rows"].tolist() == [0]
    assert runs[-1]["attention_mask"].sum(1).tolist() == [5, 8, 4]  # 4, 7, 3 cached tokens + the new one
    assert runs[-1]["past_key_0"] is outs[-5][1]  # same rows again (3 solo runs since): last presents as they are
    batch.reverse()  # another order: padded afresh, same logits
    tokens.reverse()
    many = lm.forward_batch(tokens, batch)
    assert not any(runs[-1]["past_key_0"] is o[1] for o in outs[:-1]) and runs[-1]["past_key_0"].shape == (3, 1, 8, 1)
    assert np.array_equal(many[::-1], np.concatenate([lm.forward([t], c) for t, c in zip(tokens[::-1], solo)]))


def test_old_graph_with_batch_fixed_at_one_says_why():
    lm = OnnxCausalLM(FakeOrtSession(rows=True), max_sequence_length=16)
    assert "batch fixed at 1" in lm.batch_refusal
    with pytest.raises(ValueError, match="batch fixed"):
        lm.forward_batch([1], [lm.new_cache()])


class _Recording:
    """Wraps an OnnxCausalLM, recording the size of every pass (prompt: its tokens, batch: its rows)."""

    def __init__(self, lm, fail_batch=False):
        self.lm, self.passes, self.fail_batch = lm, [], fail_batch
        self.max_sequence_length = lm.max_sequence_length

    def new_cache(self):
        return self.lm.new_cache()

    def forward(self, ids, cache, last_only=False):
        self.passes.append(("alone", len(ids)))
        return self.lm.forward(ids, cache, last_only)

    def forward_batch(self, ids, caches):
        self.passes.append(("batch", len(ids)))
        if self.fail_batch:
            raise RuntimeError("runtime failed")
        return self.lm.forward_batch(ids, caches)


def _decode_in_threads(model, prompts, steps, results, errors):
    """Each prompt in its own thread: prefill, wait for the others, then `steps` greedy decode steps."""
    barrier = threading.Barrier(len(prompts))

    def one(i):
        try:
            with model.sequence():
                cache = model.new_cache()
                logits = model.forward(prompts[i], cache, last_only=True)
                barrier.wait()
                out = []
                for _ in range(steps):
                    out.append(int(logits[-1].argmax()))
                    logits = model.forward([out[-1]], cache)
                results[i] = out
        except Exception as exc:
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a caller was left waiting"


def _alone(prompts, steps):
    lm, out = _lm(), []
    for p in prompts:
        cache, toks = lm.new_cache(), []
        logits = lm.forward(p, cache, last_only=True)
        for _ in range(steps):
            toks.append(int(logits[-1].argmax()))
            logits = lm.forward([toks[-1]], cache)
        out.append(toks)
    return out


def test_coalescer_merges_decode_calls_and_runs_prompts_alone():
    prompts = [[3, 4], [5, 6, 7], [2, 9, 9, 9], [8]]
    rec = _Recording(_lm())
    model = BatchingModel(rec, max_batch=4, window_seconds=2.0)  # waits for all four every step
    results, errors = {}, {}
    _decode_in_threads(model, prompts, 5, results, errors)
    assert not errors and [results[i] for i in range(4)] == _alone(prompts, 5)
    prompts_run = [n for kind, n in rec.passes if kind == "alone" and n > 1]
    assert sorted(prompts_run) == [2, 3, 4]  # the 1-token prompt may have joined a batch; no prompt was batched
    batches = [n for kind, n in rec.passes if kind == "batch"]
    assert batches[-4:] == [4, 4, 4, 4] and model.batched_rows == sum(batches)
    assert model.max_sequence_length == 64 and model.new_cache().length == 0  # passes through


def test_a_row_that_cannot_run_fails_alone_and_a_failed_pass_fails_every_row():
    rec = _Recording(_lm(max_len=6))
    model = BatchingModel(rec, max_batch=4, window_seconds=2.0)
    results, errors = {}, {}
    _decode_in_threads(model, [[3, 4, 5, 6, 7], [2], [2, 3]], 3, results, errors)
    assert isinstance(errors[0], ValueError) and "exceeds" in str(errors[0])
    assert len(results[1]) == len(results[2]) == 3
    broken = BatchingModel(_Recording(_lm(), fail_batch=True), max_batch=4, window_seconds=2.0)
    results, errors = {}, {}
    _decode_in_threads(broken, [[3, 1], [4, 1], [5, 1]], 2, results, errors)
    assert sorted(errors) == [0, 1, 2] and all("runtime failed" in str(e) for e in errors.values())


def _loaded(session, slots: int) -> LoadedModel:
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=OnnxCausalLM(session, 64),
                         tokenizer=FakeTokenizer(), generation={"max_new_tokens": 6, "temperature": 0.0})
    enable_parallel(loaded, slots)
    return loaded


def test_props_and_metrics_show_slots_and_why_parallel_is_one():
    c = TestClient(create_app(_loaded(BatchContextSession(), 4), max_queue=2))
    props = c.get("/props").json()
    assert props["slots"] == {"total": 4, "in_use": 0}
    assert props["parallel"]["requested"] == 4 and props["parallel"]["reason"] is None
    text = c.get("/metrics").text
    assert "edgekit_slots_total 4.0" in text and "edgekit_slots_in_use 0.0" in text
    old = TestClient(create_app(_loaded(FakeOrtSession(rows=True), 4)))
    props = old.get("/props").json()
    assert props["slots"]["total"] == 1 and "batch fixed at 1" in props["parallel"]["reason"]


def test_concurrent_http_requests_get_their_text_alone():
    prompts = ["ab", "bcd", "a", "cab"]
    alone = TestClient(create_app(_loaded(BatchContextSession(), 1)))
    want = [alone.post("/v1/completions", json={"prompt": p}).json()["choices"][0]["text"] for p in prompts]
    session = BatchContextSession(gate=threading.Event())
    c = TestClient(create_app(_loaded(session, 4)))
    got = {}

    def ask(i):
        got[i] = c.post("/v1/completions", json={"prompt": prompts[i]}).json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    # the first step waits, so requests that arrive meanwhile are queued and join the batch (without the
    # gate, a slow or busy machine could serve them one after another and the batching check would fail)
    time.sleep(2.0)
    session.gate.set()
    for t in threads:
        t.join(timeout=20)
    assert [got[i] for i in range(4)] == want
    assert max(len(f["input_ids"]) for f in session.runs) > 1  # some steps really ran batched


def test_overlapping_counter_windows_split_the_energy():
    clock = FakeClock(1.0)
    meter = EnergyMeter(TraceSource(clock, energy_at=lambda t: 10.0 * t), clock=clock)  # 10 W
    meter.begin("a")
    clock.advance(1.0)
    meter.begin("b")
    clock.advance(2.0)
    a = meter.end("a")
    clock.advance(1.0)
    b = meter.end("b")
    assert a.joules == pytest.approx(10.0 + 20.0 / 2) and b.joules == pytest.approx(20.0 / 2 + 10.0)
    assert a.joules + b.joules == pytest.approx(40.0)  # the energy used, counted once
    assert (a.shared_with, a.window_joules, b.window_joules) == (2, pytest.approx(30.0), pytest.approx(30.0))
    meter.begin("c")
    clock.advance(1.0)
    c = meter.end("c")
    assert (c.joules, c.shared_with, c.window_joules) == (pytest.approx(10.0), 1, None)


class _SlowSession(BatchContextSession):
    """Every pass takes 20 ms (wall clock), so concurrent requests overlap for sure."""

    def run(self, output_names, feeds):
        import time

        time.sleep(0.02)
        return super().run(output_names, feeds)


def test_overlapping_requests_report_their_share_of_the_energy():
    import time

    meter = EnergyMeter(TraceSource(time.monotonic, watts_at=lambda t: 4.0, name="trace"), clock=time.monotonic)
    c = TestClient(create_app(_loaded(_SlowSession(), 2), meter=meter))
    got = {}

    def ask(i):
        got[i] = c.post("/v1/completions", json={"prompt": "ab"}).json()["usage"]["energy"]

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    for e in got.values():  # each carries its share, labelled, and the whole window beside it
        assert e["shared_with"] == 2 and e["measured"] is True and e["source"] == "trace"
        assert 0 < e["joules"] < e["window_joules"] == pytest.approx(4.0 * e["seconds"], rel=1e-3)
    alone = c.post("/v1/completions", json={"prompt": "ab"}).json()["usage"]["energy"]
    assert alone["shared_with"] == 1 and alone["window_joules"] is None
    assert alone["joules"] == pytest.approx(4.0 * alone["seconds"], rel=1e-3)


def test_runners_that_cannot_batch_keep_one_slot_and_say_why():
    from edgekit.device.batching import refusal

    from fakes import ScriptedModel

    assert "no batch axis" in refusal(ScriptedModel([2]))  # e.g. the TFLite runners: no forward_batch
    assert "takes the whole model" in refusal(_lm(), speculation=object())
    assert refusal(_lm()) is None
    loaded = _loaded(BatchContextSession(), 1)
    assert loaded.slots == 1 and not isinstance(loaded.model, BatchingModel)  # --parallel 1: as before
