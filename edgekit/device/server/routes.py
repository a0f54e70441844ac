"""The HTTP routes of `edgekit serve` (Starlette handlers): each reads the request, asks the parts
(admission, parse, session, metering, responses) and answers; every answer but /health is
accounted in the ledger (metrics and the request log).

Routes: GET /health (503 while loading, 200 ready), GET /v1/models, GET /props, GET /metrics,
POST /v1/completions and /v1/chat/completions, POST /v1/embeddings. Times in seconds.
May import: stdlib, starlette, edgekit.device.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgekit.device.embeddings import embeddings_body
from edgekit.device.limits import Limits
from edgekit.device.logprobs import TokenText, shaped
from edgekit.device.server.admission import Door, ModelHost, Refusal
from edgekit.device.server.metering import Ledger, Meters
from edgekit.device.server.parse import RequestError, parse_completion, parse_embeddings, parse_json
from edgekit.device.server.responses import (ChunkWriter, completion_body, completion_id, error_response,
                                             timeout_message)
from edgekit.device.server.session import GenerationSession
from edgekit.device.serving import Channel, Metrics


class Routes:
    """The handlers, sharing the model host, door, meters, ledger and settings of one app."""

    def __init__(self, host: ModelHost, door: Door, meters: Meters, ledger: Ledger, metrics: Metrics,
                 limits: Limits, request_timeout: float, max_queue: int):
        self.host, self.door, self.meters, self.ledger, self.metrics = host, door, meters, ledger, metrics
        self.limits, self.request_timeout, self.max_queue = limits, request_timeout, max_queue
        self.created = int(time.time())

    def fail(self, route: str, started: float, message: str, param=None, status=400, headers=None, usage=None):
        """Account for a refused or failed request and answer it in OpenAI's error shape."""
        self.ledger.finish(route, status, started, usage, error=message)
        return error_response(message, param, status, headers=headers)

    def refuse(self, route: str, started: float, refusal: Refusal):
        return self.fail(route, started, refusal.message, refusal.param, refusal.status, refusal.headers)

    def gate(self, request: Request, route: str, started: float):
        """None when the request may proceed (auth, model ready), else the error response."""
        refusal = self.door.check(request.headers.get("authorization"))
        return None if refusal is None else self.refuse(route, started, refusal)

    async def prologue(self, request: Request, route: str, started: float, task: str):
        """Auth, readiness, task and JSON body checks shared by the POST routes: (body, None) or (None, error)."""
        refusal = self.door.check(request.headers.get("authorization")) or self.door.check_task(route, task)
        if refusal is not None:
            return None, self.refuse(route, started, refusal)
        raw = await request.body()  # at most limits.max_body_bytes: BodyLimit stops a longer one
        try:  # parsing up to a megabyte: off the event loop
            return await run_in_threadpool(parse_json, raw), None
        except RequestError as exc:
            return None, self.fail(route, started, str(exc), exc.param, exc.status)

    def token_names(self) -> TokenText:
        """Text and bytes of single tokens of the loaded model (for logprobs)."""
        return TokenText(self.host.loaded.tokenizer)

    async def health(self, request: Request):
        host = self.host
        if host.loaded is None:
            return JSONResponse({"status": "error" if host.error else "loading", "error": host.error},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "model": host.loaded.name})

    async def props(self, request: Request):
        err = self.gate(request, "/props", time.time())
        if err:
            return err
        m = self.host.loaded
        return JSONResponse(dict(m.props(), max_queue=self.max_queue, queued=self.door.waiting,
                                 slots=self.host.lock.describe(),
                                 power=self.meters.describe_power(), thermal=self.meters.describe_thermal(),
                                 limits=self.limits.describe(m.max_sequence_length)))

    async def metrics_text(self, request: Request):
        err = self.gate(request, "/metrics", time.time()) if self.door.api_key else None
        return err or Response(self.metrics.text(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request):
        err = self.gate(request, "/v1/models", time.time())
        return err or JSONResponse({"object": "list", "data": [
            {"id": self.host.loaded.name, "object": "model", "created": self.created, "owned_by": "edgekit"}]})

    async def embeddings(self, request: Request):
        route, started = "/v1/embeddings", time.time()
        body, err = await self.prologue(request, route, started, "feature-extraction")
        if err:
            return err
        try:
            req = await run_in_threadpool(parse_embeddings, body, self.host.loaded)
        except RequestError as exc:
            return self.fail(route, started, str(exc), exc.param, exc.status)
        refusal = self.door.admit()
        if refusal:
            return self.refuse(route, started, refusal)
        try:
            def run():
                with self.host.lock:
                    return self.meters.run(uuid.uuid4().hex, lambda: self.host.loaded.model.embed(req.ids))

            vectors, window, heat = await run_in_threadpool(run)
        finally:
            self.door.release()
        usage = self.meters.usage({"prompt_tokens": req.tokens, "completion_tokens": 0}, window, req.tokens, heat)
        self.ledger.finish(route, 200, started, usage)
        return JSONResponse(embeddings_body(vectors, req.encoding_format, self.host.loaded.name, req.tokens))

    def completions(self, chat: bool):
        """The handler of /v1/chat/completions (`chat`) or /v1/completions."""
        route = "/v1/chat/completions" if chat else "/v1/completions"

        async def handler(request: Request):
            started = time.time()
            body, err = await self.prologue(request, route, started, "text-generation")
            if err:
                return err
            try:
                req = await run_in_threadpool(parse_completion, body, self.host.loaded, chat, self.limits)
            except RequestError as exc:
                return self.fail(route, started, str(exc), exc.param, exc.status)
            refusal = self.door.admit()
            if refusal:
                return self.refuse(route, started, refusal)
            session = GenerationSession(self.host.loaded, self.host.lock, req, self.meters, completion_id(chat),
                                        self.request_timeout)
            channel = Channel(asyncio.get_running_loop())

            def on_end(status: int, usage, error) -> None:
                if req.stream:  # logged here: a disconnected client never reads "done"
                    self.ledger.finish(route, status, started, usage, error)
                self.door.release()

            session.start(channel, on_end)
            if req.stream:
                return StreamingResponse(self.stream(session, channel), media_type="text/event-stream")
            return await self.answer(route, started, session, channel)

        return handler

    async def answer(self, route: str, started: float, session: GenerationSession, channel: Channel):
        """The JSON answer of a non-streamed completion, once its session is done."""
        try:
            while True:
                for kind, value in await channel.drain():
                    if kind == "error":
                        return self.fail(route, started, f"generation failed: {value}", status=500)
                    if kind != "done":
                        continue
                    res, text, usage = value
                    if session.timed_out(res):
                        return self.fail(route, started, f"{timeout_message(self.request_timeout)} "
                                         f"({res.completion_tokens} tokens generated)", status=504, usage=usage)
                    self.ledger.finish(route, 200, started, usage)
                    chat, entries = session.request.chat, session.logprobs
                    logprobs = None if entries is None else shaped(entries, self.token_names(), chat)
                    calls = session.tool_calls
                    return JSONResponse(completion_body(self.host.loaded.name, chat, session.cid, text,
                                                        "tool_calls" if calls else res.finish_reason, usage, False,
                                                        logprobs=logprobs, tool_calls=calls))
        finally:
            session.cancel()

    async def stream(self, session: GenerationSession, channel: Channel):
        """The SSE body: one event per token; the events that arrived together go out in one write."""
        writer = ChunkWriter(self.host.loaded.name, session.request.chat, session.cid,
                             timeout_message(self.request_timeout), session.timed_out, self.token_names(),
                             lambda: session.tool_calls)
        try:
            while True:
                out = []
                for kind, value in await channel.drain():
                    out.append(writer.event(kind, value))
                    if kind != "delta":
                        yield "".join(out)
                        return
                if out:
                    yield "".join(out)
        finally:
            session.cancel()  # a disconnected client stops generation at the next token
