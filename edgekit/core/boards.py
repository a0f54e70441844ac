"""Board power profiles: one TOML file per board (boards/*.toml). Stdlib only.

A profile gives typical whole-board power in watts (W) at the board's power input: `idle_watts`
with nothing running, `full_load_watts` with every CPU core busy, and `source`, where those
figures come from. They are approximate published figures, not measurements of this machine;
the `estimate` power source scales between them by CPU utilisation and always says so.
`match.model_contains` and `match.compatible` let `detect_board` recognise the board from
/proc/device-tree/model, or else from the SoC named in /proc/device-tree/compatible.
`[performance]` (optional) gives the streaming-copy memory bandwidth in bytes/s, the CPU core count,
the cores' int8 peak multiply-accumulates per second (MAC/s) and one core's speed relative to the
reference machine, each with its source, for predicted speed (edgekit/device/speed.py).
Adding a board is adding a TOML file (or a directory named in EDGEKIT_BOARDS_PATH).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core import tomlfiles
from edgekit.core.schema import Field, Table

FALLBACK_BOARD = "generic-x86"


def _check_board(b: dict, err) -> None:
    if b["full_load_watts"] <= b["idle_watts"]:
        raise err(
            "full_load_watts",
            f"got {b['full_load_watts']!r}; must be greater than idle_watts ({b['idle_watts']!r})",
        )


SCHEMA = Table(
    {
        "name": Field(str, doc="must equal the file name without .toml"),
        "description": Field(str, doc="one line: the board and where its power is counted"),
        "idle_watts": Field(float, minimum=0.0, doc="typical whole-board power at idle, W"),
        "full_load_watts": Field(float, minimum=0.0, doc="typical whole-board power, all CPU cores busy, W"),
        "source": Field(str, doc="where the figures come from (URL or publication); say 'approximate'"),
        "performance": Table(
            {
                "memory_bandwidth_bytes_per_second": Field(
                    float, default=0.0, minimum=0.0,
                    doc="streaming-copy memory bandwidth (read + write), bytes/s; 0 = unknown"),
                "cpu_cores": Field(int, default=0, minimum=0, doc="CPU cores; 0 = unknown"),
                "int8_macs_per_second": Field(
                    float, default=0.0, minimum=0.0,
                    doc="all cores' int8 peak multiply-accumulates per second (cores x clock x MACs/cycle); 0 = unknown"),
                "host_speed_vs_reference": Field(
                    float, default=0.0, minimum=0.0,
                    doc="one core's speed relative to the reference machine where host work was measured; 0 = unknown"),
                "source": Field(str, default="", doc="where these come from; say which are derived or assumed"),
            },
            doc="figures for predicted speed (coral verdict, CPU decode)",
        ),
        "match": Table(
            {
                "model_contains": Field(
                    str, default=(), list_of=True,
                    doc="substrings of /proc/device-tree/model that identify this board",
                ),
                "compatible": Field(
                    str, default=(), list_of=True,
                    doc="entries of /proc/device-tree/compatible (e.g. the SoC, 'brcm,bcm2712') that identify "
                        "this board when its model string is not recognised",
                ),
            },
            doc="auto-detection",
        ),
    },
    check=_check_board,
)


@dataclass(frozen=True)
class Board:
    """A validated board power profile. Watts are whole-board, typical and approximate."""

    name: str
    description: str
    idle_watts: float
    full_load_watts: float
    source: str
    model_contains: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    path: Path | None = None
    memory_bandwidth_bytes_per_second: float = 0.0
    cpu_cores: int = 0
    host_speed_vs_reference: float = 0.0
    performance_source: str = ""
    int8_macs_per_second: float = 0.0


def load_board(name_or_path: str) -> Board:
    """Load and validate a board profile by name (e.g. "rpi5") or by path to a .toml file."""
    path, data = tomlfiles.load_validated("boards", name_or_path, "board", SCHEMA)
    return Board(
        name=data["name"],
        description=data["description"],
        idle_watts=data["idle_watts"],
        full_load_watts=data["full_load_watts"],
        source=data["source"],
        model_contains=tuple(data["match"]["model_contains"]),
        compatible=tuple(data["match"]["compatible"]),
        path=path,
        memory_bandwidth_bytes_per_second=data["performance"]["memory_bandwidth_bytes_per_second"],
        cpu_cores=data["performance"]["cpu_cores"],
        host_speed_vs_reference=data["performance"]["host_speed_vs_reference"],
        performance_source=data["performance"]["source"],
        int8_macs_per_second=data["performance"]["int8_macs_per_second"],
    )


def list_boards() -> list[Board]:
    """Every board profile found, validated, sorted by name."""
    return [load_board(str(p)) for _, p in sorted(tomlfiles.available("boards").items())]


def detect_board(model_text: str | None, boards: list[Board] | None = None,
                 compatible: tuple[str, ...] | list[str] = ()) -> Board | None:
    """The board whose `match.model_contains` occurs in `model_text` (the text of
    /proc/device-tree/model), else the first whose `match.compatible` lists an entry of `compatible`
    (/proc/device-tree/compatible: board, then SoC), or None. When several model strings match, the
    longest wins (then the name), so a specific profile beats a general one. `boards` defaults to
    list_boards()."""
    found = list_boards() if boards is None else boards
    text = (model_text or "").replace("\x00", "").strip()
    best: tuple[int, str, Board] | None = None
    for board in found if text else ():
        for needle in board.model_contains:
            if needle and needle in text:
                key = (-len(needle), board.name, board)
                if best is None or key[:2] < best[:2]:
                    best = key
    if best is not None:
        return best[2]
    for entry in compatible:  # most specific first, as the device tree lists them
        for board in sorted(found, key=lambda b: b.name):
            if entry in board.compatible:
                return board
    return None


def read_device_model(root: str | Path = "/proc/device-tree") -> str | None:
    """The device-tree model string (e.g. "Raspberry Pi 5 Model B Rev 1.0"), NULs stripped;
    None where there is no device tree (most x86 machines) or it cannot be read."""
    try:
        raw = (Path(root) / "model").read_bytes()
    except OSError:
        return None
    text = raw.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()
    return text or None


def read_device_compatible(root: str | Path = "/proc/device-tree") -> tuple[str, ...]:
    """The device tree's `compatible` entries (board first, then SoC, e.g. ("raspberrypi,5-model-b",
    "brcm,bcm2712")); () where there is none."""
    try:
        raw = (Path(root) / "compatible").read_bytes()
    except OSError:
        return ()
    return tuple(e for e in raw.decode("utf-8", errors="replace").split("\x00") if e.strip())
