"""What keeps `edgekit serve` bounded and accountable: admission (a bounded queue answering 503),
bearer-token auth, Prometheus metrics and the request-log record (written by edgekit.device.jsonl).

Times in seconds unless a name says otherwise. May import: stdlib, prometheus_client, starlette.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class QueueFull(Exception):
    pass


class Admission:
    """At most `running()` running (1 unless serve --parallel) + `max_queue` waiting requests; more get
    QueueFull (the server answers 503 with Retry-After instead of piling work up). Slots are released
    by `release()`."""

    def __init__(self, max_queue: int, running=lambda: 1):
        self.max_queue, self.running = max(0, max_queue), running
        self.pending = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.running() + self.max_queue

    def acquire(self) -> None:
        with self._lock:
            if self.pending >= self.capacity:
                raise QueueFull(f"server busy: {self.pending} requests in flight or queued")
            self.pending += 1

    def release(self) -> None:
        with self._lock:
            self.pending = max(0, self.pending - 1)

    @property
    def waiting(self) -> int:
        return max(0, self.pending - self.running())


class Channel:
    """Items from a worker thread to the event loop, with at most one pending wake-up: a worker
    producing a token every few milliseconds costs the loop one wake-up per batch it has not yet
    drained, not one per token (on a 2-core device each wake-up steals time from the runtime)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wake_pending = False

    def put(self, item) -> None:
        """Called from any thread."""
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def drain(self) -> list:
        """Every item put so far (waits for at least one wake-up); called on the loop."""
        await self._ready.wait()
        with self._lock:
            self._ready.clear()
            self._wake_pending = False
            items = list(self._items)
            self._items.clear()
        return items


def authorized(header: str | None, api_key: str | None) -> bool:
    """True when no key is configured or the Authorization header carries it (constant-time compare)."""
    if not api_key:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), api_key.encode())


class Metrics:
    """Prometheus counters/histograms for one app (own registry, so tests can build many apps)."""

    def __init__(self, admission: Admission):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgekit_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.tokens = Counter("edgekit_tokens", "Tokens processed", ["kind"], registry=r)
        self.prefix_hits = Counter("edgekit_prefix_cache_hits", "Requests whose prompt reused a cached prefix "
                                   "(edgekit_tokens{kind=\"prompt_cached\"}: the tokens reused)", registry=r)
        self.latency = Histogram("edgekit_request_seconds", "Request latency (seconds)", ["route"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.prefill = Histogram("edgekit_prefill_seconds", "Prompt prefill time (seconds)", registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.decode_rate = Histogram("edgekit_decode_tokens_per_second", "Decode speed per request", registry=r,
                                     buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000))
        self.queue = Gauge("edgekit_queue_depth", "Requests waiting for the model", registry=r)
        self.queue.set_function(lambda: admission.waiting)
        self.joules = Counter("edgekit_energy_joules", "Energy of requests (joules), by power source and whether "
                              "measured or estimated", ["source", "measured"], registry=r)
        self.joules_per_token = Histogram("edgekit_joules_per_token", "Energy per token (joules): generated "
                                          "tokens for completions, input tokens for /v1/embeddings",
                                          ["route", "source", "measured"], registry=r,
                                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.watts = Gauge("edgekit_power_watts", "Last power reading (watts)", ["source", "measured"], registry=r)
        self.ran_throttled: Counter | None = None  # with a thermal monitor (watch_thermal)
        self.slots_in_use = Gauge("edgekit_slots_in_use", "Requests generating now (serve --parallel)", registry=r)
        self.slots_total = Gauge("edgekit_slots_total", "Requests that may generate at once", registry=r)
        self.draft_tokens = Counter("edgekit_draft_tokens", "Speculative decoding: tokens the draft proposed "
                                    "(drafted) and the model accepted (accepted)", ["kind"], registry=r)

    def watch_slots(self, slots) -> None:
        """Export an admission.Slots' use as edgekit_slots_in_use / edgekit_slots_total."""
        self.slots_in_use.set_function(lambda: slots.in_use)
        self.slots_total.set_function(lambda: slots.total)

    def watch_power(self, meter) -> None:
        """Export the meter's last reading as edgekit_power_watts."""
        def last() -> float:
            readings = meter.readings
            return readings[-1].watts if readings and readings[-1].watts is not None else float("nan")

        self.watts.labels(meter.source.name, str(meter.source.measured).lower()).set_function(last)
        errors = Gauge("edgekit_power_read_errors", "Failed power-source reads (requests meanwhile have no energy)",
                       registry=self.registry)
        errors.set_function(lambda: meter.errors)

    def watch_thermal(self, monitor) -> None:
        """Export a thermal.ThermalMonitor's latest reading: edgekit_soc_temperature_celsius and
        edgekit_throttled{flag} (1 set, 0 clear, NaN unknown), and count requests that ran throttled."""
        nan = float("nan")

        def celsius() -> float:
            r = monitor.latest()
            return nan if r is None or r.celsius is None else r.celsius

        temp = Gauge("edgekit_soc_temperature_celsius", "SoC/CPU temperature (degrees C) from the thermal zone "
                     "in use", registry=self.registry)
        temp.set_function(celsius)
        flags = Gauge("edgekit_throttled", "Raspberry Pi throttle flags from vcgencmd get_throttled (1 set, "
                      "0 clear, NaN unknown); *-occurred flags are since boot", ["flag"], registry=self.registry)
        for bit, name in monitor.flags.items():
            def state(bit=bit) -> float:
                r = monitor.latest()
                return nan if r is None or r.bits is None else float(r.bits >> bit & 1)

            flags.labels(name).set_function(state)
        self.ran_throttled = Counter("edgekit_requests_throttled", "Requests during which a throttle condition "
                                     "was active (usage.thermal.throttled)", registry=self.registry)

    def observe(self, route: str, status: int, seconds: float, usage: dict | None) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if usage:
            self.tokens.labels("prompt").inc(usage.get("prompt_tokens", 0))
            self.tokens.labels("completion").inc(usage.get("completion_tokens", 0))
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            if cached:
                self.tokens.labels("prompt_cached").inc(cached)
                self.prefix_hits.inc()
            if "prefill_ms" in usage:
                self.prefill.observe(usage["prefill_ms"] / 1000)
            if usage.get("decode_tokens_per_second"):
                self.decode_rate.observe(usage["decode_tokens_per_second"])
            spec = usage.get("speculative")
            if spec:
                self.draft_tokens.labels("drafted").inc(spec["drafted_tokens"])
                self.draft_tokens.labels("accepted").inc(spec["accepted_tokens"])
            if self.ran_throttled is not None and (usage.get("thermal") or {}).get("throttled"):
                self.ran_throttled.inc()
            energy = usage.get("energy")
            if energy:
                labels = (energy["source"], str(energy["measured"]).lower())
                self.joules.labels(*labels).inc(energy["joules"])
                if energy["joules_per_token"] is not None:
                    self.joules_per_token.labels(route, *labels).observe(energy["joules_per_token"])

    def text(self) -> bytes:
        return generate_latest(self.registry)


def log_record(route: str, status: int, started: float, usage: dict | None, error: str | None = None) -> dict:
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + "Z", "start_unix": round(started, 3),
           "route": route, "status": status, "seconds": round(time.time() - started, 4)}
    if usage:
        rec.update({k: usage[k] for k in ("prompt_tokens", "completion_tokens", "prefill_ms",
                                          "decode_tokens_per_second", "speculative", "energy", "thermal") if k in usage})
    if error:
        rec["error"] = error[:200]
    return rec
