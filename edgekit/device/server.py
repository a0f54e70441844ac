"""The device HTTP server: OpenAI-shaped API over Starlette (run by uvicorn).

Routes: GET /health (503 while loading, 200 ready), GET /v1/models, GET /props (bundle, runtime,
accelerator in use), GET /metrics (Prometheus text), POST /v1/completions and
/v1/chat/completions (text-generation bundles; `stream` = server-sent events, one chunk per
token, a final chunk with usage), POST /v1/embeddings (feature-extraction bundles).
One model session: requests take turns (a lock); at most `max_queue` wait, more get 503 with
Retry-After. Generation runs in a worker thread so the event loop keeps answering /health; a
client that disconnects mid-stream stops its generation at the next token. Optional bearer-token
auth (all routes but /health). Every request is logged as one JSONL line and counted in /metrics.
Timings in `usage`: prefill_ms (milliseconds) and decode_tokens_per_second.
May import: stdlib, edgekit.core, edgekit.device, starlette, numpy, prometheus_client.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgekit.device.api import PENALTY_FIELDS, RequestError, _usage, error_response, parse_completion_request
from edgekit.device.embeddings import EmbeddingRequestError, embeddings_body, parse_embeddings_request
from edgekit.device.generate import generate
from edgekit.device.limits import DEFAULT_LIMITS, BodyLimit, Limits
from edgekit.device.sampling import Penalties, Sampler
from edgekit.device.jsonl import JsonlLog
from edgekit.device.serving import Admission, Channel, Metrics, QueueFull, authorized, log_record


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
    state = {"loaded": loaded, "error": None}
    lock = threading.Lock()
    created = int(time.time())
    admission = Admission(max_queue)
    metrics = Metrics(admission)
    log = request_log or JsonlLog(None)
    if meter is not None:
        from edgekit.device.power.co2 import grid_intensity
        from edgekit.device.power.meter import energy_usage

        intensity = intensity or grid_intensity()
        metrics.watch_power(meter)
    if thermal is not None:
        metrics.watch_thermal(thermal)

    def metered(name: str, work):
        """(work(), the energy window of running it or None without a meter, usage.thermal or None)."""
        mark = None if thermal is None else thermal.mark()
        result, window = (work(), None) if meter is None else meter.measure(name, work)
        return result, window, None if thermal is None else thermal.summary(mark)

    def with_meters(usage: dict, window, tokens: int, heat) -> dict:
        """`usage` plus `energy` (joules per one of `tokens`) and `thermal`, where measured."""
        if window is not None:
            usage["energy"] = energy_usage(window, tokens, intensity)
        if heat is not None:
            usage["thermal"] = heat
        return usage

    def model():
        return state["loaded"]

    def finish(route: str, status: int, started: float, usage=None, error=None):
        metrics.observe(route, status, time.time() - started, usage)
        log.write(log_record(route, status, started, usage, error))

    def fail(route: str, started: float, message: str, param=None, status=400, headers=None, usage=None):
        finish(route, status, started, usage, error=message)
        resp = error_response(message, param, status)
        resp.headers.update(headers or {})
        return resp

    async def gate(request: Request, route: str, started: float):
        """None when the request may proceed, else the error response."""
        if not authorized(request.headers.get("authorization"), api_key):
            return fail(route, started, "missing or wrong API key (Authorization: Bearer ...)", status=401)
        if model() is None:
            message = state["error"] or "model is loading"
            return fail(route, started, message, status=503, headers={"Retry-After": "1"})
        return None

    async def read_json(request: Request, route: str, started: float):
        raw = await request.body()  # at most limits.max_body_bytes: BodyLimit stops a longer one
        try:  # parsing up to a megabyte: off the event loop
            return await run_in_threadpool(json.loads, raw.decode("utf-8")), None
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None, fail(route, started, "request body is not valid JSON (UTF-8)")

    async def health(request: Request):
        if model() is None:
            return JSONResponse({"status": "error" if state["error"] else "loading", "error": state["error"]},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "model": model().name})

    async def props(request: Request):
        started = time.time()
        err = await gate(request, "/props", started)
        power = None if meter is None else dict(meter.source.describe(), idle_watts_subtracted=meter.idle_watts,
                                                grid=intensity.label(), read_errors=meter.errors,
                                                last_error=meter.last_error,
                                                window_edges="sampler" if meter.sampler_edges else "read")
        heat = None if thermal is None else thermal.describe()
        return err or JSONResponse(dict(model().props(), max_queue=max_queue, queued=admission.waiting, power=power,
                                        thermal=heat, limits=limits.describe(model().max_sequence_length)))

    async def metrics_route(request: Request):
        started = time.time()
        err = await gate(request, "/metrics", started) if api_key else None
        return err or Response(metrics.text(), media_type="text/plain; version=0.0.4")

    async def models(request: Request):
        started = time.time()
        err = await gate(request, "/v1/models", started)
        return err or JSONResponse({"object": "list", "data": [
            {"id": model().name, "object": "model", "created": created, "owned_by": "edgekit"}]})

    def wrong_task(route: str, started: float):
        m = model()
        other = "/v1/embeddings" if m.task == "feature-extraction" else "/v1/completions"
        return fail(route, started, f"model '{m.name}' is a {m.task} model: {route} is not available; use {other}",
                    "model")

    async def prologue(request: Request, route: str, started: float, task: str):
        """Auth, readiness, task and JSON body checks shared by the POST routes: (body, None) or (None, error)."""
        err = await gate(request, route, started)
        if err is None and model().task != task:
            err = wrong_task(route, started)
        if err is not None:
            return None, err
        return await read_json(request, route, started)

    def admit(route: str, started: float):
        """None when a queue slot was taken (release it when done), else the 503 response."""
        try:
            admission.acquire()
        except QueueFull as exc:
            return fail(route, started, str(exc), status=503, headers={"Retry-After": "1"})
        return None

    async def embeddings(request: Request):
        route, started = "/v1/embeddings", time.time()
        body, err = await prologue(request, route, started, "feature-extraction")
        if err:
            return err
        try:
            ids, fmt = await run_in_threadpool(parse_embeddings_request, body, model())
        except EmbeddingRequestError as exc:
            return fail(route, started, str(exc), exc.param)
        err = admit(route, started)
        if err:
            return err
        try:
            def run():
                with lock:
                    return metered(uuid.uuid4().hex, lambda: model().model.embed(ids))

            vectors, window, heat = await run_in_threadpool(run)
        finally:
            admission.release()
        tokens = sum(map(len, ids))
        usage = with_meters({"prompt_tokens": tokens, "completion_tokens": 0}, window, tokens, heat)
        finish(route, 200, started, usage)
        return JSONResponse(embeddings_body(vectors, fmt, model().name, tokens))

    def body_for(chat: bool, cid: str, text: str, finish_reason, usage, delta: bool, first: bool = False) -> dict:
        now = int(time.time())
        if chat:
            key = "delta" if delta else "message"
            msg = {"content": text} if delta and not first else {"role": "assistant", "content": text}
            out = {"id": cid, "object": "chat.completion.chunk" if delta else "chat.completion", "created": now,
                   "model": model().name, "choices": [{"index": 0, key: msg, "finish_reason": finish_reason}]}
        else:
            out = {"id": cid, "object": "text_completion", "created": now, "model": model().name,
                   "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}
        if usage is not None:
            out["usage"] = usage
        return out

    def generation(params: dict, should_stop=None):
        m = model()
        penalties = Penalties(**{k: params[k] for k in PENALTY_FIELDS})
        sampler = Sampler(params["temperature"], params["top_p"], params["top_k"], params["seed"], penalties)
        return generate(m.model, m.tokenizer, params["prompt_ids"], params["max_tokens"], sampler, params["stop"],
                        should_stop=should_stop)

    def completion_route(chat: bool):
        route = "/v1/chat/completions" if chat else "/v1/completions"

        async def handler(request: Request):
            started = time.time()
            body, err = await prologue(request, route, started, "text-generation")
            if err:
                return err
            try:
                params = await run_in_threadpool(parse_completion_request, body, model(), chat, limits)
            except RequestError as exc:
                return fail(route, started, str(exc), exc.param, exc.status)
            err = admit(route, started)
            if err:
                return err
            cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            cancelled = threading.Event()
            channel = Channel(asyncio.get_running_loop())
            deadline = time.monotonic() + request_timeout

            def should_stop() -> bool:
                return cancelled.is_set() or time.monotonic() > deadline

            def timed_out(res) -> bool:
                return res.finish_reason == "cancelled" and not cancelled.is_set()

            timeout_message = f"request exceeded the server's {request_timeout:g} s timeout"

            def worker():
                # Runs to completion in its own thread (cancel is cooperative), so the lock is always released.
                parts = []

                def run():
                    gen = generation(params, should_stop=should_stop)
                    while True:
                        try:
                            piece = next(gen)
                        except StopIteration as stop:
                            return stop.value
                        if params["stream"]:
                            channel.put(("delta", piece))
                        else:  # nothing to send before the end: no per-token wake-ups
                            parts.append(piece)

                try:
                    with lock:
                        res, window, heat = metered(cid, run)
                    usage = with_meters(_usage(res), window, res.completion_tokens, heat)
                    channel.put(("done", (res, "".join(parts), usage)))
                    if params["stream"]:  # logged here: a disconnected client never reads "done"
                        status = 504 if timed_out(res) else 499 if res.finish_reason == "cancelled" else 200
                        finish(route, status, started, usage)
                except Exception as exc:  # reported to the client; the server keeps running
                    channel.put(("error", exc))
                    if params["stream"]:
                        finish(route, 500, started, error=str(exc))
                finally:
                    admission.release()

            threading.Thread(target=worker, name=f"gen-{cid}", daemon=True).start()

            async def items():
                while True:
                    for item in await channel.drain():
                        yield item

            if not params["stream"]:
                try:
                    async for kind, value in items():
                        if kind == "done":
                            res, text, usage = value
                            if timed_out(res):
                                return fail(route, started, f"{timeout_message} ({res.completion_tokens} tokens "
                                            "generated)", status=504, usage=usage)
                            finish(route, 200, started, usage)
                            return JSONResponse(body_for(chat, cid, text, res.finish_reason, usage, False))
                        if kind == "error":
                            return fail(route, started, f"generation failed: {value}", status=500)
                finally:
                    cancelled.set()

            def sse(kind: str, value, first: bool) -> str:
                if kind == "delta":
                    body = body_for(chat, cid, value, None, None, True, first)
                elif kind == "done" and timed_out(value[0]):
                    body = {"error": {"message": timeout_message, "type": "timeout"}}
                elif kind == "done":
                    body = body_for(chat, cid, "", value[0].finish_reason, value[2], True, first)
                    return "data: " + json.dumps(body) + "\n\ndata: [DONE]\n\n"
                else:
                    body = {"error": {"message": str(value), "type": "server_error"}}
                return "data: " + json.dumps(body) + "\n\n"

            async def stream():
                # One SSE event per token; the events that arrived together go out in one write.
                first = True
                try:
                    while True:
                        out = []
                        for kind, value in await channel.drain():
                            out.append(sse(kind, value, first))
                            first = False
                            if kind != "delta":
                                yield "".join(out)
                                return
                        if out:
                            yield "".join(out)
                finally:
                    cancelled.set()  # a disconnected client stops generation at the next token

            return StreamingResponse(stream(), media_type="text/event-stream")

        return handler

    @asynccontextmanager
    async def lifespan(app):
        if state["loaded"] is None and loader is not None:
            def load():
                try:
                    state["loaded"] = loader()
                except Exception as exc:  # reported by /health; the process keeps answering
                    state["error"] = f"model failed to load: {exc}"

            threading.Thread(target=load, name="edgekit-load", daemon=True).start()
        yield
        log.close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/props", props, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/v1/completions", completion_route(False), methods=["POST"]),
        Route("/v1/chat/completions", completion_route(True), methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
    known = {r.path for r in routes}

    def refuse_body(path: str, message: str):  # any path, routed or not (unknown ones count as "other")
        return fail(path if path in known else "other", time.time(), message, status=413)

    body_limit = Middleware(BodyLimit, max_bytes=limits.max_body_bytes, reject=refuse_body)
    return Starlette(routes=routes, lifespan=lifespan, middleware=[body_limit])
