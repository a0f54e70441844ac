"""Filter what native code writes to stderr (file descriptor 2) while a block of Python runs.

Native libraries (LiteRT's C++ core) log to file descriptor 2 directly, below Python's `sys.stderr`
and `logging`, and some offer no switch for it. `filtered_stderr` points descriptor 2 at an unnamed
temporary file for the duration of a `with` block; when the block ends, descriptor 2 is the real
stderr again and every line written meanwhile is passed on to it, in order, except the lines one of
the given patterns matches (from the line's start, `re.match`). A message's later lines (those the
`continued` pattern matches) share the fate of the line before them. Everything else (errors,
unknown warnings, a partial last line, Python's own stderr writes from any thread) still reaches the
user, only later: at the block's end. A file, not a pipe: native code that holds the GIL while it
logs could fill a pipe that no Python thread can drain. If the process dies inside the block, what
the block wrote is lost with the file. One filter at a time per process: a `with` entered while one
is active (nested, or in another thread) filters nothing itself (its lines pass through the active one).

No units. May import: stdlib only.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

_ONE_AT_A_TIME = threading.Lock()


class LineFilter:
    """Decides line by line what passes; counts what it dropped (`dropped`)."""

    def __init__(self, drop: Iterable[str], continued: str | None = None):
        self.drop = [re.compile(p) for p in drop]
        self.continued = re.compile(continued) if continued else None
        self.dropping = False  # the verdict on the last line that was not a continuation
        self.dropped = 0

    def passes(self, line: bytes) -> bool:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if self.continued is None or not self.continued.match(text):
            self.dropping = any(p.match(text) for p in self.drop)
        self.dropped += self.dropping
        return not self.dropping


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _flush_python() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or detached: nothing buffered to lose
            pass


def _pass_on(captured, fd: int, keep: LineFilter) -> None:
    captured.seek(0)
    for line in captured:
        if keep.passes(line):
            try:
                _write_all(fd, line)
            except OSError:  # the real stderr is gone: nothing left to tell
                return


@contextmanager
def filtered_stderr(drop: Iterable[str], continued: str | None = None, fd: int = 2) -> Iterator[LineFilter | None]:
    """Inside the block, lines written to `fd` that a `drop` pattern matches are not shown. Yields the
    LineFilter (None when another filter is active or `fd` cannot be duplicated: nothing filtered)."""
    if not _ONE_AT_A_TIME.acquire(blocking=False):
        yield None
        return
    try:
        _flush_python()
        captured = real = None
        try:
            captured = tempfile.TemporaryFile()  # unlinked at once: nothing is left behind
            real = os.dup(fd)
        except OSError:  # no room for the file, or no stderr: nothing filtered
            if captured is not None:
                captured.close()
            yield None
            return
        keep = LineFilter(drop, continued)
        try:
            os.dup2(captured.fileno(), fd)
            try:
                yield keep
            finally:
                _flush_python()
                os.dup2(real, fd)
                _pass_on(captured, fd, keep)
        finally:
            os.close(real)
            captured.close()
    finally:
        _ONE_AT_A_TIME.release()
