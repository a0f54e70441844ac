"""edgekit.device.native_log: lines written to file descriptor 2 (as native code writes them, with
os.write) are passed on to the real stderr unless a pattern drops them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgekit.device.native_log import LineFilter, filtered_stderr

ROOT = Path(__file__).resolve().parent.parent
DROP = (r"INFO: \[\w+\.cc:\d+\] ", r"WARNING: harmless\.$")


def test_dropped_lines_vanish_and_the_rest_reach_stderr_in_order(capfd):
    with filtered_stderr(DROP) as keep:
        os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment with options\n")
        os.write(2, b"ERROR: [model.cc:12] the model is broken\nWARNING: harmless.\n")
        os.write(2, b"WARNING: harmless. Or is it?\nINFO:     Started server process [1]\n")
        os.write(2, b"a partial last line")
    err = capfd.readouterr().err
    assert err == ("ERROR: [model.cc:12] the model is broken\nWARNING: harmless. Or is it?\n"
                   "INFO:     Started server process [1]\na partial last line")
    assert keep.dropped == 2


SCRIPT = """
import os, sys, threading
from edgekit.device.native_log import filtered_stderr
print("buffered before the block", file=sys.stderr, end=" ")
with filtered_stderr([r"INFO: \\[\\w+\\.cc:\\d+\\] "]):
    print("INFO: [cpu_registry.cc:75] XNNPACK CPU accelerator registered.", file=sys.stderr)
    print("from python", file=sys.stderr)
    t = threading.Thread(target=os.write, args=(2, b"INFO: [gpu_registry.cc:130] Attempting ...\\nfrom a thread\\n"))
    t.start()
    t.join()
    print("unflushed", file=sys.stderr, end=" ")
print("after", file=sys.stderr)
"""


def test_python_writes_and_other_threads_are_filtered_the_same_way():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stderr == "buffered before the block from python\nfrom a thread\nunflushed after\n"


def test_stderr_is_restored_after_the_block_even_when_it_raises(capfd):
    try:
        with filtered_stderr(DROP):
            os.write(2, b"INFO: [a.cc:1] chatter\nERROR: before the exception\n")
            raise RuntimeError("load failed")
    except RuntimeError:
        pass
    os.write(2, b"INFO: [a.cc:1] after the block, not filtered\n")
    assert capfd.readouterr().err == "ERROR: before the exception\nINFO: [a.cc:1] after the block, not filtered\n"


def test_continuation_lines_share_the_fate_of_the_line_before(capfd):
    with filtered_stderr(DROP, continued="\u2514 "):
        os.write(2, "INFO: [p.cc:3] Failed to load plugin\n\u2514 no such file\n".encode())
        os.write(2, "ERROR: [p.cc:4] real trouble\n\u2514 its cause\nafter\n".encode())
    assert capfd.readouterr().err == "ERROR: [p.cc:4] real trouble\n\u2514 its cause\nafter\n"


def test_a_second_filter_while_one_is_active_filters_nothing_itself(capfd):
    with filtered_stderr(DROP) as outer:
        with filtered_stderr(()) as inner:
            os.write(2, b"INFO: [inner.cc:1] dropped by the outer filter\n")
        os.write(2, b"kept\n")
    assert inner is None and outer.dropped == 1
    assert capfd.readouterr().err == "kept\n"
    with filtered_stderr(()) as again:  # the lock was released
        pass
    assert again is not None


def test_line_filter_decodes_bad_bytes_and_a_leading_continuation_passes():
    keep = LineFilter(DROP, continued="\u2514 ")
    assert keep.passes("\u2514 nothing before me\n".encode())
    assert not keep.passes(b"INFO: [x.cc:9] \xff\xfe bytes\r\n")
    assert keep.passes(b"\xff\xfe\n") and keep.dropped == 1
