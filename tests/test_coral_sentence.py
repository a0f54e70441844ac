"""Fast tier: sentence-form Edge TPU encoder segments (rows tokens per invoke): the per-sentence latency
model against a worked example, and the host runner packing a batch's tokens into calls (fake numpy
segments, no TFLite).

Worked example (numbers to check by hand): a 1-layer encoder (hidden 8) with 2 sentence-form segments
of rows = 4 tokens per call: A 1 MiB parameters, 4,000,000 MACs per call, 4 x (100 + 300) = 1,600
activation bytes per call; B 2 MiB, 8,000,000 MACs, 4 x (200 + 100) = 1,200 bytes. An 8 MiB cache (both
cached), a link of 3e8 bytes/s with 0.3 ms per invoke, a TPU of 2e12 MAC/s and 2 W, 1e-5 s host work per
token per layer on the reference machine; a board at half that speed, 1e10 bytes/s streaming copy,
1e10 int8 MAC/s, 4 cores, 2 W idle, 6 W full load. A 10-token sentence:
  calls:    ceil(10 / 4) = 3 per segment, 6 invokes: 6 x 0.3 ms = 1.8 ms
  link:     3 x (1,600 + 1,200) bytes / 3e8 = 0.028 ms; TPU compute 3 x 12e6 / 2e12 = 0.018 ms
  host:     10 tokens x 1 layer x 1e-5 / 0.5 = 0.2 ms             -> TPU 2.046 ms = 488.8 embeddings/s
  CPU:      MACs per token 12e6 / 4 + attention 2 x 1 x 8 x 10 = 3,000,160; x 10 tokens / (0.64 x 1e10)
            = 4.68775 ms (memory: 3 MiB / (1e10 x 0.88) = 0.357 ms, less) + fixed 0.2 ms / 0.5
            = 5.08775 ms = 196.55 embeddings/s
  energy:   TPU (2 + (6 - 2) / 4 + 2) W = 5 W x 2.046 ms = 0.01023 J; CPU 6 W x 5.08775 ms = 0.0305265 J
  verdict:  5.08775 / 2.046 = 2.487 -> "Edge TPU predicted 2.5x the testboard CPU for 10-token sentences: use coral"
The same segments one token per call (rows 1, MACs per call / 4) would pay 20 invokes = 6 ms of overhead.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.core.accelerators import Accelerator, Link
from edgekit.core.boards import Board
from edgekit.device import coral_sentence as S
from edgekit.device.segmented_model import SegmentedEncoder

MIB = 2**20
LINK = Link("testlink", "test", 3e8, 3e-4, "worked example")
TPU = Accelerator("edgetpu", 8 * MIB, 2e12, 2.0, "worked example", "greedy", 5e-5, "worked example",
                  {"testlink": LINK}, 1e-5, "worked example")
BOARD = Board("testboard", "test", 2.0, 6.0, "worked example", memory_bandwidth_bytes_per_second=1e10, cpu_cores=4,
              host_speed_vs_reference=0.5, int8_macs_per_second=1e10)
SIGNATURE = {"layers": 1, "hidden_size": 8, "rows": 4, "segment_form": "sentence",
             "segments": [{"file": "a.tflite", "in_features": 100, "out_features": [300]},
                          {"file": "b.tflite", "in_features": 200, "out_features": [100]}]}
RECORD = {"prediction": [
    {"file": "b.tflite", "subgraph": "main", "totals": {"parameter_bytes_on_tpu": 2 * MIB, "macs_on_tpu": 8_000_000}},
    {"file": "a.tflite", "subgraph": "main", "totals": {"parameter_bytes_on_tpu": 1 * MIB, "macs_on_tpu": 4_000_000}}]}


def test_segments_take_io_bytes_from_the_signature_in_its_order():
    segs = S.sentence_segments(RECORD, SIGNATURE)
    assert [s["file"] for s in segs] == ["a.tflite", "b.tflite"]
    assert [s["io_bytes"] for s in segs] == [1600, 1200]
    assert [s["macs"] for s in segs] == [4_000_000, 8_000_000]


def test_worked_example_per_sentence():
    rec = S.predict(S.sentence_segments(RECORD, SIGNATURE), SIGNATURE, BOARD, LINK, TPU, tokens=10)
    bd = rec["tpu"]["breakdown"]
    assert bd["calls_per_segment"] == 3 and bd["invokes"] == 6 and bd["cached_segments"] == 2
    assert bd["invoke_seconds"] == pytest.approx(1.8e-3)
    assert bd["activation_bytes"] == 8400 and bd["streamed_bytes"] == 0
    assert bd["transfer_seconds"] == pytest.approx(2.8e-5)
    assert bd["compute_seconds"] == pytest.approx(1.8e-5)
    assert bd["host_seconds"] == pytest.approx(2e-4)
    assert rec["tpu"]["seconds_per_embedding"] == pytest.approx(2.046e-3)
    assert rec["tpu"]["embeddings_per_second"] == pytest.approx(488.76, rel=1e-4)
    assert rec["tpu"]["tokens_per_second"] == pytest.approx(4887.6, rel=1e-4)
    cpu = rec["cpu"]["breakdown"]
    assert cpu["macs"] == 30_001_600
    assert cpu["compute_seconds"] == pytest.approx(4.68775e-3, rel=1e-6)
    assert cpu["memory_seconds"] == pytest.approx(3.574691e-4, rel=1e-6)
    assert rec["cpu"]["seconds_per_embedding"] == pytest.approx(5.08775e-3, rel=1e-6)
    assert rec["tpu"]["joules_per_embedding"] == pytest.approx(0.01023, rel=1e-6)
    assert rec["cpu"]["joules_per_embedding"] == pytest.approx(0.0305265, rel=1e-6)
    assert rec["tpu_vs_cpu"] == pytest.approx(5.08775 / 2.046, rel=1e-6)
    assert rec["verdict"] == "Edge TPU predicted 2.5x the testboard CPU for 10-token sentences: use coral"
    assert rec["predicted"] and not rec["tpu"]["measured"] and not rec["cpu"]["measured"]
    row = S.compact(rec)
    assert row["invokes_per_sentence"] == 6 and row["tpu_embeddings_per_second"] == pytest.approx(488.759, abs=1e-3)


def test_one_token_per_call_pays_the_invoke_overhead_per_token():
    one = dict(SIGNATURE, rows=1)
    per_token = [dict(s, macs=s["macs"] // 4, io_bytes=s["io_bytes"] // 4) for s in S.sentence_segments(RECORD, SIGNATURE)]
    bd = S.predict(per_token, one, BOARD, LINK, TPU, tokens=10)["tpu"]["breakdown"]
    assert bd["invokes"] == 20 and bd["invoke_seconds"] == pytest.approx(6e-3)
    assert bd["compute_seconds"] == pytest.approx(1.5e-5)  # 10 tokens, not 12 padded rows
    assert bd["transfer_seconds"] == pytest.approx(10 * 700 / 3e8)


def test_a_segment_that_does_not_fit_streams_on_every_call():
    big = [dict(s, parameter_bytes=9 * MIB) if s["file"] == "b.tflite" else s for s in S.sentence_segments(RECORD, SIGNATURE)]
    bd = S.predict(big, SIGNATURE, BOARD, LINK, TPU, tokens=10)["tpu"]["breakdown"]
    assert bd["cached_segments"] == 1 and bd["streamed_bytes"] == 9 * MIB
    assert bd["transfer_seconds"] == pytest.approx(3 * (2800 + 9 * MIB) / 3e8)


def test_a_board_without_int8_figures_is_a_clear_error():
    bare = Board("bare", "test", 2.0, 6.0, "x", memory_bandwidth_bytes_per_second=1e10, host_speed_vs_reference=0.5)
    with pytest.raises(Exception, match="int8_macs_per_second"):
        S.predict(S.sentence_segments(RECORD, SIGNATURE), SIGNATURE, bare, LINK, TPU)


# -- the host runner: fake numpy segments (bias-free linear maps), token form vs sentence form ----------

H, INTER, HEADS = 8, 16, 2
ROLES = [("qkv", H, [H, H, H]), ("o", H, [H]), ("up", H, [INTER]), ("down", INTER, [H])]


class _Linear:
    """A segment: [1, w] (token form) or [1, rows, 1, w] (sentence form) -> outputs of the same layout."""

    def __init__(self, weights):
        self.weights, self.calls = weights, []

    def __call__(self, arrays):
        x = arrays[0]
        self.calls.append(x.shape)
        flat = x.reshape(-1, x.shape[-1])
        return [(flat @ w.T).reshape(*x.shape[:-1], w.shape[0]) for w in self.weights]


def _encoder(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    segs, runners, tables = [], [], {}
    for i in range(2):
        for role, width, outs in ROLES:
            name = f"l{i:02d}_{role}.tflite"
            segs.append({"file": name, "role": role, "outputs": len(outs), "in_features": width, "out_features": outs})
            runners.append(_Linear([rng.normal(size=(o, width)).astype(np.float32) / np.sqrt(width) for o in outs]))
            for j, o in enumerate(outs):
                tables[f"bias:{name}:{j}"] = rng.normal(size=o).astype(np.float32) * 0.1
        for ln in ("attn", "out"):
            tables[f"{ln}_ln_w:{i}"], tables[f"{ln}_ln_b:{i}"] = np.ones(H, np.float32), np.zeros(H, np.float32)
    tables.update(embed=rng.normal(size=(50, H)).astype(np.float32), position=rng.normal(size=(16, H)).astype(np.float32),
                  token_type=rng.normal(size=(2, H)).astype(np.float32), embed_ln_w=np.ones(H, np.float32),
                  embed_ln_b=np.zeros(H, np.float32))
    sig = {"segments": segs, "layers": 2, "heads": HEADS, "head_dim": H // HEADS, "layer_norm_eps": 1e-12,
           "max_sequence_length": 16, "hidden_size": H}
    if rows:
        sig.update(segment_form="sentence", rows=rows)
    return SegmentedEncoder(runners, sig, tables), runners


def test_sentence_form_packs_the_batch_into_calls_and_equals_the_token_form():
    batch = [[1, 5, 7, 9, 11, 2], [1, 3, 2]]
    tokens, token_runners = _encoder(0)
    sentence, sentence_runners = _encoder(4)
    want = tokens.embed(batch)
    got = sentence.embed(batch)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # one-at-a-time sentences give the same vectors as the packed batch
    np.testing.assert_allclose(sentence.embed(batch[1:]), want[1:], atol=1e-5)
    assert token_runners[0].calls[:9] == [(1, H)] * 9  # 9 tokens: 9 calls per segment
    assert sentence_runners[0].calls[:3] == [(1, 4, 1, H)] * 3  # 9 tokens in ceil(9 / 4) = 3 calls of 4 rows
    assert len(sentence_runners[2].calls) == 3 + 1 and sentence_runners[3].calls[0] == (1, 4, 1, INTER)


def test_a_newer_segment_form_is_refused_with_a_clear_message():
    sig = {"segments": [], "layers": 0, "heads": 1, "head_dim": 1, "layer_norm_eps": 1e-12,
           "max_sequence_length": 4, "segment_form": "tiles"}
    with pytest.raises(ValueError, match="segment form 'tiles' is newer than this edgekit"):
        SegmentedEncoder([], sig, {})
