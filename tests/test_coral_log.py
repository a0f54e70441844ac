"""Fast tier: parsing edgetpu_compiler -s output (a log written from the documented format) and
comparing it with a prediction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.workshop.coral_compile import compare, parse_compiler_log

LOG = (Path(__file__).parent / "data" / "edgetpu_compiler_s.log").read_text()


def test_header_fields_and_operation_table():
    r = parse_compiler_log(LOG)
    assert r["compiled"] and r["version"] == "16.0.384591198" and r["compile_ms"] == 412
    assert (r["ops_on_tpu"], r["ops_on_cpu"], r["total_ops"], r["tpu_subgraphs"]) == (7, 5, 12, 1)
    assert r["on_chip_used_bytes"] == int(180.5 * 1024) and r["off_chip_used_bytes"] == 0
    assert r["output_model"] == "model_edgetpu.tflite"
    assert r["operations"][0] == {"op": "FULLY_CONNECTED", "count": 4, "status": "Mapped to Edge TPU"}
    assert r["operations"][5] == {"op": "SOFTMAX", "count": 1, "status": "Operation is otherwise supported, but "
                                  "not mapped due to some unspecified limitation"}
    assert [o["op"] for o in r["operations"]].count("FULLY_CONNECTED") == 2
    assert sum(o["count"] for o in r["operations"]) == 12


def test_all_mapped_log_derives_counts_from_the_table():
    text = "\n".join(line for line in LOG.splitlines() if not line.startswith("Number of operations that"))
    text = text.replace("More than one subgraph is not supported", "Mapped to Edge TPU")
    r = parse_compiler_log(text)
    assert r["ops_on_tpu"] == 4 + 1 + 2 + 1 + 2 and r["ops_on_cpu"] == 2  # BATCH_MATMUL + SOFTMAX


def test_failed_compile_is_not_reported_as_compiled():
    r = parse_compiler_log("Edge TPU Compiler version 16.0.384591198\nERROR: Attempting to use a delegate that "
                           "only supports static-sized tensors with a graph that has dynamic-sized tensors.\n"
                           "Compilation failed!\n")
    assert r["compiled"] is False and r["operations"] == [] and r["version"] == "16.0.384591198"


def test_disagreements_are_listed_per_op_and_status():
    r = parse_compiler_log(LOG)
    predicted = Counter({("FULLY_CONNECTED", "Mapped to Edge TPU"): 5, ("RESHAPE", "Mapped to Edge TPU"): 2,
                         ("RELU", "Mapped to Edge TPU"): 1, ("BATCH_MATMUL", "Operation not supported"): 1,
                         ("SOFTMAX", "Operation is otherwise supported, but not mapped due to some unspecified "
                                     "limitation"): 1,
                         ("ADD", "More than one subgraph is not supported"): 2})
    diffs = compare(predicted, r["operations"])
    assert diffs == [
        {"op": "FULLY_CONNECTED", "status": "Mapped to Edge TPU", "predicted": 5, "compiler": 4},
        {"op": "FULLY_CONNECTED", "status": "More than one subgraph is not supported", "predicted": 0, "compiler": 1},
    ]
