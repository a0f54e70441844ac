"""edgekit packaging.

The base install is the *device* install: no torch, no tensorflow (tests/test_layers.py checks).
Extras:
  build  workstation toolchain (torch CPU-compatible range, transformers 5, onnx, litert-torch ...)
  tf     tensorflow-cpu, only for litert-torch's generative export_hf path
  test   pytest, the HTTP clients the tests use and matplotlib (report and bench plots are tested)
  bench  plotting for the benchmark scripts
Install torch's CPU wheel first (README) so the resolver does not pull the CUDA build.
"""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# The distribution is `edgekit-ml` (the name `edgekit` on PyPI belongs to an unrelated project; `edgekit-ml`
# was free on 2026-11-30); the import package and the console script stay `edgekit`.
DIST_NAME = "edgekit-ml"
# The runtimes publish wheels only for these machines (PyPI, 2026-11-30: onnxruntime 1.32 for Linux
# x86_64/aarch64, macOS arm64, Windows AMD64/ARM64; ai-edge-litert 2.3 for Linux x86_64/aarch64, macOS arm64,
# Windows AMD64). Elsewhere (32-bit Raspberry Pi OS, armv7l) pip would try to build them from source and fail
# the whole install, so they are skipped there: the install succeeds and `edgekit runtimes` / serve say which
# runtime is missing and which bundles need it.
_ORT_MACHINES = ("x86_64", "aarch64", "AMD64", "arm64", "ARM64")
_LITERT_MACHINES = ("x86_64", "aarch64", "AMD64", "arm64")


def _on(machines: tuple[str, ...]) -> str:
    """A PEP 508 marker true on the listed `platform_machine` values."""
    return " or ".join(f'platform_machine == "{m}"' for m in machines)


VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "edgekit" / "__init__.py").read_text()).group(1)

DEVICE = [
    "click>=8.1",
    "numpy>=1.26",
    "psutil>=5.9",
    # >= 1.23: int8 ONNX bundles of tied models read embedding rows with GatherBlockQuantized bits=8
    # (edgekit/workshop/onnx_tied.py); measured 2026-12-01: 1.20.1 and 1.22.0 reject the `bits` attribute,
    # 1.23.2 and 1.24.1 run it.
    f"onnxruntime>=1.23; {_on(_ORT_MACHINES)}",
    # Upper bound = the newest release tested (2.3.0, 2026-11-30): the zero-copy KV cache
    # (edgekit/device/tflite_resident.py) calls private interpreter internals (_interpreter_wrapper,
    # _subgraph_index, tensor/Invoke) that a release may change. Such a change is caught at load by a
    # self-check against the public SignatureRunner (then the public path is used), but raise the bound
    # only after the full tier passes on the new release. The CompiledModel path with the XNNPACK weight
    # cache (edgekit/device/tflite_compiled.py, public API) needs CompiledModel and
    # CpuOptions.xnnpack_weight_cache_path (2.3.0 has both); an older release lacking them uses the
    # Interpreter (/props litert_api says why), so the lower bound stays.
    f"ai-edge-litert>=1.2,<2.4; {_on(_LITERT_MACHINES)}",
    "tokenizers>=0.20",  # pulls huggingface_hub (pure Python); no torch
    "starlette>=0.40",
    "uvicorn>=0.30",
    "jinja2>=3.1",  # chat templates (rendered in a sandbox, like transformers does)
    "prometheus-client>=0.20",  # GET /metrics
    # Bundle signatures (Ed25519, edgekit/device/signing.py). Wheels (PyPI, 2026-11-30): cryptography 50.0.2
    # abi3 for manylinux aarch64 (4.7 MB), armv7l and x86_64; its dependency cffi has no armv7l wheel on PyPI
    # (a C build), so 32-bit ARM skips it like the runtimes: `keygen`/`sign`/`--trust` then say it is missing.
    f"cryptography>=41; {_on(_LITERT_MACHINES)}",
    # Structured output and tool calls (edgekit/device/constrain.py): llguidance, a Rust grammar engine with
    # cp39-abi3 wheels and no dependencies (no torch). Wheels (PyPI, 2026-11-30): 1.9.1 for manylinux x86_64,
    # macOS arm64, Windows AMD64/ARM64; the newest with a Linux aarch64 wheel is 1.6.1 (manylinux_2_28, 2.9 MB:
    # Pi OS Bookworm's glibc 2.36 takes it, for cp311 and cp313 alike). No armv7l wheel (a Rust build): skipped
    # there, and response_format / tools then answer 400 naming the missing package. Lower bound = the oldest
    # release tested (1.6.1); upper bound = the newest tested (1.9.1) -- the engine's API moved before 1.0.
    f"llguidance>=1.6.1,<1.10; {_on(_ORT_MACHINES)}",
]
BUILD = [
    # litert-torch 0.10 requires torch<2.15; a "+cpu" pin would not resolve on users' machines,
    # so the README installs the CPU wheel first and this range keeps it.
    "torch>=2.4,<2.15",
    "transformers>=5,<6",
    "onnx>=1.17",
    "onnxscript>=0.5",
    "litert-torch>=0.10",
    "gguf>=0.10",
    "accelerate>=1.0",
    "sentencepiece>=0.2",
    "tqdm>=4.66",
    "scipy>=1.10",  # Spearman correlation for STS-B
]
TF = ["tensorflow-cpu>=2.19"]
# matplotlib: plot tests; jsonschema: structured-output tests validate replies with an independent validator
TEST = ["pytest>=8", "httpx>=0.27", "openai>=1.40", "hypothesis>=6.100", "matplotlib>=3.8", "jsonschema>=4.18"]
BENCH = ["matplotlib>=3.8"]

setup(
    name=DIST_NAME,
    version=VERSION,
    description="Distill, quantize and export language models for edge hardware; serve them with honest energy accounting.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["edgekit", "edgekit.cli", "edgekit.core", "edgekit.device", "edgekit.device.power", "edgekit.device.server", "edgekit.workshop",
              "edgekit._targets", "edgekit._models", "edgekit._boards", "edgekit._accelerators"],
    # The top-level targets/, models/ and boards/ folders ship inside the package as data-only packages.
    package_dir={"edgekit._targets": "targets", "edgekit._models": "models", "edgekit._boards": "boards",
                 "edgekit._accelerators": "accelerators"},
    package_data={"edgekit._targets": ["*.toml"], "edgekit._models": ["*.toml"], "edgekit._boards": ["*.toml"],
                  "edgekit._accelerators": ["*.toml"], "edgekit.device": ["speed_data.toml"]},
    install_requires=DEVICE,
    extras_require={"build": BUILD, "tf": TF, "test": TEST, "bench": BENCH, "all": BUILD + TEST + BENCH},
    entry_points={"console_scripts": ["edgekit = edgekit.cli:main"]},
)
