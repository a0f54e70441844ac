"""Fast tier: the Coral-sized decoder (models/smollm2-coral.toml, issue 18): how many layers fit the Edge
TPU's on-chip cache, the host LM head (an int8 matmul on the host CPU) in the latency model, the host head
itself, and the recipe.

Worked examples (numbers to check by hand):
  SmolLM2-135M layer (hidden 576, 9 heads, 3 kv heads, head_dim 64, intermediate 1536), int8 bytes:
    qkv 576 x 15 x 64 = 552,960; o 576 x 576 = 331,776; gate+up 576 x 3,072 = 1,769,472; down 1,536 x 576 =
    884,736; sum 3,538,944 (3.375 MiB). 8 MiB = 8,388,608 / 3,538,944 = 2.37 -> 2 layers (6.75 MiB);
    LM head 576 x 49,152 = 28,311,552 bytes (27 MiB) alone exceeds the cache -> no layer fits with it.
  Host LM head in the latency model (same link / TPU / board as tests/test_coral_latency.py: 3e8 B/s,
  0.3 ms per invoke, 2e12 MAC/s, 2 W, 5e-5 s host per call, board at 0.5x speed, 1e10 B/s copy,
  4 cores, 2 W idle, 6 W full load; CPU efficiency 0.88): two 2 MiB segments (both cached in 8 MiB) and
  an 8 MiB int8 head on the host:
    TPU: 2 x 0.3 ms + 0 streamed + 4 MiB / 2e12 (0.002097 ms) + 2 x 5e-5 / 0.5 (0.2 ms)
         + host matmul 8,388,608 / (1e10 x 0.88) (0.953251 ms) = 1.755348 ms -> 569.7 tokens/s
    CPU: 12 MiB = 12,582,912 / 8.8e9 (1.429876 ms) + 0.2 ms / 0.5 = 1.829876 ms -> 546.5 tokens/s
    energy TPU side: 0.802097 ms x 5 W + 0.953251 ms x (6 + 2) W = 4.010485 + 7.626008 = 11.636493 mJ
    ratio 1.829876 / 1.755348 = 1.0425 -> "use coral"
  Had the 8 MiB head been a third TPU segment instead, it would stream (the cache holds 4 MiB after the
  first two): + 0.3 ms invoke + 27.962 ms transfer + 0.1 ms host.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.core.accelerators import Accelerator, Link, load_accelerator
from edgekit.core.boards import Board
from edgekit.core.coral_fit import config_layers_that_fit, head_bytes, layer_segment_bytes, layers_that_fit
from edgekit.core.errors import BuildError, ConfigError
from edgekit.device import coral_latency as L
from edgekit.device.segmented_model import HostHead, host_macs, host_weight_bytes

MIB = 2**20
LINK = Link("testlink", "test", 3e8, 3e-4, "worked example")
TPU = Accelerator("edgetpu", 8 * MIB, 2e12, 2.0, "worked example", "greedy", 5e-5, "worked example", {"testlink": LINK})
BOARD = Board("testboard", "test", 2.0, 6.0, "worked example", memory_bandwidth_bytes_per_second=1e10, cpu_cores=4,
              host_speed_vs_reference=0.5)
SMOLLM2 = SimpleNamespace(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                          intermediate_size=1536, vocab_size=49152, num_hidden_layers=30)


def test_smollm2_layer_bytes_and_two_layers_fit_the_8_mib_cache():
    assert layer_segment_bytes(576, 9, 3, 64, 1536) == [552_960, 331_776, 1_769_472, 884_736]
    assert head_bytes(576, 49152) == 28_311_552
    assert layers_that_fit(3_538_944, 8 * MIB) == 2
    fit = config_layers_that_fit(SMOLLM2, load_accelerator("edgetpu").on_chip_parameter_bytes, head_on_host=True)
    assert fit == {"layers": 2, "per_layer_bytes": 3_538_944, "lm_head_bytes": 28_311_552, "lm_head": "host",
                   "capacity_bytes": 8_388_608, "on_chip_bytes": 7_077_888}
    # the greedy cache fill agrees: 2 layers' 8 segments all stay on chip, a third layer's would not all fit
    per = layer_segment_bytes(576, 9, 3, 64, 1536)
    assert all(L.cache_fill(per * 2, 8 * MIB)) and not all(L.cache_fill(per * 3, 8 * MIB))


def test_with_the_lm_head_on_the_tpu_nothing_fits_and_the_error_says_to_move_it():
    with pytest.raises(BuildError, match=r"after the LM head's 27.00 MiB .*lm_head = \"host\""):
        config_layers_that_fit(SMOLLM2, 8 * MIB, head_on_host=False)
    # a small model: the head fits beside its layers; the count is capped by the layers the teacher has
    # (stories260k: 8,192 + 4,096 + 22,016 + 11,008 = 45,312 bytes a layer, head 64 x 512 = 32,768)
    tiny = SimpleNamespace(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                           intermediate_size=172, vocab_size=512, num_hidden_layers=5)
    assert config_layers_that_fit(tiny, 8 * MIB, head_on_host=False)["layers"] == 5
    assert layers_that_fit(45_312, 8 * MIB, head_on_tpu_bytes=32_768) == 184
    assert layers_that_fit(45_312, 100_000, head_on_tpu_bytes=32_768) == 1  # 67,232 // 45,312


def test_host_lm_head_worked_example():
    assert L.CPU_EFFICIENCY == 0.88  # the figure the worked example uses
    segs = [{"file": f"s{i}", "parameter_bytes": 2 * MIB, "macs": 2 * MIB} for i in range(2)]
    rec = L.predict(segs, BOARD, LINK, TPU, host_weight_bytes=8 * MIB)
    bd = rec["tpu"]["breakdown"]
    assert bd["cached_segments"] == 2 and bd["streamed_bytes"] == 0 and bd["host_weight_bytes"] == 8 * MIB
    assert bd["host_matmul_seconds"] == pytest.approx(0.953251e-3, rel=1e-6)
    assert rec["tpu"]["seconds_per_token"] == pytest.approx(1.755348e-3, rel=1e-6)
    assert rec["cpu"]["breakdown"]["weight_bytes"] == 12 * MIB
    assert rec["cpu"]["seconds_per_token"] == pytest.approx(1.829876e-3, rel=1e-6)
    assert rec["tpu"]["joules_per_token"] == pytest.approx(11.636493e-3, rel=1e-6)
    assert rec["tpu_vs_cpu"] == pytest.approx(1.0425, rel=1e-4)
    assert rec["verdict"].endswith("use coral") and "full load during the host matmul" in rec["tpu"]["source"]
    # the same head as a third TPU segment streams over the link every token
    as_segment = L.predict(segs + [{"file": "head", "parameter_bytes": 8 * MIB, "macs": 8 * MIB}], BOARD, LINK, TPU)
    assert as_segment["tpu"]["breakdown"]["streamed_bytes"] == 8 * MIB
    assert as_segment["tpu"]["seconds_per_token"] == pytest.approx(
        0.9e-3 + 8 * MIB / 3e8 + 12 * MIB / 2e12 + 0.3e-3, rel=1e-6)
    assert as_segment["cpu"]["seconds_per_token"] == pytest.approx(rec["cpu"]["seconds_per_token"])


def test_no_host_weights_leaves_the_model_unchanged():
    segs = [{"file": "a", "parameter_bytes": 4 * MIB, "macs": 4 * MIB}]
    a, b = L.predict(segs, BOARD, LINK, TPU), L.predict(segs, BOARD, LINK, TPU, host_weight_bytes=0)
    assert a["tpu"]["seconds_per_token"] == b["tpu"]["seconds_per_token"] and a["tpu"]["watts"] == 5.0
    assert b["tpu"]["breakdown"]["host_matmul_seconds"] == 0.0


def test_verdict_record_reads_the_host_bytes_a_coral_build_records():
    pred = [{"file": f"l00_{r}.tflite", "subgraph": "serving_default",
             "totals": {"parameter_bytes_on_tpu": 2 * MIB, "macs_on_tpu": 2 * MIB}} for r in ("qkv", "o")]
    with_head = L.verdict_record({"prediction": pred, "host_weight_bytes": 27 * MIB})["default"]
    without = L.verdict_record({"prediction": pred})["default"]
    assert with_head["host_weight_bytes"] == 27 * MIB and with_head["cached_segments"] == 2
    assert with_head["tpu_tokens_per_second"] < without["tpu_tokens_per_second"]
    assert with_head["cpu_tokens_per_second"] < without["cpu_tokens_per_second"]


def test_host_head_int8_rows_times_per_row_scales_in_blocks():
    rows = np.array([[1, 2], [3, -4], [127, 0]], np.int8)
    head = HostHead(rows, np.array([0.5, 0.25, 0.01], np.float32), block_rows=2)
    # [0.5 x (2 + 2), 0.25 x (6 - 4), 0.01 x 254]
    assert np.allclose(head(np.array([2.0, 1.0], np.float32)), [2.0, 0.5, 2.54])
    fp = HostHead(np.array([[1.0, 2.0]], np.float32), None)
    assert np.allclose(fp(np.array([3.0, 4.0], np.float32)), [11.0])


def test_host_weight_bytes_and_macs_of_a_host_head_signature():
    sig = {"layers": 2, "heads": 9, "head_dim": 64, "cache_length": 128, "hidden_size": 576}
    attention = 2 * 2 * 9 * 64 * 64
    assert host_weight_bytes(sig) == 0 and host_macs(sig) == attention
    host = dict(sig, lm_head="host", vocab_size=49152)
    assert host_weight_bytes(host) == 28_311_552 and host_macs(host) == attention + 28_311_552


def test_the_coral_sized_recipe_loads_with_its_depth_from_the_cache_and_its_head_on_the_host():
    from edgekit.core.recipes import load_recipe
    from edgekit.workshop.distill_settings import settings_from_recipe

    r = load_recipe("smollm2-coral")
    assert r.student["fit_on_chip"] == "edgetpu" and not r.student["auto_layers"] and not r.student["keep_layers"]
    assert r.data["edgetpu"]["lm_head"] == "host" and not r.data["chat"]["enabled"]
    s = settings_from_recipe(r)
    assert s.fit_on_chip == "edgetpu" and s.lm_head_on_host and s.auto_layers == 0
    # a CLI depth overrides the recipe's fit; other recipes keep their resume keys (fields left out when unset)
    assert settings_from_recipe(r, auto_layers=3).fit_on_chip == ""
    other = load_recipe("smollm2-135m")
    assert other.data["edgetpu"]["lm_head"] == "tpu" and other.student["fit_on_chip"] == ""
    import hashlib
    import json
    from dataclasses import asdict

    so = settings_from_recipe(other)
    old = {k: v for k, v in asdict(so).items() if k not in ("layer_reason", "fit_on_chip", "lm_head_on_host",
                                                               "on_policy", "on_policy_tokens", "fold_dropped")}
    assert so.key() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert s.key() != settings_from_recipe(r, auto_layers=2).key()  # a fitted depth is part of the key


@pytest.mark.parametrize("student, message", [
    ('mode = "layer-drop"\nfit_on_chip = "edgetpu"\nauto_layers = 3', "give no keep_layers"),
    ('mode = "layer-drop"\nfit_on_chip = "nvdla"', "fit_on_chip"),
    ('mode = "layer-drop"', "fit_on_chip = \"edgetpu\""),
])
def test_bad_fit_settings_are_clear_errors(tmp_path, student, message):
    from edgekit.core.recipes import load_recipe

    p = tmp_path / "bad.toml"
    p.write_text(f'name = "bad"\ndescription = "x"\ntask = "text-generation"\n[teacher]\nsource = "shared:x"\n'
                 f'[student]\n{student}\n')
    with pytest.raises(ConfigError, match=message):
        load_recipe(str(p))


def test_bad_lm_head_place_is_a_clear_error(tmp_path):
    from edgekit.core.recipes import load_recipe

    p = tmp_path / "bad.toml"
    p.write_text('name = "bad"\ndescription = "x"\ntask = "text-generation"\n[teacher]\nsource = "shared:x"\n'
                 '[edgetpu]\nlm_head = "gpu"\n')
    with pytest.raises(ConfigError, match="lm_head"):
        load_recipe(str(p))
