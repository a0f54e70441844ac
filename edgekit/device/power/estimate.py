"""The `estimate` power source: watts guessed from CPU utilisation and a board power profile.

watts = idle_watts + (full_load_watts - idle_watts) x cpu_fraction, where cpu_fraction is the
share of all CPU cores busy (0..1, clamped) and the two wattages come from a board profile
(boards/*.toml, edgekit.core.boards): whole-board watts (W) at the power input, approximate
published figures. This is never a measurement: `measured` is always False and `scope` says
so, naming the profile and where its figures come from. It has no energy counter; the meter
integrates its watts over time into joules (J).

May import: stdlib, psutil, edgekit.core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgekit.core.boards import (FALLBACK_BOARD, Board, detect_board, load_board, read_device_compatible,
                                 read_device_model)
from edgekit.device.power.base import PowerSource, Sample, SourceUnavailable


def _psutil_cpu_fraction(min_seconds: float = 0.05) -> Callable[[], float]:
    """System-wide CPU utilisation since the previous call (psutil). Calls closer than
    `min_seconds` to the previous one (a request's begin/end reading right after a sampler
    reading) return the previous value: psutil's figure over a few milliseconds is noise (0.0
    within one clock tick)."""
    import time

    import psutil

    psutil.cpu_percent(interval=None)  # the first call only starts the measurement window
    last = {"at": time.monotonic(), "fraction": 0.0}

    def fraction() -> float:
        now = time.monotonic()
        if now - last["at"] >= min_seconds:
            last["at"], last["fraction"] = now, psutil.cpu_percent(interval=None) / 100.0
        return last["fraction"]

    return fraction


class EstimateSource(PowerSource):
    """Board idle/full-load watts scaled by CPU utilisation; `cpu_fraction` returns 0..1
    (default: psutil's system-wide CPU percent since the previous call / 100)."""

    name = "estimate"
    measured = False

    def __init__(self, board: Board, cpu_fraction: Callable[[], float] | None = None, *, how: str = ""):
        self.board = board
        self._cpu_fraction = cpu_fraction if cpu_fraction is not None else _psutil_cpu_fraction()
        self.scope = (
            f"estimate: CPU utilisation x {board.name} profile ({board.idle_watts:g} W idle, "
            f"{board.full_load_watts:g} W full load; {board.source}) - not a measurement"
        )
        self.detail = f"board profile {board.name}: {board.description}" + (f"; {how}" if how else "")

    def read(self) -> Sample:
        fraction = min(1.0, max(0.0, float(self._cpu_fraction())))
        b = self.board
        return Sample(watts=b.idle_watts + (b.full_load_watts - b.idle_watts) * fraction)


def _boards_in(directory: str | Path) -> list[Board]:
    return [load_board(str(p)) for p in sorted(Path(directory).glob("*.toml"))]


X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def estimate_for_this_machine(
    boards_dir_root: str | Path | None = None,
    model_text: str | None = None,
    *,
    device_tree_root: str | Path = "/proc/device-tree",
    cpu_fraction: Callable[[], float] | None = None,
    arch: str | None = None,
) -> EstimateSource:
    """An EstimateSource for the board this runs on: the profile whose match.model_contains occurs in
    the device-tree model (or whose match.compatible names the board or SoC), else, on an x86 machine
    without a device tree, the generic-x86 profile. Any other machine (an ARM board no profile
    matches) raises SourceUnavailable saying so: it never borrows the x86 figures.

    boards_dir_root: a directory of board TOML files to choose from instead of the usual search
    path (EDGEKIT_BOARDS_PATH, boards/, the installed copies). model_text: the device-tree model
    text; None reads it from `device_tree_root`/model. arch: the CPU architecture
    (default platform.machine()).
    """
    import platform

    boards = None if boards_dir_root is None else _boards_in(boards_dir_root)
    if model_text is None:
        model_text = read_device_model(device_tree_root)
    compatible = read_device_compatible(device_tree_root)
    board = detect_board(model_text, boards, compatible)
    clean = (model_text or "").replace("\x00", "").strip()
    if board is not None:
        how = f"detected from device-tree model {clean!r}" if clean and any(
            n in clean for n in board.model_contains) else f"detected from device-tree compatible {list(compatible)}"
        return EstimateSource(board, cpu_fraction, how=how)
    arch = (arch or platform.machine() or "unknown").lower()
    if arch in X86 and not clean:
        fallback = next((b for b in boards or () if b.name == FALLBACK_BOARD), None) or load_board(FALLBACK_BOARD)
        return EstimateSource(fallback, cpu_fraction, how=f"no board detected on {arch}; {FALLBACK_BOARD} profile")
    seen = f"device-tree model {clean!r}" if clean else "no device-tree model"
    raise SourceUnavailable(
        f"unrecognised {arch} board ({seen}{', compatible ' + ', '.join(compatible) if compatible else ''}): no "
        "board profile matches, so there is no figure to estimate from; pass --board NAME (edgekit power "
        "lists the sources; profiles are boards/*.toml) or add a profile with match.model_contains")
