"""Start `edgekit serve` for a benchmark and wait until /health answers 200 (shared by bench/*.py).

`ServeProcess` owns the server: the free port it listens on, its base URL, the seconds it took to
become healthy, and its stderr (kept in a temporary file, never a pipe nobody reads, so a chatty
server cannot block on a full pipe during a long run). Use it as a context manager; it stops the
server on the way out. `sse_chunks` reads a streamed response (every bench script's one SSE loop),
`stream_chat` is one streamed chat request on it. Times are seconds. May import: stdlib.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class ServerFailed(RuntimeError):
    """The server exited, or did not become healthy in time; the message ends with its stderr tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(base: str) -> int:
    """HTTP status of GET base/health (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class ServeProcess:
    """`python -m edgekit serve BUNDLE --port P *options`, started and waited for."""

    def __init__(self, bundle: Path, *options: str, show_output: bool = False, timeout_seconds: float = 180.0):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._stderr = tempfile.TemporaryFile(mode="w+")
        out = None if show_output else subprocess.DEVNULL
        err = None if show_output else self._stderr
        cmd = [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", str(self.port), *map(str, options)]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        try:
            self._wait_healthy(started, timeout_seconds)
        except ServerFailed:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_healthy(self, started: float, timeout_seconds: float) -> None:
        while health_status(self.base) != 200:
            if self.proc.poll() is not None:
                raise ServerFailed(f"server exited with status {self.proc.returncode}{self._tail()}")
            if time.perf_counter() - started > timeout_seconds:
                raise ServerFailed(f"server not healthy within {timeout_seconds:.0f} s{self._tail()}")
            time.sleep(0.02)

    def _tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-2000:]
        return f": {text}" if text else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def sse_chunks(base: str, path: str, body: dict, timeout_seconds: float = 600.0) -> Iterator[tuple[float, dict]]:
    """POST `body` with "stream": true to base + path and yield (arrival time, chunk) for each `data: {...}`
    event as it arrives: the time (time.perf_counter(), seconds) is taken when its line is read, before
    it is parsed; the chunk is the parsed JSON. The request is sent on the first iteration."""
    data = json.dumps(dict(body, stream=True)).encode()
    req = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_seconds) as resp:
        for raw in resp:
            arrived = time.perf_counter()
            line = raw.decode().strip()
            if line.startswith("data: {"):
                yield arrived, json.loads(line[6:])


def stream_chat(base: str, messages: list[dict], max_tokens: int, timeout_seconds: float = 600.0) -> dict:
    """One streamed greedy chat completion: {ttft_seconds (sending to the first chunk with text, as the
    client sees it), seconds (the whole request), text, usage (the final chunk's)}."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    t0 = time.perf_counter()
    first, parts, usage = None, [], {}
    for arrived, chunk in sse_chunks(base, "/v1/chat/completions", body, timeout_seconds):
        text = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
        if text and first is None:
            first = arrived - t0
        parts.append(text or "")
        usage = chunk.get("usage") or usage
    return {"ttft_seconds": first, "seconds": time.perf_counter() - t0, "text": "".join(parts), "usage": usage}
