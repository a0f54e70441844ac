"""usage.thermal, the thermal gauges in /metrics, /props and the request log line, with a fake
thermal tree and recorded `vcgencmd get_throttled` output; with and without a power source (fast tier)."""

from __future__ import annotations

import json
import time

import pytest
from starlette.testclient import TestClient

from edgekit.device.power.meter import EnergyMeter, Sampler
from edgekit.device.power.thermal import ThermalMonitor
from edgekit.device.jsonl import JsonlLog

from test_power_thermal import SlowSource, Throttled, thermal_tree


def _monitor(tmp_path, output: str, milli: int = 66600) -> ThermalMonitor:
    return ThermalMonitor(thermal_tree(tmp_path / "thermal", {"cpu-thermal": milli}), run=Throttled(output), hz=50)


@pytest.mark.parametrize("with_power", [True, False])
def test_usage_metrics_and_log_carry_thermal_state(tmp_path, with_power):
    from edgekit.device.server import create_app

    monitor = _monitor(tmp_path, "throttled=0x50005\n").start()
    meter = EnergyMeter(SlowSource(time.monotonic, watts_at=lambda t: 6.0)) if with_power else None
    app = create_app(_loaded(), meter=meter, request_log=JsonlLog(tmp_path / "requests.jsonl"), thermal=monitor)
    sampler = Sampler(meter, hz=50).start() if with_power else None
    try:
        with TestClient(app) as client:
            usage = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 6}).json()["usage"]
            metrics = client.get("/metrics").text
            props = client.get("/props").json()
    finally:
        monitor.stop()
        if sampler:
            sampler.stop()
    assert usage["thermal"] == {"celsius_start": 66.6, "celsius_end": 66.6, "throttled": True,
                                "flags": ["under-voltage", "throttled", "under-voltage-occurred", "throttled-occurred"]}
    assert ("energy" in usage) is with_power
    if with_power:
        assert usage["energy"]["edges"] == "sampler" and usage["energy"]["held_seconds"] is not None
        assert usage["energy"]["joules"] == pytest.approx(6.0 * usage["energy"]["seconds"], rel=1e-4)
    assert "edgekit_soc_temperature_celsius 66.6" in metrics
    assert 'edgekit_throttled{flag="throttled"} 1.0' in metrics
    assert 'edgekit_throttled{flag="arm-frequency-capped"} 0.0' in metrics
    assert "edgekit_requests_throttled_total 1.0" in metrics
    assert props["thermal"]["zone"] == "cpu-thermal"
    if with_power:
        assert props["power"]["window_edges"] == "sampler"
    line = json.loads((tmp_path / "requests.jsonl").read_text().splitlines()[-1])
    assert line["thermal"] == usage["thermal"]


def _loaded():
    from pathlib import Path

    from edgekit.core.bundle import Bundle
    from edgekit.device.runtime import LoadedModel
    from fakes import FakeTokenizer
    from test_serve_energy import SlowModel

    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    return LoadedModel(bundle=Bundle(Path("."), manifest), model=SlowModel([2, 3, 4, 5]),
                       tokenizer=FakeTokenizer(), generation={"max_new_tokens": 8, "temperature": 0.0})
