"""Accelerator profiles (accelerators/*.toml): the Edge TPU's published figures and its host links.
Stdlib only.

Units: bytes, bytes per second, seconds, watts, multiply-accumulates (MACs) per second. Every figure
is approximate and carries its source; they feed predictions (edgekit/device/coral_latency.py), never
measurements. Found like boards (EDGEKIT_ACCELERATORS_PATH first).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.core import tomlfiles
from edgekit.core.errors import ConfigError
from edgekit.core.schema import Field, Table

LINK = Table({
    "description": Field(str, doc="one line: the link and the product that uses it"),
    "bytes_per_second": Field(float, minimum=1.0, doc="usable host <-> accelerator bandwidth, bytes/s"),
    "invoke_overhead_seconds": Field(float, minimum=0.0, doc="fixed cost of one model invoke over this link, s"),
    "source": Field(str, doc="where the figures come from; say which are assumptions"),
})


def _check(data: dict, err) -> None:
    if not data["links"]:
        raise err("links", "at least one [links.NAME] table is required")
    for name, link in data["links"].items():
        data["links"][name] = _validate_link(link, name)


def _validate_link(link, name: str) -> dict:
    from edgekit.core.schema import validate

    return validate(link, LINK, f"[links.{name}]")


SCHEMA = Table({
    "name": Field(str, doc="must equal the file name without .toml"),
    "description": Field(str),
    "on_chip_parameter_bytes": Field(int, minimum=0, doc="on-chip SRAM that caches parameters, bytes"),
    "macs_per_second": Field(float, minimum=1.0, doc="peak multiply-accumulates per second (int8)"),
    "watts": Field(float, minimum=0.0, doc="accelerator power while running, W"),
    "source": Field(str, doc="where the chip figures come from"),
    "cache_rule": Field(str, doc="how co-compiled models share the cache (the assumption the predictor makes)"),
    "host_seconds_per_segment_call": Field(float, minimum=0.0,
                                           doc="host work per segment call on the reference machine, s"),
    "host_seconds_source": Field(str, doc="how the host figure was measured"),
    "host_seconds_per_encoder_token_layer": Field(
        float, minimum=0.0, default=0.0,
        doc="host work of a sentence-form encoder per token per layer on the reference machine, s"),
    "host_seconds_per_encoder_token_layer_source": Field(str, default="", doc="how that figure was measured"),
    "links": Field(dict, default={}, doc="[links.NAME] tables: bytes_per_second, invoke_overhead_seconds, source"),
}, check=_check)


@dataclass(frozen=True)
class Link:
    name: str
    description: str
    bytes_per_second: float
    invoke_overhead_seconds: float
    source: str


@dataclass(frozen=True)
class Accelerator:
    name: str
    on_chip_parameter_bytes: int
    macs_per_second: float
    watts: float
    source: str
    cache_rule: str
    host_seconds_per_segment_call: float
    host_seconds_source: str
    links: dict
    host_seconds_per_encoder_token_layer: float = 0.0
    host_seconds_per_encoder_token_layer_source: str = ""

    def link(self, name: str) -> Link:
        if name not in self.links:
            raise ConfigError(f"unknown link '{name}'; available: {', '.join(sorted(self.links))}")
        return self.links[name]


def load_accelerator(name_or_path: str = "edgetpu") -> Accelerator:
    """Load and validate an accelerator profile by name or path."""
    _, d = tomlfiles.load_validated("accelerators", name_or_path, "accelerator", SCHEMA)
    links = {n: Link(n, v["description"], v["bytes_per_second"], v["invoke_overhead_seconds"], v["source"])
             for n, v in d["links"].items()}
    return Accelerator(d["name"], d["on_chip_parameter_bytes"], d["macs_per_second"], d["watts"], d["source"],
                       d["cache_rule"], d["host_seconds_per_segment_call"], d["host_seconds_source"], links,
                       d["host_seconds_per_encoder_token_layer"], d["host_seconds_per_encoder_token_layer_source"])
