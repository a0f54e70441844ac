"""TfliteCausalLM on LiteRT's CompiledModel API, with XNNPACK's packed weights cached in a file.

The Interpreter packs the weights for XNNPACK once per signature (prefill and decode) in anonymous
memory while the model file stays mapped: the runner's resident memory is 2-3x the model. The
CompiledModel API (ai-edge-litert >= 2.x: `CompiledModel`, `CpuOptions.xnnpack_weight_cache_path`)
packs them once into a cache file and maps that file, so later loads reuse the packed weights
(measured in docs/serving.md, "Resident memory").

The cache file: `<EDGEKIT_HOME>/xnnpack/<model sha256>-litert<version>-<machine>.xnn`. XNNPACK writes it
itself during the load, so the load is pointed at a temporary name in the same folder and the file
is renamed into place only after the load succeeded (a crash never leaves a half-written file under
the final name). A folder that cannot be written loads without a cache (one warning).

KV cache: the graph's outputs k_i, v_i are the whole updated cache (the inputs with the new rows
written), so two sets of cache buffers, shared by both signatures, take turns: a call reads one set
and writes the other, and the next call reads what this one wrote. No cache bytes cross to Python
per call (the Interpreter path copies the written rows back); only the small inputs are written and
the logits read. A request's cache leaves the buffers (read out in full) only when another request's
takes its place. ai-edge-litert 2.3's host-memory buffers are one-dimensional and are refused for
shaped tensors ("Cannot auto-resize"), hence buffers the model creates, written and read by copy.

Used for float-I/O graphs on the CPU path (delegate none/xnnpack); int8-I/O graphs and the GPU /
Edge TPU delegates keep the Interpreter. EDGEKIT_LITERT_COMPILED=0 turns it off. Public ai-edge-litert
API only. May import: stdlib, numpy, edgekit.core, ai_edge_litert (lazily).
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import numpy as np

from edgekit.core.paths import edgekit_home
from edgekit.device.native_log import filtered_stderr
from edgekit.device.tflite_resident import order_names, split_inputs

log = logging.getLogger("edgekit.device")
ENV_SWITCH = "EDGEKIT_LITERT_COMPILED"

# What LiteRT's C++ core writes on stderr at every load that tells the user nothing (quiet_litert drops
# these lines and no others): its INFO lines ("INFO: [environment.cc:36] Creating LiteRT environment
# ...", GPU accelerator attempts, registrations), TFLite's XNNPACK line, and the NPU parts it looks for
# and does not find (this model runs on the CPU: Options(hardware_accelerators=CPU)). Errors and any
# other warning still reach the user. Seen with ai-edge-litert 2.3.0.
LITERT_CHATTER = (
    r"INFO: \[[\w./-]+\.cc:\d+\] ",
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    r"WARNING: \[npu_registry\.cc:\d+\] NPU accelerator could not be loaded and registered: kLiteRtStatusErrorNotFound\.$",
    r"WARNING: \[compiler_plugin\.cc:\d+\] Failed to load plugin at: \S+/vendors/\w+/compiler/"
    r"libLiteRtCompilerPlugin_\w+\.so with error: ",
)
LITERT_CONTINUED = "\u2514 "  # a LiteRT message's later line ("└ Could not load shared library ...")


def quiet_litert():
    """A `with` block during which LiteRT's load-time chatter (LITERT_CHATTER) is kept off stderr."""
    return filtered_stderr(LITERT_CHATTER, LITERT_CONTINUED)


def _api():
    """(CompiledModel, CpuOptions, Options, HardwareAccelerator, version); ImportError when too old."""
    import ai_edge_litert
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    if "xnnpack_weight_cache_path" not in getattr(CpuOptions, "__dataclass_fields__", {}):
        raise ImportError("this ai-edge-litert's CpuOptions has no xnnpack_weight_cache_path")
    return CompiledModel, CpuOptions, Options, HardwareAccelerator, getattr(ai_edge_litert, "__version__", "unknown")


def cache_file(sha256: str, version: str, home: Path | None = None) -> Path | None:
    """Where the packed weights of the model with this sha256 live (None without a sha256). The
    packing does not depend on the thread count; it may on the LiteRT release and on the machine (a
    home shared between an x86 host and a Pi), hence both in the name."""
    if not sha256:
        return None
    return (home or edgekit_home()) / "xnnpack" / f"{sha256[:32]}-litert{version}-{platform.machine()}.xnn"


