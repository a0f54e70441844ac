"""The device HTTP server: OpenAI-shaped completions over Starlette (run by uvicorn).

Routes: GET /health, GET /v1/models, GET /props (bundle, runtime, accelerator in use),
POST /v1/completions (text-generation bundles; optionally streamed as server-sent events),
POST /v1/embeddings (feature-extraction bundles). One model session; requests take turns on it (a lock), generation runs in a worker
thread so the event loop keeps answering /health. Errors use OpenAI's error shape.
Timings in `usage` are milliseconds (prefill_ms) and tokens per second.
May import: stdlib, edgekit.core, edgekit.device, starlette, numpy.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from edgekit.device.embeddings import EmbeddingRequestError, embeddings_body, parse_embeddings_request
from edgekit.device.generate import GenerationResult, generate
from edgekit.device.runtime import LoadedModel
from edgekit.device.sampling import Sampler

MAX_BODY_BYTES = 1 << 20
# OpenAI fields we accept and ignore (they do not change what a single-sequence server does).
_IGNORED_FIELDS = {"user", "logprobs", "echo", "best_of", "presence_penalty", "frequency_penalty",
                   "logit_bias", "suffix", "stream_options"}


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def error_response(message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def _number(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}", name)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return value


def parse_completion_request(body, loaded: LoadedModel) -> dict:
    """Validate a /v1/completions body; returns normalised parameters or raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    known = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream"}
    unknown = sorted(set(body) - known - _IGNORED_FIELDS)
    if unknown:
        raise RequestError(f"unknown field '{unknown[0]}'", unknown[0])
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", "prompt")
    if not prompt:
        raise RequestError("'prompt' must not be empty", "prompt")
    gen = loaded.generation
    ctx_len = loaded.max_sequence_length
    params = {
        "prompt": prompt,
        "max_tokens": _number(body, "max_tokens", gen.get("max_new_tokens", 128), 1, ctx_len, integer=True),
        "temperature": _number(body, "temperature", gen.get("temperature", 0.0), 0.0, 2.0),
        "top_p": _number(body, "top_p", gen.get("top_p", 1.0), 0.0, 1.0),
        "top_k": _number(body, "top_k", gen.get("top_k", 0), 0, 1 << 20, integer=True),
        "seed": _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
        "n": _number(body, "n", 1, 1, 1, integer=True),
        "stream": body.get("stream", False),
    }
    if params["top_p"] == 0:
        raise RequestError("'top_p' must be greater than 0", "top_p")
    if not isinstance(params["stream"], bool):
        raise RequestError("'stream' must be true or false", "stream")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of at most 4 strings", "stop")
    params["stop"] = stop
    if params["seed"] is not None:
        params["seed"] = params["seed"] % (1 << 64)
    ids = loaded.tokenizer.encode(prompt)
    if len(ids) >= ctx_len:
        raise RequestError(f"prompt is {len(ids)} tokens; this model's context is {ctx_len}", "prompt")
    params["prompt_ids"] = ids
    return params


def _usage(res: GenerationResult) -> dict:
    return {
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "total_tokens": res.prompt_tokens + res.completion_tokens,
        "prefill_ms": round(res.prefill_seconds * 1000, 3),
        "decode_tokens_per_second": round(res.decode_tokens_per_second, 2),
    }


def create_app(loaded: LoadedModel) -> Starlette:
    """The ASGI app serving `loaded`."""
    lock = threading.Lock()
    created = int(time.time())

    def run_generation(params: dict, should_stop=None):
        sampler = Sampler(params["temperature"], params["top_p"], params["top_k"], params["seed"])
        return generate(loaded.model, loaded.tokenizer, params["prompt_ids"], params["max_tokens"], sampler,
                        params["stop"], should_stop=should_stop)

    def completion_body(cid: str, text: str, finish: str | None, usage: dict | None) -> dict:
        body = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": loaded.name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            body["usage"] = usage
        return body

    def generate_locked(params: dict) -> tuple[str, GenerationResult]:
        with lock:
            gen = run_generation(params)
            parts = []
            while True:
                try:
                    parts.append(next(gen))
                except StopIteration as stop:
                    return "".join(parts), stop.value

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": loaded.name})

    async def props(request: Request):
        return JSONResponse(loaded.props())

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": loaded.name, "object": "model", "created": created, "owned_by": "edgekit"}]})

    async def read_json(request: Request):
        """(body, None) or (None, error response)."""
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return None, error_response(f"request body exceeds {MAX_BODY_BYTES} bytes", status=413)
        try:
            return json.loads(raw.decode("utf-8")), None
        except (UnicodeDecodeError, ValueError):
            return None, error_response("request body is not valid JSON (UTF-8)")

    def wrong_task(route: str):
        other = "/v1/embeddings" if loaded.task == "feature-extraction" else "/v1/completions"
        return error_response(f"model '{loaded.name}' is a {loaded.task} model: {route} is not available; "
                              f"use {other}", "model")

    async def embeddings(request: Request):
        if loaded.task != "feature-extraction":
            return wrong_task("/v1/embeddings")
        body, err = await read_json(request)
        if err is not None:
            return err
        try:
            ids, fmt = parse_embeddings_request(body, loaded)
        except EmbeddingRequestError as exc:
            return error_response(str(exc), exc.param)

        def run():
            with lock:
                return loaded.model.embed(ids)

        vectors = await run_in_threadpool(run)
        return JSONResponse(embeddings_body(vectors, fmt, loaded.name, sum(map(len, ids))))

    async def completions(request: Request):
        if loaded.task != "text-generation":
            return wrong_task("/v1/completions")
        body, err = await read_json(request)
        if err is not None:
            return err
        try:
            params = parse_completion_request(body, loaded)
        except RequestError as exc:
            return error_response(str(exc), exc.param, exc.status)
        cid = "cmpl-" + uuid.uuid4().hex[:24]
        if not params["stream"]:
            text, res = await run_in_threadpool(generate_locked, params)
            return JSONResponse(completion_body(cid, text, res.finish_reason, _usage(res)))

        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def worker():
            # Runs to completion in its own thread (cancel is cooperative), so the lock is always released.
            put = lambda item: loop.call_soon_threadsafe(items.put_nowait, item)  # noqa: E731
            with lock:
                gen = run_generation(params, should_stop=cancelled.is_set)
                try:
                    while True:
                        put(("delta", next(gen)))
                except StopIteration as stop:
                    put(("done", stop.value))
                except Exception as exc:  # reported to the client as a final error event
                    put(("error", exc))

        threading.Thread(target=worker, name=f"gen-{cid}", daemon=True).start()

        async def stream():
            try:
                while True:
                    kind, value = await items.get()
                    if kind == "delta":
                        yield "data: " + json.dumps(completion_body(cid, value, None, None)) + "\n\n"
                    elif kind == "done":
                        yield "data: " + json.dumps(completion_body(cid, "", value.finish_reason, _usage(value))) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        yield "data: " + json.dumps({"error": {"message": str(value), "type": "server_error"}}) + "\n\n"
                        return
            finally:
                cancelled.set()  # a disconnected client stops generation at the next token

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/props", props, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ])
