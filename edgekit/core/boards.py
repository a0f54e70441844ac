"""Board power profiles: one TOML file per board (boards/*.toml). Stdlib only.

A profile gives typical whole-board power in watts (W) at the board's power input: `idle_watts`
with nothing running, `full_load_watts` with every CPU core busy, and `source`, where those
figures come from. They are approximate published figures, not measurements of this machine;
the `estimate` power source scales between them by CPU utilisation and always says so.
`match.model_contains` lets `detect_board` recognise the board from /proc/device-tree/model.
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
        "match": Table(
            {
                "model_contains": Field(
                    str, default=(), list_of=True,
                    doc="substrings of /proc/device-tree/model that identify this board",
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
    path: Path | None = None


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
        path=path,
    )


def list_boards() -> list[Board]:
    """Every board profile found, validated, sorted by name."""
    return [load_board(str(p)) for _, p in sorted(tomlfiles.available("boards").items())]


def detect_board(model_text: str | None, boards: list[Board] | None = None) -> Board | None:
    """The board whose `match.model_contains` occurs in `model_text` (the text of
    /proc/device-tree/model), or None. When several match, the longest matching string wins
    (then the name), so a specific profile beats a general one. `boards` defaults to list_boards()."""
    if not model_text:
        return None
    text = model_text.replace("\x00", "").strip()
    if not text:
        return None
    best: tuple[int, str, Board] | None = None
    for board in list_boards() if boards is None else boards:
        for needle in board.model_contains:
            if needle and needle in text:
                key = (-len(needle), board.name, board)
                if best is None or key[:2] < best[:2]:
                    best = key
    return None if best is None else best[2]


def read_device_model(root: str | Path = "/proc/device-tree") -> str | None:
    """The device-tree model string (e.g. "Raspberry Pi 5 Model B Rev 1.0"), NULs stripped;
    None where there is no device tree (most x86 machines) or it cannot be read."""
    try:
        raw = (Path(root) / "model").read_bytes()
    except OSError:
        return None
    text = raw.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()
    return text or None
