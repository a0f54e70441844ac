"""Which inference runtimes this machine has, and a clear word when a bundle needs one it lacks.

The device install skips a runtime where it publishes no wheel (setup.py markers): on 32-bit ARM
(armv7l, 32-bit Raspberry Pi OS) neither onnxruntime nor ai-edge-litert has one, so edgekit installs
but can serve nothing there; on other machines a runtime may simply not be installed. Nothing here
imports a runtime: presence is found with importlib's module search, versions from package metadata.

May import: stdlib, edgekit.core.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from dataclasses import dataclass

from edgekit.core.errors import BundleError

# bundle/target runtime name -> (python modules that provide it, first preferred; pip package to install)
PROVIDERS = {
    "onnxruntime": (("onnxruntime",), "onnxruntime"),
    "litert": (("ai_edge_litert", "tflite_runtime"), "ai-edge-litert"),
    "litert-segments": (("ai_edge_litert", "tflite_runtime"), "ai-edge-litert"),
}
_DISTRIBUTION = {"onnxruntime": "onnxruntime", "ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
UNSUPPORTED_MACHINES = {
    "armv7l": "32-bit ARM (armv7l, e.g. 32-bit Raspberry Pi OS) is not supported: onnxruntime and ai-edge-litert "
              "publish no wheels for it; install the 64-bit Raspberry Pi OS (aarch64) instead",
    "armv6l": "32-bit ARM (armv6l, Pi Zero / Pi 1) is not supported: no onnxruntime or ai-edge-litert wheels exist "
              "for it",
}


@dataclass(frozen=True)
class RuntimeStatus:
    """One runtime: `module` that provides it here (None when missing) and its `version`."""

    name: str
    module: str | None
    version: str | None
    package: str

    @property
    def installed(self) -> bool:
        return self.module is not None


def status(runtime: str) -> RuntimeStatus:
    """Whether `runtime` (a bundle's model.runtime, e.g. "onnxruntime", "litert") can be imported here."""
    modules, package = PROVIDERS.get(runtime, ((runtime,), runtime))
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or blocked installation counts as missing
            found = False
        if found:
            try:
                version = importlib.metadata.version(_DISTRIBUTION.get(module, module))
            except importlib.metadata.PackageNotFoundError:
                version = None
            return RuntimeStatus(runtime, module, version, package)
    return RuntimeStatus(runtime, None, None, package)


def missing_reason(runtime: str, machine: str | None = None) -> str:
    """One sentence: `runtime` is missing here, why, and what to do."""
    machine = machine or platform.machine()
    package = PROVIDERS.get(runtime, ((runtime,), runtime))[1]
    if machine in UNSUPPORTED_MACHINES:
        return f"runtime '{runtime}' ({package}), which is not installed: {UNSUPPORTED_MACHINES[machine]}"
    return (f"runtime '{runtime}' ({package}), which is not installed here: `pip install {package}` into "
            f"edgekit's environment (this machine: {machine})")


def require(runtime: str, where: str = "") -> None:
    """BundleError naming the missing runtime unless it can be imported. Runtimes not in PROVIDERS
    (registered in RUNNERS by other code) bring their own implementation and are not checked."""
    if runtime in PROVIDERS and not status(runtime).installed:
        raise BundleError(f"{where + ': ' if where else ''}this bundle needs {missing_reason(runtime)}")
