"""Finding and reading named TOML data files (targets/*.toml, models/*.toml). Stdlib only."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgekit.core.errors import ConfigError
from edgekit.core.paths import data_dirs


def available(kind: str) -> dict[str, Path]:
    """Name -> file for every `kind` TOML file; earlier directories win on a name clash."""
    found: dict[str, Path] = {}
    for d in data_dirs(kind):
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def find(kind: str, name_or_path: str, what: str) -> Path:
    """A TOML file given by name (looked up in data_dirs) or by path."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"{what} file not found: {p}")
        return p
    files = available(kind)
    if name_or_path not in files:
        names = ", ".join(sorted(files)) or "(none found)"
        raise ConfigError(f"unknown {what} '{name_or_path}'; available: {names}")
    return files[name_or_path]


def read(path: Path) -> dict:
    """Parse a TOML file; a syntax error names the file and position."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_validated(kind: str, name_or_path: str, what: str, schema) -> tuple[Path, dict]:
    """Find, parse and validate a named data file; its `name` key must equal the file name."""
    from edgekit.core.schema import validate

    path = find(kind, name_or_path, what)
    data = validate(read(path), schema, str(path))
    if data["name"] != path.stem:
        raise ConfigError(f"{path}: key 'name': got {data['name']!r}; must equal the file name {path.stem!r}")
    return path, data
