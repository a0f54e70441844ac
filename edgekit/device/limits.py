"""What one request to `edgekit serve` may ask for, and the ASGI middleware that caps request bodies.

A server on a LAN must not let one client buy unbounded memory or CPU. `Limits` states every cap
(bytes, characters, tokens, counts) in one place; `/props` shows them (`Limits.describe`) and the
request parser enforces them. `BodyLimit` wraps the whole app and refuses an oversized body before
it is buffered: a declared `Content-Length` over the cap is answered 413 without reading a byte, and a
chunked (or under-declared) body is counted as it arrives and abandoned at the cap, also with 413.
Sizes are bytes (body) and characters (text).
May import: stdlib, edgekit.core, edgekit.device, starlette.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class Limits:
    """Caps on one request. Prompt tokens are capped by the model's context (`max_sequence_length`)."""

    max_body_bytes: int = 1 << 20
    max_prompt_chars_per_context_token: int = 32  # a prompt this long cannot fit the context: refused untokenized
    max_stop_strings: int = 4
    max_stop_chars: int = 64  # also bounds how much streamed text is held back for a partial stop string
    max_messages: int = 256
    max_n: int = 1

    def max_prompt_chars(self, context_tokens: int) -> int:
        return self.max_prompt_chars_per_context_token * context_tokens

    def describe(self, context_tokens: int) -> dict:
        """The limits as /props states them (for a model with `context_tokens` of context)."""
        return dict(asdict(self), max_prompt_tokens=context_tokens - 1,
                    max_prompt_chars=self.max_prompt_chars(context_tokens))


DEFAULT_LIMITS = Limits()


class BodyTooLarge(Exception):
    """Raised from the wrapped `receive` once a body passes the cap; BodyLimit turns it into 413."""


def _declared_length(scope) -> int | None:
    """The Content-Length header as an int; None when absent or unreadable (then the bytes are counted)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get `reject(path, message)` (an ASGI response, 413).

    `reject` is also where the server logs and counts the refusal. A response the app started before
    the cap was passed is left alone (the body is simply not read further)."""

    def __init__(self, app, max_bytes: int, reject: Callable[[str, str], object]):
        self.app, self.max_bytes, self.reject = app, max_bytes, reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body exceeds {self.max_bytes} bytes"
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self.reject(scope["path"], message)(scope, receive, send)
        state = {"bytes": 0, "over": False, "started": False}

        async def counted_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                state["bytes"] += len(msg.get("body", b""))
                if state["bytes"] > self.max_bytes:
                    state["over"] = True
                    raise BodyTooLarge(message)
            return msg

        async def guarded_send(msg):
            if state["over"] and not state["started"]:
                return  # the app's own error response to the aborted read: replaced by the 413 below
            if msg["type"] == "http.response.start":
                state["started"] = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        if state["over"] and not state["started"]:
            await self.reject(scope["path"], message)(scope, receive, send)
