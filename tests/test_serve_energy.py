"""Per-request energy in the API, the request log and /metrics, with injected fake power sources
(fast tier, Starlette's test client)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edgekit.core.bundle import Bundle
from edgekit.device.power.co2 import grid_intensity
from edgekit.device.power.meter import EnergyMeter, Sampler
from edgekit.device.runtime import LoadedModel
from edgekit.device.server import create_app
from edgekit.device.jsonl import JsonlLog

from fakes import FakeTokenizer, ScriptedModel, TraceSource


class SlowModel(ScriptedModel):
    """Takes `seconds` per forward call, so windows span several sampler readings."""

    def __init__(self, script, seconds=0.01):
        super().__init__(script)
        self.seconds = seconds

    def forward(self, token_ids, cache, last_only=False):
        time.sleep(self.seconds)
        return super().forward(token_ids, cache, last_only)


def _app(source, tmp_path=None, intensity=None):
    manifest = {"name": "toy", "task": "text-generation", "target": {"name": "fake"},
                "model": {"max_sequence_length": 64, "format": "onnx", "precision": "fp32", "runtime": "fake"}}
    loaded = LoadedModel(bundle=Bundle(Path("."), manifest), model=SlowModel([2, 3, 4, 5]),
                         tokenizer=FakeTokenizer(), generation={"max_new_tokens": 8, "temperature": 0.0})
    meter = EnergyMeter(source)
    log = JsonlLog(tmp_path / "requests.jsonl") if tmp_path else None
    return create_app(loaded, meter=meter, intensity=intensity, request_log=log), meter


@pytest.mark.parametrize("stream", [False, True])
def test_usage_energy_matches_a_constant_power_source(stream):
    app, meter = _app(TraceSource(time.monotonic, watts_at=lambda t: 7.5))
    sampler = Sampler(meter, hz=200).start()
    try:
        with TestClient(app) as client:
            r = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 8, "stream": stream})
    finally:
        sampler.stop()
    if stream:
        chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
        usage = chunks[-1]["usage"]
    else:
        usage = r.json()["usage"]
    e = usage["energy"]
    assert e["source"] == "fake" and e["measured"] is True and e["method"] == "trapezoid"
    assert e["seconds"] >= 8 * 0.01
    assert e["joules"] == pytest.approx(7.5 * e["seconds"], rel=1e-3)
    assert e["watts"] == pytest.approx(7.5, rel=1e-3)
    assert e["joules_per_token"] == pytest.approx(e["joules"] / usage["completion_tokens"], rel=1e-3)
    assert e["co2_grams"] == pytest.approx(e["joules"] / 3.6e6 * 475, rel=1e-3) and e["grid_g_per_kwh"] == 475


def test_counter_source_energy_is_the_counter_delta_and_estimates_say_so(tmp_path):
    truth = lambda t: 3.0 * t  # noqa: E731 - a 3 W counter
    app, _ = _app(TraceSource(time.monotonic, energy_at=truth, name="rapl"), tmp_path, grid_intensity(100.0))
    with TestClient(app) as client:
        e = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 6}).json()["usage"]["energy"]
        metrics = client.get("/metrics").text
        props = client.get("/props").json()
    assert e["method"] == "counter" and e["joules"] == pytest.approx(3.0 * e["seconds"], rel=1e-3)
    assert e["grid_g_per_kwh"] == 100.0
    assert 'edgekit_energy_joules_total{measured="true",source="rapl"}' in metrics
    assert props["power"]["source"] == "rapl" and props["power"]["measured"] is True
    line = json.loads((tmp_path / "requests.jsonl").read_text().splitlines()[-1])
    assert line["energy"]["joules"] == e["joules"] and line["energy"]["source"] == "rapl"

    app, _ = _app(TraceSource(time.monotonic, watts_at=lambda t: 2.0, name="estimate", measured=False))
    with TestClient(app) as client:
        e = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "ab"}],
                                                      "max_tokens": 4}).json()["usage"]["energy"]
        metrics = client.get("/metrics").text
    assert e["measured"] is False and e["source"] == "estimate"
    assert 'edgekit_energy_joules_total{measured="false",source="estimate"}' in metrics


def test_a_failing_sensor_read_drops_energy_not_the_request():
    class Flaky(TraceSource):
        def read(self):
            raise OSError("i2c read failed")

    app, _ = _app(Flaky(time.monotonic, watts_at=lambda t: 1.0))
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3})
    assert r.status_code == 200 and "energy" not in r.json()["usage"]
