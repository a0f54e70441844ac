"""The int4-dynamic TFLite recipe (block-32 4-bit weights, dynamic int8 activations): which weights stay
int8, the recipe AI Edge Quantizer receives, and the arm-cpu target offering it (fast tier, no torch)."""

from __future__ import annotations

import re

import pytest

from edgekit.core.errors import ConfigError
from edgekit.core.targets import load_target
from edgekit.workshop.tflite_int4 import BLOCK_SIZE, FcWeight, int4_recipe, int8_reason

HEAD = (49152, 576)
Q = FcWeight("model/layers.0/q_proj;", (576, 576))
Q_LONG = FcWeight("model/layers.0/q_proj;;model/layers.0/k_proj;", (192, 576))  # same prefix as Q
DOWN_172 = FcWeight("model/layers.0/down_proj;", (64, 172))
LM_HEAD = FcWeight("decode_output_0_output;", HEAD)


def test_head_and_unblockable_weights_stay_int8():
    assert int8_reason(LM_HEAD, HEAD) == "lm_head"
    assert int8_reason(DOWN_172, HEAD) == "not_blockable"  # 172 input values: no whole blocks of 32
    assert int8_reason(Q, HEAD) is None and int8_reason(Q_LONG, HEAD) is None
    assert int8_reason(FcWeight("down;", (576, 1536)), HEAD) is None  # 1536 = 48 blocks
    assert int8_reason(LM_HEAD, None) is None  # no host table known: the head is an ordinary weight


def test_recipe_counts_and_exact_scope_overrides():
    recipe, record = int4_recipe([Q, Q_LONG, DOWN_172, LM_HEAD, LM_HEAD], HEAD)
    assert record == {"block_size": BLOCK_SIZE, "int4_fully_connected": 2,
                      "int8_fully_connected": {"not_blockable": 1, "lm_head": 2}}
    base, fc = recipe[0], recipe[1]
    assert (base["regex"], base["operation"]) == (".*", "*")
    assert base["op_config"]["weight_tensor_config"]["num_bits"] == 8
    assert (fc["operation"], fc["op_config"]["weight_tensor_config"]["granularity"]) == ("FULLY_CONNECTED",
                                                                                        "BLOCKWISE_32")
    assert fc["op_config"]["weight_tensor_config"]["num_bits"] == 4
    assert all(e["op_config"]["compute_precision"] == "INTEGER" and not e["op_config"]["explicit_dequantize"]
               for e in recipe)  # dynamic: activations quantized at run time, no DEQUANTIZE ops
    overrides = recipe[2:]
    assert len(overrides) == 2  # one per distinct scope
    for e in overrides:
        assert e["op_config"]["weight_tensor_config"] == {"num_bits": 8, "symmetric": True,
                                                          "granularity": "CHANNELWISE", "dtype": "INT"}
    matched = {w.scope for w in (Q, Q_LONG, DOWN_172, LM_HEAD) if any(re.search(e["regex"], w.scope)
                                                                       for e in overrides)}
    assert matched == {DOWN_172.scope, LM_HEAD.scope}


def test_ai_edge_quantizer_resolves_the_recipe_per_scope():
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping, recipe_manager

    recipe, _ = int4_recipe([Q, DOWN_172, LM_HEAD], HEAD)
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    fc = qtyping.TFLOperationName.FULLY_CONNECTED

    def weights(op, scope):
        return manager.get_quantization_configs(op, scope)[1].weight_tensor_config

    assert (weights(fc, Q.scope).num_bits, weights(fc, Q.scope).granularity) == (4, "BLOCKWISE_32")
    assert (weights(fc, Q_LONG.scope).num_bits, weights(fc, Q_LONG.scope).granularity) == (4, "BLOCKWISE_32")
    for w in (DOWN_172, LM_HEAD):
        assert (weights(fc, w.scope).num_bits, weights(fc, w.scope).granularity) == (8, "CHANNELWISE")
    other = weights(qtyping.TFLOperationName.EMBEDDING_LOOKUP, "anything;")
    assert (other.num_bits, other.granularity) == (8, "CHANNELWISE")  # int8-dynamic elsewhere


def test_arm_cpu_offers_int4_dynamic_but_keeps_int8_default():
    arm = load_target("arm-cpu")
    assert arm.precision() == "int8-dynamic" and arm.precision("int4-dynamic") == "int4-dynamic"
    with pytest.raises(ConfigError, match="does not allow precision 'int4-dynamic'"):
        load_target("onnx-cpu").precision("int4-dynamic")
