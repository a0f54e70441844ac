"""Running Raspberry Pi's `vcgencmd SUBCOMMAND` (PMIC readings, throttle flags) as an injectable callable.

Seconds: `timeout_seconds`. The executable is looked up on PATH before it is started, so a missing
command is FileNotFoundError everywhere (under qemu-user, Python 3.13's posix_spawn reports a missing
program as exit status 127 instead). May import: stdlib.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable


def runner(subcommand: str, executable: str = "vcgencmd", timeout_seconds: float = 2.0, *,
           not_found: str = "vcgencmd not found (Raspberry Pi OS only)", failure_hint: str = "") -> Callable[[], str]:
    """A callable running `<executable> <subcommand>` and returning its stdout: FileNotFoundError(`not_found`)
    when the command is missing, TimeoutError past `timeout_seconds`, OSError (its stderr, then
    `failure_hint`) when it exits non-zero."""

    def run() -> str:
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(not_found)
        try:
            proc = subprocess.run([path, subcommand], capture_output=True, text=True, timeout=timeout_seconds)
        except FileNotFoundError:
            raise FileNotFoundError(not_found) from None
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{executable} {subcommand} did not answer within {timeout_seconds:g} s") from None
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip())[:300]
            raise OSError(f"{executable} {subcommand} failed (exit {proc.returncode}): {said or 'no output'}"
                          + (f" ({failure_hint})" if failure_hint else ""))
        return proc.stdout

    return run
