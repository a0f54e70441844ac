"""Continuous batching for `edgekit serve --parallel N`: several requests decode together.

BatchingModel wraps a runner that has `forward_batch(token_ids, caches)` (edgekit.device.onnx_model
with a batch axis). Request threads keep calling `forward(ids, cache, last_only)` exactly as the
generation loop does (edgekit.device.generate: prefix cache, constraints, sampling, logprobs and
streaming stay per request); one worker thread owns the model and runs the calls in arrival order:
a prompt (several tokens) runs alone, single-token decode calls are merged into one batched step.
The worker waits at most `window_seconds` for the decode calls of every sequence known to be
decoding (`sequence()` registers a request), so N requests in step take one model pass per token.
Everything else the runner offers (new_cache, cache_copy, rewind, ...) passes through.

A failing row (its cache would outgrow the model) fails alone; a failing batched pass fails every
row in it; no caller is left waiting. Times in seconds. May import: stdlib, numpy, edgekit.device.
"""

from __future__ import annotations

import contextlib
import threading
import time


class _Call:
    """One forward() waiting for the worker."""

    def __init__(self, token_ids: list[int], cache, last_only: bool):
        self.token_ids, self.cache, self.last_only = token_ids, cache, last_only
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None

    @property
    def decode(self) -> bool:
        return len(self.token_ids) == 1


def refusal(model, speculation=None) -> str | None:
    """None when `model` can decode several requests at once, else why not (for /props)."""
    if speculation is not None:
        return "speculative decoding: a request with the draft model takes the whole model"
    if not hasattr(model, "forward_batch"):
        return f"the {type(model).__name__} runner has no batch axis (ONNX bundles have one)"
    return getattr(model, "batch_refusal", None)


class BatchingModel:
    """`model` shared by up to `max_batch` requests decoding at once (module doc)."""

    def __init__(self, model, max_batch: int, window_seconds: float = 0.005, clock=time.monotonic):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.max_batch, self.window_seconds, self.clock = model, max_batch, window_seconds, clock
        self.steps = 0  # model passes run by the worker
        self.batched_rows = 0  # decode rows that ran in a pass with others
        self._queue: list[_Call] = []
        self._cond = threading.Condition()
        self._decoding = 0  # registered sequences past their first forward
        self._local = threading.local()
        threading.Thread(target=self._serve, name="edgekit-batch", daemon=True).start()

    def __getattr__(self, name):  # new_cache, cache_copy, rewind, max_sequence_length, accelerator ...
        return getattr(self.model, name)

    @contextlib.contextmanager
    def sequence(self):
        """Mark the calling thread as one request: after its first forward the worker expects its
        decode calls and waits (up to window_seconds) to run them with the others."""
        self._local.state = "new"
        try:
            yield self
        finally:
            if getattr(self._local, "state", None) == "decoding":
                with self._cond:
                    self._decoding -= 1
                    self._cond.notify_all()
            self._local.state = None

    def forward(self, token_ids: list[int], cache, last_only: bool = False):
        call = _Call(list(token_ids), cache, last_only)
        with self._cond:
            self._queue.append(call)
            self._cond.notify_all()
        call.done.wait()
        if getattr(self._local, "state", None) == "new":
            self._local.state = "decoding"
            with self._cond:
                self._decoding += 1
        if call.error is not None:
            raise call.error
        return call.result

    def _serve(self) -> None:
        while True:
            calls = self._next_calls()
            try:
                self._run(calls)
            except BaseException as exc:  # never leave a caller waiting, never stop the worker
                for c in calls:
                    c.error = c.error or exc
            finally:
                for c in calls:
                    c.done.set()

    def _next_calls(self) -> list[_Call]:
        """The next pass: the oldest call if it is a prompt, else the queued decode calls, once every
        decoding sequence has sent one (or max_batch are in, or window_seconds have passed)."""
        with self._cond:
            while not self._queue:
                self._cond.wait()
            if not self._queue[0].decode:
                return [self._queue.pop(0)]
            deadline = self.clock() + self.window_seconds
            while True:
                rows = [c for c in self._queue if c.decode]
                left = deadline - self.clock()
                if len(rows) >= min(self.max_batch, max(self._decoding, 1)) or left <= 0:
                    break
                self._cond.wait(left)
            rows = rows[: self.max_batch]
            self._queue = [c for c in self._queue if c not in rows]
            return rows

    def _run(self, calls: list[_Call]) -> None:
        """Run one pass (a prompt, one decode row, or a batched decode step) and fill in the results."""
        fits = [c for c in calls if c.cache.length + 1 <= self.model.max_sequence_length]
        alone = [c for c in calls if c not in fits] if len(fits) > 1 else calls
        for c in alone:  # a prompt, a lone row, or a row that no longer fits: its own error
            self.steps += 1
            try:
                c.result = self.model.forward(c.token_ids, c.cache, c.last_only)
            except Exception as exc:
                c.error = exc
        if len(fits) > 1:
            fits.sort(key=lambda c: id(c.cache))  # a stable order: the runner reuses the last step's arrays
            self.steps += 1
            self.batched_rows += len(fits)
            logits = self.model.forward_batch([c.token_ids[0] for c in fits], [c.cache for c in fits])
            for i, c in enumerate(fits):
                c.result = logits[i:i + 1]

    def describe(self) -> dict:
        """/props "parallel" details: passes run and the mean rows per batched pass."""
        return {"window_seconds": self.window_seconds, "passes": self.steps,
                "batched_rows": self.batched_rows}


def sequence(model):
    """The context one request generates in: BatchingModel.sequence(), or nothing for a plain runner."""
    enter = getattr(model, "sequence", None)
    return enter() if callable(enter) else contextlib.nullcontext()


def enable_parallel(loaded, requested: int) -> None:
    """Give `loaded` (runtime.LoadedModel) `slots` (requests generating at once) and `parallel` (for
    /props); with more than one slot its model becomes a BatchingModel."""
    why = None if requested <= 1 else refusal(loaded.model, getattr(loaded, "speculation", None))
    if loaded.task != "text-generation" and requested > 1:
        why = f"a {loaded.task} model serves one request at a time"
    loaded.slots = 1 if why is not None or requested <= 1 else requested
    if loaded.slots > 1:
        loaded.model = BatchingModel(loaded.model, loaded.slots)
    loaded.parallel = {"requested": requested, "slots": loaded.slots, "reason": why}
