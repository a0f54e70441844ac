"""Admission for `edgekit serve`: who may send a request now. Bearer-token auth (401), a model
still loading or failed to load (503 with Retry-After), a route the model's task does not serve
(400), and the bounded queue (at most `slots` running, 1 unless serve --parallel, + `max_queue`
waiting; more get 503 with Retry-After). Decisions are Refusal values, not HTTP responses: testable without a server.

May import: stdlib, edgekit.device.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgekit.device.serving import Admission, QueueFull, authorized

RETRY_AFTER = {"Retry-After": "1"}


@dataclass(frozen=True)
class Refusal:
    """Why a request may not proceed: the client's message, HTTP status, field and headers."""

    message: str
    status: int
    param: str | None = None
    headers: dict = field(default_factory=dict)


class Slots:
    """A counting lock: at most `total` holders at once (`with slots:` waits for one); `in_use` now."""

    def __init__(self, total: int = 1):
        self.total, self.in_use = total, 0
        self._cond = threading.Condition()

    def resize(self, total: int) -> None:
        with self._cond:
            self.total = max(1, total)
            self._cond.notify_all()

    def __enter__(self):
        with self._cond:
            self._cond.wait_for(lambda: self.in_use < self.total)
            self.in_use += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self.in_use -= 1
            self._cond.notify()

    def describe(self) -> dict:
        return {"total": self.total, "in_use": self.in_use}


class ModelHost:
    """The one model the server holds (`loaded`, or None while loading / after a failed load with
    `error` set) and its `lock`, the Slots requests take to run on it: 1 (they take turns) unless the
    loaded model has more (`loaded.slots`, serve --parallel: edgekit.device.batching)."""

    def __init__(self, loaded=None):
        self.loaded = loaded
        self.error: str | None = None
        self.lock = Slots(getattr(loaded, "slots", 1))

    def load_in_background(self, loader) -> None:
        """Run `loader()` in a thread; its result becomes `loaded`, a failure becomes `error`."""
        def load():
            try:
                loaded = loader()
                self.lock.resize(getattr(loaded, "slots", 1))
                self.loaded = loaded
            except Exception as exc:  # reported by /health; the process keeps answering
                self.error = f"model failed to load: {exc}"

        threading.Thread(target=load, name="edgekit-load", daemon=True).start()


class Door:
    """The checks every request passes before any model work, and its queue slot."""

    def __init__(self, host: ModelHost, api_key: str | None, max_queue: int):
        self.host, self.api_key = host, api_key
        self.queue = Admission(max_queue, lambda: host.lock.total)

    def check(self, authorization: str | None) -> Refusal | None:
        """Auth, then readiness: None when the request may go on."""
        if not authorized(authorization, self.api_key):
            return Refusal("missing or wrong API key (Authorization: Bearer ...)", 401)
        if self.host.loaded is None:
            return Refusal(self.host.error or "model is loading", 503, headers=dict(RETRY_AFTER))
        return None

    def check_task(self, route: str, task: str) -> Refusal | None:
        """None when the loaded model serves `task`, else the 400 naming the route that fits it."""
        m = self.host.loaded
        if m.task == task:
            return None
        other = "/v1/embeddings" if m.task == "feature-extraction" else "/v1/completions"
        return Refusal(f"model '{m.name}' is a {m.task} model: {route} is not available; use {other}", 400, "model")

    def admit(self) -> Refusal | None:
        """Take a queue slot (None: hand it back with `release()` when done), or the 503 when full."""
        try:
            self.queue.acquire()
        except QueueFull as exc:
            return Refusal(str(exc), 503, headers=dict(RETRY_AFTER))
        return None

    def release(self) -> None:
        self.queue.release()

    @property
    def waiting(self) -> int:
        return self.queue.waiting
