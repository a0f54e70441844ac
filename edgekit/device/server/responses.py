"""Response shaping for `edgekit serve`: OpenAI-shaped JSON bodies, server-sent-event chunks of a
streamed completion, `usage` of a generation, and error bodies.

Pure functions of their arguments (the clock aside): testable without a model or an HTTP stack.
Timings in `usage`: prefill_ms (milliseconds) and decode_tokens_per_second; with a speculative
draft, `usage.speculative` counts drafted and accepted tokens and the model's verify passes.
May import: stdlib, starlette, edgekit.device.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.responses import JSONResponse

from edgekit.device.generate import GenerationResult
from edgekit.device.logprobs import TokenText, shaped


def error_response(message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape: {"error": {message, type, param, code}} with `status`."""
    resp = JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)
    resp.headers.update(headers or {})
    return resp


def generation_usage(res: GenerationResult) -> dict:
    """The token counts and timings of one generation, as `usage` reports them."""
    return {
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "total_tokens": res.prompt_tokens + res.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": res.cached_tokens},  # OpenAI's: reused, not run again
        "prefill_ms": round(res.prefill_seconds * 1000, 3),
        "decode_tokens_per_second": round(res.decode_tokens_per_second, 2),
        **({"speculative": {"drafted_tokens": res.drafted_tokens, "accepted_tokens": res.accepted_tokens,
                            "verify_passes": res.verify_passes,
                            "acceptance_rate": None if res.acceptance_rate is None else round(res.acceptance_rate, 4)}}
           if res.verify_passes else {}),
    }


def completion_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def timeout_message(request_timeout: float) -> str:
    return f"request exceeded the server's {request_timeout:g} s timeout"


def completion_body(model: str, chat: bool, cid: str, text: str, finish_reason: str | None, usage: dict | None,
                    delta: bool, first: bool = False, logprobs: dict | None = None,
                    tool_calls: list[dict] | None = None) -> dict:
    """A completion (`delta` False) or one streamed chunk of it, text or chat shaped; the first chat
    chunk carries the assistant role. `logprobs` (edgekit.device.logprobs.shaped) goes in the choice;
    `tool_calls` replace the content (a streamed chunk numbers them with `index`)."""
    now = int(time.time())
    if chat:
        key = "delta" if delta else "message"
        msg = {"content": text} if delta and not first else {"role": "assistant", "content": text}
        if tool_calls:
            msg["content"] = None
            msg["tool_calls"] = [dict(c, index=i) for i, c in enumerate(tool_calls)] if delta else tool_calls
        out = {"id": cid, "object": "chat.completion.chunk" if delta else "chat.completion", "created": now,
               "model": model, "choices": [{"index": 0, key: msg, "finish_reason": finish_reason}]}
    else:
        out = {"id": cid, "object": "text_completion", "created": now, "model": model,
               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}
    if logprobs is not None:
        out["choices"][0]["logprobs"] = logprobs
    if usage is not None:
        out["usage"] = usage
    return out


def sse(body: dict) -> str:
    """One server-sent event carrying `body` as JSON."""
    return "data: " + json.dumps(body) + "\n\n"


SSE_DONE = "data: [DONE]\n\n"


class ChunkWriter:
    """Turns a generation session's events into the SSE text of one streamed completion:
    ("delta", text) -> a chunk, ("done", (result, text, usage)) -> the final chunk with usage and
    [DONE] (or a timeout error event), ("error", exc) -> a server_error event."""

    def __init__(self, model: str, chat: bool, cid: str, timeout_text: str, timed_out, names: TokenText | None = None,
                 tool_calls=lambda: None):
        self.model, self.chat, self.cid = model, chat, cid
        self.tool_calls = tool_calls  # () -> the reply's tool_calls (None: text), known once done
        self.timeout_text, self.timed_out = timeout_text, timed_out
        self.first = True
        self.names, self.offset = names, 0  # token names for logprobs; characters sent so far

    def event(self, kind: str, value) -> str:
        first, self.first = self.first, False
        if kind == "delta" and isinstance(value, tuple):  # (text, the logprobs of its tokens)
            text, entries = value
            logprobs = shaped(entries, self.names, self.chat, self.offset)
            self.offset += len(text)
            return sse(completion_body(self.model, self.chat, self.cid, text, None, None, True, first, logprobs))
        if kind == "delta":
            return sse(completion_body(self.model, self.chat, self.cid, value, None, None, True, first))
        if kind == "done" and self.timed_out(value[0]):
            return sse({"error": {"message": self.timeout_text, "type": "timeout"}})
        if kind == "done":  # text still held (a possible tool call), then the end
            calls, held, out = self.tool_calls(), value[1], ""
            if calls or held:
                out = sse(completion_body(self.model, self.chat, self.cid, held, None, None, True, first, None, calls))
                first = False
            reason = "tool_calls" if calls else value[0].finish_reason
            end = completion_body(self.model, self.chat, self.cid, "", reason, value[2], True, first)
            return out + sse(end) + SSE_DONE
        return sse({"error": {"message": str(value), "type": "server_error"}})
