"""A generation session of `edgekit serve`: one completion request run on the model in its own
thread: prompt tokens -> streamed text pieces (stop strings held back by edgekit.device.generate),
cancelled at the next token when the client goes away or the request's deadline passes.

Events go to a serving.Channel read by the event loop: ("delta", text) while streaming (("delta",
(text, [TokenLogprob...])) when the request asked for logprobs: the tokens behind that text),
("done", (GenerationResult, text, usage)) or ("error", exception) at the end.
Deadlines in seconds on time.monotonic. May import: stdlib, edgekit.device.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

from edgekit.device.batching import sequence
from edgekit.device.constrain import Constraint, parse_tool_call
from edgekit.device.generate import GenerationResult, generate
from edgekit.device.logprobs import LogprobRecorder, TokenLogprob
from edgekit.device.server.metering import Meters
from edgekit.device.server.parse import CompletionRequest
from edgekit.device.server.responses import generation_usage


class GenerationSession:
    """Runs `request` on `loaded` (taking a slot of `lock`, an admission.Slots: one slot, requests take
    turns; several with serve --parallel, decoding together in one batcher sequence) under `meters`; stops at
    the next token once `cancel()` was called or `timeout_seconds` have passed. `on_end(status,
    usage, error)` runs last in the worker thread, whatever happened: status 200, 499 (cancelled
    by the client), 504 (deadline) or 500 (the model failed)."""

    def __init__(self, loaded, lock: threading.Lock, request: CompletionRequest, meters: Meters, cid: str,
                 timeout_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.loaded, self.lock, self.request, self.meters, self.cid = loaded, lock, request, meters, cid
        self.clock = clock
        self.deadline = clock() + timeout_seconds
        self.cancelled = threading.Event()
        # the logprobs of the tokens whose text was delivered (None: not asked for)
        self.logprobs: list[TokenLogprob] | None = None if request.logprobs is None else []
        self.tool_calls: list[dict] | None = None  # OpenAI tool_calls, when the reply is a call

    def cancel(self) -> None:
        """Stop at the next token (a client that went away)."""
        self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.clock() > self.deadline

    def timed_out(self, res: GenerationResult) -> bool:
        """True when `res` was cut short by the deadline, not by the client."""
        return res.finish_reason == "cancelled" and not self.cancelled.is_set()

    def status(self, res: GenerationResult) -> int:
        return 504 if self.timed_out(res) else 499 if res.finish_reason == "cancelled" else 200

    def start(self, channel, on_end: Callable[[int, dict | None, str | None], None]) -> None:
        """Run in a new thread, sending events to `channel`."""
        threading.Thread(target=self.run, args=(channel, on_end), name=f"gen-{self.cid}", daemon=True).start()

    def run(self, channel, on_end) -> None:
        """The worker: runs to completion (cancel is cooperative), so the lock is always released."""
        status, usage, error = 500, None, None
        parts: list[str] = []
        try:
            with self.lock, sequence(self.loaded.model):
                res, window, heat = self.meters.run(self.cid, lambda: self._generate(channel, parts))
            self.tool_calls = self._calls(res, "".join(parts))
            usage = self.meters.usage(generation_usage(res), window, res.completion_tokens, heat)
            channel.put(("done", (res, "".join(parts), usage)))
            status = self.status(res)
        except Exception as exc:  # reported to the client; the server keeps running
            status, usage, error = 500, None, str(exc)
            channel.put(("error", exc))
        finally:
            on_end(status, usage, error)

    def _generate(self, channel, parts: list[str]) -> GenerationResult:
        req, m = self.request, self.loaded
        recorder = None if req.logprobs is None else LogprobRecorder(req.logprobs)
        grammar = req.structure.grammar
        gen = generate(m.model, m.tokenizer, req.prompt_ids, req.max_tokens, req.sampler(), req.stop,
                       should_stop=self.should_stop, recorder=recorder,
                       constraint=None if grammar is None else Constraint(grammar, m.tokenizer),
                       prefix_cache=getattr(m, "prefix_cache", None), speculation=m.speculation)
        # streamed text that may still turn out to be a tool call (nothing but a leading "{" yet) is held
        may_call = req.stream and req.structure.tool_choice != "none"
        while True:
            try:
                piece = next(gen)
            except StopIteration as stop:
                return stop.value
            taken = None if recorder is None else recorder.take()  # the logprobs of this piece's tokens
            if taken is not None:
                self.logprobs.extend(taken)
            may_call = may_call and "".join(parts + [piece]).lstrip()[:1] in ("", "{")  # once False, stays
            if req.stream and not may_call:
                if parts:  # text held back while it could have been a call
                    piece, parts[:] = "".join(parts) + piece, []
                channel.put(("delta", piece if taken is None else (piece, taken)))
            else:  # nothing to send before the end: no per-token wake-ups
                parts.append(piece)

    def _calls(self, res: GenerationResult, text: str) -> list[dict] | None:
        """The reply as OpenAI tool_calls when it is one call of a declared tool (an "auto" reply is
        checked against the call grammar, arguments included), else None."""
        s = self.request.structure
        if s.tool_choice == "none" or res.finish_reason != "stop" or not text.lstrip().startswith("{"):
            return None
        if s.tool_choice == "auto" and not Constraint(s.tool_grammar, self.loaded.tokenizer).accepts(text.strip()):
            return None
        call = parse_tool_call(text, list(s.tools))
        return None if call is None else [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                                           "function": call}]