def _writable_temp(final: Path) -> Path | None:
    """A temporary name beside `final` for XNNPACK to write, or None (with a warning) when the folder
    cannot take it."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        temp.unlink(missing_ok=True)
        probe = temp.with_suffix(".probe")
        probe.write_bytes(b"")
        probe.unlink()
        return temp
    except OSError as e:
        log.warning("XNNPACK weight cache off: cannot write %s (%s)", final.parent, e.strerror or e)
        return None


def load(model_path, threads: int, sha256: str, home: Path | None = None, api=None):
    """(CompiledModel, weight-cache description) or raises (ImportError, RuntimeError ...)."""
    CompiledModel, CpuOptions, Options, Accel, version = api or _api()
    final = cache_file(sha256, version, home)
    path, temp, state = None, None, "off (the manifest has no sha256 for the model file)"
    if final is not None and final.is_file() and final.stat().st_size > 0:
        path, state = final, "reused"
    elif final is not None:
        temp = _writable_temp(final)
        path, state = temp, ("written" if temp is not None else f"off (cannot write {final.parent})")
    cpu = CpuOptions(num_threads=max(0, int(threads)), xnnpack_weight_cache_path=str(path) if path else "")
    try:
        model = CompiledModel.from_file(str(model_path), options=Options(hardware_accelerators=Accel.CPU, cpu_options=cpu))
    except BaseException:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise
    if temp is not None:
        try:
            if temp.is_file() and temp.stat().st_size > 0:
                os.replace(temp, final)
            else:
                temp.unlink(missing_ok=True)
                state = "off (XNNPACK wrote no cache file)"
        except OSError as e:  # disk full, folder gone: the model is loaded all the same
            state = f"off ({e.strerror or e})"
    return model, {"file": str(final) if final else None, "state": state}


def _details(raw: dict) -> dict:
    return {n: {"index": i, "name": n, "shape": np.array(d["shape"]), "dtype": np.dtype(d["dtype"]),
                "quantization_parameters": {"scales": np.array([])}} for i, (n, d) in enumerate(raw.items())}


class CompiledRunner:
    """One signature with the Interpreter SignatureRunner's public surface: details, and a call
    that copies feeds in and outputs out (the load-time self-check compares against this)."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        self.ins = _details(model.get_input_tensor_details(name))
        self.outs = _details(model.get_output_tensor_details(name))

    def get_input_details(self):
        return self.ins

    def get_output_details(self):
        return self.outs

    def __call__(self, **feeds):
        # Fresh buffers per call, none kept: this copying call serves the load-time self-check (and the
        # EDGEKIT_TFLITE_ZERO_COPY=0 path); kept, they would hold two more copies of the cache for good.
        ins = {n: self.model.create_input_buffer_by_name(self.name, n) for n in self.ins}
        outs = {n: self.model.create_output_buffer_by_name(self.name, n) for n in self.outs}
        for n, d in self.ins.items():
            ins[n].write(np.ascontiguousarray(feeds[n], dtype=d["dtype"]))
        self.model.run_by_name(self.name, ins, outs)
        return {n: read(outs[n], d) for n, d in self.outs.items()}


def read(buffer, detail) -> np.ndarray:
    shape = tuple(int(s) for s in detail["shape"])
    return buffer.read(int(np.prod(shape)), detail["dtype"]).reshape(shape)


class CompiledInterpreter:
    """A CompiledModel behind the Interpreter's get_signature_runner()."""

    def __init__(self, model, weight_cache: dict | None = None):
        self.model, self.weight_cache = model, weight_cache or {}
        self.runners: dict = {}

    def get_signature_runner(self, name: str) -> CompiledRunner:
        if name not in self.runners:
            self.runners[name] = CompiledRunner(self.model, name)
        return self.runners[name]

    def float_io(self, signatures=("prefill", "decode")) -> bool:
        """Whether every input and output is float32 (int32 positions aside): no int8-I/O graph."""
        for name in signatures:
            r = self.get_signature_runner(name)
            if any(d["dtype"] not in (np.float32, np.int32) for d in [*r.ins.values(), *r.outs.values()]):
                return False
        return True


class CompiledSig:
    """One signature's small-input and logits buffers; the cache buffers belong to CompiledCaches."""

    def __init__(self, runner: CompiledRunner):
        model, name = runner.model, runner.name
        self.runner, self.name = runner, name
        small, self.cache_names = split_inputs(runner.ins, runner.outs)
        self.small = [(n, model.create_input_buffer_by_name(name, n), runner.ins[n]["dtype"]) for n in small]
        outs = order_names(runner.outs)
        self.logits_name, self.out_cache_names = outs[0], outs[1:]
        self.logits = model.create_output_buffer_by_name(name, self.logits_name)


