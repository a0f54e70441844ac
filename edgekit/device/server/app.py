"""`create_app`: wires the parts of `edgekit serve` into one Starlette app (run by uvicorn).

May import: stdlib, starlette, edgekit.device.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from edgekit.device.jsonl import JsonlLog
from edgekit.device.limits import DEFAULT_LIMITS, BodyLimit, Limits
from edgekit.device.server.admission import Door, ModelHost
from edgekit.device.server.metering import Ledger, Meters
from edgekit.device.server.routes import Routes
from edgekit.device.serving import Metrics


def create_app(loaded=None, loader=None, api_key: str | None = None, max_queue: int = 8,
               request_log: JsonlLog | None = None, request_timeout: float = 300.0, meter=None,
               intensity=None, thermal=None, limits: Limits = DEFAULT_LIMITS) -> Starlette:
    """The ASGI app serving `loaded`, or the result of `loader()` run in a thread at startup (so
    /health answers 503 "loading" at once and 200 when the model is ready). A generation still
    running `request_timeout` seconds after its request arrived stops at the next token: 504.
    With an EnergyMeter `meter`, each request's model work is one energy window: `usage.energy`
    (joules, watts, J/token, source, measured, CO2 at `intensity`, a co2.GridIntensity). With a
    started thermal.ThermalMonitor `thermal`, each request's `usage.thermal` says the temperature at
    its start and end and whether it ran throttled (read by the monitor's thread, not the request).
    `limits` caps each request (a body over `limits.max_body_bytes` is refused before it is read: 413)."""
    host = ModelHost(loaded)
    door = Door(host, api_key, max_queue)
    metrics = Metrics(door.queue)
    metrics.watch_slots(host.lock)
    log = request_log or JsonlLog(None)
    meters = Meters(meter, intensity, thermal, metrics)
    routes = Routes(host, door, meters, Ledger(metrics, log), metrics, limits, request_timeout, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        if host.loaded is None and loader is not None:
            host.load_in_background(loader)
        yield
        log.close()

    table = [
        Route("/health", routes.health, methods=["GET"]),
        Route("/v1/models", routes.models, methods=["GET"]),
        Route("/props", routes.props, methods=["GET"]),
        Route("/metrics", routes.metrics_text, methods=["GET"]),
        Route("/v1/completions", routes.completions(False), methods=["POST"]),
        Route("/v1/chat/completions", routes.completions(True), methods=["POST"]),
        Route("/v1/embeddings", routes.embeddings, methods=["POST"]),
    ]
    known = {r.path for r in table}

    def refuse_body(path: str, message: str):  # any path, routed or not (unknown ones count as "other")
        return routes.fail(path if path in known else "other", time.time(), message, status=413)

    body_limit = Middleware(BodyLimit, max_bytes=limits.max_body_bytes, reject=refuse_body)
    return Starlette(routes=table, lifespan=lifespan, middleware=[body_limit])
