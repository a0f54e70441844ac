"""A LiteRT CompiledModel-like fake over FakeLiteRT's toy decoder (tests of edgekit.device.tflite_compiled):
the public surface edgekit uses (tensor details, buffers created by name, run_by_name, TensorBuffer
write/read) and a `from_file` that writes an XNNPACK-like weight cache file where it is told to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fakes import FakeLiteRT


class FakeBuffer:
    def __init__(self, owner: "FakeCompiledModel", shape, dtype):
        self.owner, self.data = owner, np.full(tuple(shape), np.nan if dtype == "float32" else 0, dtype=dtype)
        self.was_output = False

    def write(self, a: np.ndarray) -> None:
        self.owner.written_bytes += a.nbytes
        self.data[...] = np.asarray(a).reshape(self.data.shape)

    def read(self, n: int, dtype) -> np.ndarray:
        self.owner.read_bytes += n * np.dtype(dtype).itemsize
        return self.data.reshape(-1)[:n].astype(dtype).copy()


class FakeCompiledModel:
    """`stale_cache`: a buffer that was an output once reads as zeros when it comes back as an input (as
    if a release did not sync what it wrote): the turn-taking cache breaks, the copying calls do not,
    and the load-time self-check must catch it."""

    def __init__(self, stale_cache: bool = False):
        self.lite = FakeLiteRT("real")
        self.stale_cache = stale_cache
        self.written_bytes = self.read_bytes = 0

    def _sig(self, name):
        return self.lite.sigs[name]

    @staticmethod
    def _details(d: dict) -> dict:
        return {n: {"name": n, "index": v["index"], "dtype": np.dtype(v["dtype"]).name, "shape": list(v["shape"])}
                for n, v in d.items()}

    def get_input_tensor_details(self, name):
        return self._details(self._sig(name)["ins"])

    def get_output_tensor_details(self, name):
        return self._details(self._sig(name)["outs"])

    def get_signature_index(self, name):
        return ["prefill", "decode"].index(name)

    def create_input_buffer_by_name(self, sig, name):
        d = self._sig(sig)["ins"][name]
        return FakeBuffer(self, d["shape"], np.dtype(d["dtype"]).name)

    def create_output_buffer_by_name(self, sig, name):
        d = self._sig(sig)["outs"][name]
        return FakeBuffer(self, d["shape"], np.dtype(d["dtype"]).name)

    def run_by_name(self, name, ins: dict, outs: dict) -> None:
        sig = self._sig(name)
        for n, buffer in ins.items():
            value = buffer.data
            if self.stale_cache and buffer.was_output:
                value = np.zeros_like(value)
            self.lite.tensors[sig["ins"][n]["index"]][...] = value
        self.lite.invoke(sig)
        for n, buffer in outs.items():
            buffer.was_output = True
            buffer.data[...] = self.lite.tensors[sig["outs"][n]["index"]]


@dataclass
class FakeCpuOptions:
    num_threads: int = 0
    xnnpack_weight_cache_path: str = ""


@dataclass
class FakeOptions:
    hardware_accelerators: object = None
    cpu_options: FakeCpuOptions | None = None


class FakeCompiledApi:
    """What tflite_compiled._api() returns, for `load(api=...)`; records every from_file call.
    `fail`: from_file raises after XNNPACK started its file (a half-written cache)."""

    def __init__(self, fail: bool = False, stale_cache: bool = False):
        self.fail, self.stale_cache, self.calls = fail, stale_cache, []
        api = self

        class CompiledModel:
            @staticmethod
            def from_file(path, options=None):
                cache = options.cpu_options.xnnpack_weight_cache_path
                api.calls.append((path, options.cpu_options.num_threads, cache))
                if cache and not _exists(cache):
                    with open(cache, "wb") as f:
                        f.write(b"packed weights")
                if api.fail:
                    raise RuntimeError("CompiledModel error: code=3\nmore detail")
                return FakeCompiledModel(api.stale_cache)

        self.CompiledModel = CompiledModel

    def __iter__(self):
        return iter((self.CompiledModel, FakeCpuOptions, FakeOptions, type("Accel", (), {"CPU": 1}), "9.9.9"))


def _exists(path) -> bool:
    import os

    return os.path.exists(path)