class CompiledCaches:
    """ResidentCaches' contract (sig/bind/step/export, `owner`) over a CompiledModel: one request's
    cache lives in two sets of buffers that take turns as the inputs and the outputs."""

    def __init__(self, interpreter: CompiledInterpreter, names: dict):
        """`names`: {key: signature name}, one of them "decode" (its CompiledSig, built here to learn
        the cache tensors, is kept under its key: `sig` reuses it)."""
        self.interpreter, self.names = interpreter, names
        self.owner = None  # the StaticCache whose rows are in the buffers
        self.where = None  # kept for TfliteCausalLM's self-check (the buffers serve every signature)
        decode = interpreter.get_signature_runner("decode")
        first = CompiledSig(decode)
        self.sigs: dict = {key: first for key, name in names.items() if name == "decode"}
        self.detail = decode.ins[first.cache_names[0]]
        model = interpreter.model
        self.reading = [model.create_input_buffer_by_name("decode", n) for n in first.cache_names]
        self.writing = [model.create_output_buffer_by_name("decode", n) for n in first.out_cache_names]
        zeros = np.zeros(tuple(int(s) for s in self.detail["shape"]), np.float32)
        for b in self.reading + self.writing:  # fresh buffers may hold NaN, and masked slots meet 0 * slot
            b.write(zeros)

    def sig(self, key) -> CompiledSig:
        if key not in self.sigs:
            self.sigs[key] = CompiledSig(self.interpreter.get_signature_runner(self.names[key]))
        return self.sigs[key]

    def _read_all(self) -> list[np.ndarray]:
        return [read(b, self.detail) for b in self.reading]

    def bind(self, cache, sig=None, start: int = 0) -> None:
        """Make the buffers hold `cache`'s first `start` rows (parking the previous owner's)."""
        if self.owner is cache:
            return
        if self.owner is not None:
            self.owner.arrays, self.owner.resident = self._read_all(), False
        if start > 0:
            for b, src in zip(self.reading, cache.arrays):
                full = np.zeros(tuple(int(s) for s in self.detail["shape"]), np.float32)
                full[:, :, :start] = src[:, :, :start]
                b.write(full)
        self.owner, cache.resident = cache, True

    def step(self, sig: CompiledSig, small: list[np.ndarray], cache, start: int, real: int) -> np.ndarray:
        """Run `sig` on the small inputs and the bound cache; returns its logits (a copy). `real` is
        unused: the output buffers hold the whole updated cache and become the next call's inputs."""
        self.bind(cache, sig, start)
        for (_, buffer, dtype), value in zip(sig.small, small):
            buffer.write(np.ascontiguousarray(value, dtype=dtype))
        ins = {n: b for n, b, _ in sig.small}
        ins.update(zip(sig.cache_names, self.reading))
        outs = {sig.logits_name: sig.logits, **dict(zip(sig.out_cache_names, self.writing))}
        self.interpreter.model.run_by_name(sig.name, ins, outs)
        self.reading, self.writing = self.writing, self.reading
        return read(sig.logits, sig.runner.outs[sig.logits_name])

    def export(self, cache) -> list[np.ndarray]:
        """The cache's arrays (read out of the buffers when it is the bound one)."""
        return self._read_all() if self.owner is cache else cache.arrays


def open_session(model_path, manifest: dict, threads: int = 0, home: Path | None = None, api=None):
    """(CompiledInterpreter or None, how the model runs: "CompiledModel (...)" or "Interpreter (why)")."""
    model = manifest["model"]
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None, f"Interpreter ({ENV_SWITCH}=0)"
    if model.get("delegate", "none") not in ("none", "xnnpack"):
        return None, f"Interpreter (delegate {model.get('delegate')})"
    if model.get("precision") == "int8-full":
        return None, "Interpreter (int8 inputs/outputs)"
    try:
        api = api or _api()
    except ImportError as e:
        return None, f"Interpreter (CompiledModel unavailable: {e})"
    name = model.get("file") or Path(model_path).name  # the bundle verified this file's sha256 at load
    sha = next((f.get("sha256", "") for f in manifest.get("files", []) if f.get("path") == name), "")
    try:
        compiled, cache = load(model_path, threads, sha, home, api)
    except Exception as e:  # any load failure: the Interpreter still runs the model
        why = (str(e).splitlines() or [type(e).__name__])[0]
        log.warning("LiteRT CompiledModel failed to load %s (%s); using the Interpreter", name, why)
        return None, f"Interpreter (CompiledModel failed to load: {why})"
    session = CompiledInterpreter(compiled, cache)
    if not session.float_io():
        return None, "Interpreter (int8 inputs/outputs)"
    return session, f"CompiledModel (XNNPACK weight cache {cache['state']}: {cache['file']})"
