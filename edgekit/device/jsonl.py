"""A crash-safe, append-only JSONL writer with size-based rotation: the request log of `edgekit serve`
and the power log of a power session write through it.

Sizes in bytes. May import: stdlib.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class JsonlLog:
    """Append-only JSONL: each record is one os.write() of a whole line to a file opened with
    O_APPEND, so a crash (even kill -9) can lose at most the line being written and never garbles
    earlier ones; `fsync=True` also survives power loss, at a cost per line. With `max_bytes`, a
    line that would take the file past it first rotates it (path -> path.1 -> ... path.N, renames
    are atomic), keeping `backups` old files."""

    def __init__(self, path: Path | None, fsync: bool = False, max_bytes: int | None = None, backups: int = 3):
        self.path = path
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self._fd = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _rotate(self) -> None:
        fd, self._fd = self._fd, None
        os.close(fd)
        try:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        finally:
            self._open()  # a failed rename (say, the log was deleted) still leaves a valid file to append to

    def write(self, record: dict) -> None:
        if self._fd is None:
            return
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None:
                return
            if self.max_bytes and 0 < os.fstat(self._fd).st_size and \
                    os.fstat(self._fd).st_size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
