"""Target profiles: one TOML file per kind of device (targets/*.toml). Stdlib only.

A target says which file format to export, which precisions are allowed (and the default),
shape limits, which runtime and delegate run it, how strict verification is, and which power
sources to prefer. Code dispatches on these values through registries; adding a board is adding
a TOML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core import tomlfiles
from edgekit.core.errors import ConfigError
from edgekit.core.schema import Field, Table

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-weight-only", "int4-weight-only", "int4-dynamic", "int8-full")
RUNTIMES = ("onnxruntime", "litert")
DELEGATES = ("none", "xnnpack", "gpu", "edgetpu")
POWER_SOURCES = ("rapl", "hwmon", "power-supply", "rpi-pmic", "jetson", "estimate")


def _check_quantization(q: dict, err) -> None:
    if q["default"] not in q["allowed"]:
        raise err("default", f"{q['default']!r} is not in allowed {q['allowed']}")


def _check_target(t: dict, err) -> None:
    fmt_runtime = {"onnx": "onnxruntime", "tflite": "litert"}
    if t["runtime"]["name"] != fmt_runtime[t["format"]]:
        raise err("runtime.name", f"format {t['format']!r} runs on {fmt_runtime[t['format']]!r}")
    if t["shapes"]["static"] and t["shapes"]["prefill_length"] > t["shapes"]["max_sequence_length"]:
        raise err("shapes.prefill_length", "must not exceed shapes.max_sequence_length")


SCHEMA = Table(
    {
        "name": Field(str, doc="must equal the file name without .toml"),
        "description": Field(str, doc="one line shown by `edgekit targets`"),
        "format": Field(str, choices=FORMATS),
        "quantization": Table(
            {
                "default": Field(str, choices=PRECISIONS),
                "allowed": Field(str, choices=PRECISIONS, list_of=True),
            },
            required=True,
            check=_check_quantization,
        ),
        "shapes": Table(
            {
                "static": Field(bool, default=False, doc="all tensor shapes fixed at export"),
                "max_sequence_length": Field(int, default=512, minimum=8, maximum=131072),
                "prefill_length": Field(int, default=64, minimum=1, doc="prefill chunk when static"),
            }
        ),
        "runtime": Table(
            {
                "name": Field(str, choices=RUNTIMES),
                "delegate": Field(str, default="none", choices=DELEGATES),
                "delegate_library": Field(str, default="", doc="shared library for the delegate"),
                "threads": Field(int, default=0, minimum=0, doc="0 = runtime default"),
            },
            required=True,
        ),
        "verify": Table(
            {
                "greedy_tokens": Field(int, default=16, minimum=1, maximum=4096),
                "min_greedy_agreement": Field(
                    float, default=1.0, minimum=0.0, maximum=1.0,
                    doc="share of greedy tokens that must match the fp32 PyTorch model",
                ),
                "max_logit_diff": Field(float, default=1.0, minimum=0.0),
                "max_perplexity_ratio": Field(float, default=1.02, minimum=1.0),
                "min_cosine": Field(float, default=0.99, minimum=0.0, maximum=1.0,
                                    doc="encoders: lowest cosine of an exported embedding to PyTorch's"),
                "min_spearman_ratio": Field(float, default=0.98, minimum=0.0, maximum=1.0,
                                            doc="encoders: STS-B Spearman of the export / of the fp32 student"),
            }
        ),
        "export": Table(
            {"layout": Field(str, default="single", choices=("single", "tpu-segments"),
                             doc="single = one model file; tpu-segments = Edge TPU segments + host attention")}
        ),
        "compile": Table(
            {"tool": Field(str, default="none", choices=("none", "edgetpu"),
                           doc="accelerator compiler run after verify (edgetpu: predictor + edgetpu_compiler)")}
        ),
        "power": Table({"prefer": Field(str, default=("estimate",), choices=POWER_SOURCES, list_of=True)}),
    },
    check=_check_target,
)


@dataclass(frozen=True)
class Target:
    """A validated target profile. `data` holds every key with defaults filled in."""

    name: str
    path: Path
    data: dict

    @property
    def description(self) -> str:
        return self.data["description"]

    @property
    def format(self) -> str:
        return self.data["format"]

    @property
    def runtime(self) -> dict:
        return self.data["runtime"]

    @property
    def verify(self) -> dict:
        return self.data["verify"]

    def precision(self, requested: str | None = None) -> str:
        """The precision to build: `requested` if this target allows it, else the default."""
        q = self.data["quantization"]
        if requested is None:
            return q["default"]
        if requested not in q["allowed"]:
            raise ConfigError(
                f"target '{self.name}' does not allow precision '{requested}'; allowed: "
                + ", ".join(q["allowed"])
            )
        return requested


def load_target(name_or_path: str) -> Target:
    """Load and validate a target by name (e.g. "coral") or by path to a .toml file."""
    path, data = tomlfiles.load_validated("targets", name_or_path, "target", SCHEMA)
    return Target(name=data["name"], path=path, data=data)


def list_targets() -> list[Target]:
    """Every target found, validated, sorted by name."""
    return [load_target(str(p)) for _, p in sorted(tomlfiles.available("targets").items())]
