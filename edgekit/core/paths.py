"""Where edgekit finds its data files and caches. Stdlib only.

- Target, recipe, board-profile and accelerator (accelerators/*.toml) TOML files: directories named in EDGEKIT_TARGETS_PATH /
  EDGEKIT_MODELS_PATH / EDGEKIT_BOARDS_PATH (os.pathsep-separated, searched first, so a user adds a
  board by adding a file), then the source checkout's top-level `targets/`, `models/` and
  `boards/`, then the copies installed inside the package (`edgekit/_targets/`, `edgekit/_models/`,
  `edgekit/_boards/`).
- EDGEKIT_HOME (default ~/.cache/edgekit): downloaded teachers and other caches.
- The shared reference folder (`../shared` beside a checkout, or EDGEKIT_SHARED): real models and
  text used by default recipes, tests and benchmarks. Never required by a device at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.core.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SOURCE_ROOT = PACKAGE_DIR.parent

_ENV_FOR_KIND = {
    "targets": "EDGEKIT_TARGETS_PATH",
    "models": "EDGEKIT_MODELS_PATH",
    "boards": "EDGEKIT_BOARDS_PATH",
    "accelerators": "EDGEKIT_ACCELERATORS_PATH",
}


def data_dirs(kind: str) -> list[Path]:
    """Directories holding `kind` ("targets", "models" or "boards") TOML files, highest priority first."""
    dirs = [Path(p) for p in os.environ.get(_ENV_FOR_KIND[kind], "").split(os.pathsep) if p]
    for candidate in (SOURCE_ROOT / kind, PACKAGE_DIR / f"_{kind}"):
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def edgekit_home() -> Path:
    """Cache root for downloaded teachers etc. (EDGEKIT_HOME, default ~/.cache/edgekit)."""
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".cache" / "edgekit")


def shared_dir() -> Path | None:
    """The shared reference folder, or None when this machine has none."""
    env = os.environ.get("EDGEKIT_SHARED")
    if env:
        return Path(env)
    for candidate in (SOURCE_ROOT.parent / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"):
        if (candidate / "README.md").is_file() and (candidate / "models").is_dir():
            return candidate
    return None


def resolve_data_ref(ref: str) -> Path:
    """Turn a recipe reference into a path.

    `shared:REL` is REL inside the shared folder; anything else is a filesystem path
    (`~` expanded). Raises ConfigError when a `shared:` reference cannot be resolved.
    """
    if ref.startswith("shared:"):
        root = shared_dir()
        if root is None:
            raise ConfigError(
                f"'{ref}' needs the shared reference folder, which was not found: "
                "set EDGEKIT_SHARED=/path/to/shared or pass an explicit path"
            )
        return root / ref[len("shared:"):]
    return Path(ref).expanduser()
