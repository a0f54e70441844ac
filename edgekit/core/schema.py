"""A small declarative schema for TOML data files (targets, recipes). Stdlib only.

A schema is a `Table` of named `Field`s (or nested `Table`s). `validate()` returns a new dict
with defaults filled in, or raises ConfigError naming the file, the dotted key, the problem and
what is allowed. Unknown keys are errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from edgekit.core.errors import ConfigError

REQUIRED = object()

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Field:
    """One scalar or list value.

    kind: str, int, float or bool; `list_of` makes it a list of that kind.
    choices: allowed values (for scalars, or for each list item).
    minimum / maximum: inclusive numeric bounds (for scalars, or for each list item).
    """

    kind: type
    default: Any = REQUIRED
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    list_of: bool = False
    doc: str = ""

    def describe(self) -> str:
        what = _TYPE_NAMES[self.kind]
        if self.choices is not None:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.minimum is not None or self.maximum is not None:
            lo = "-inf" if self.minimum is None else self.minimum
            hi = "inf" if self.maximum is None else self.maximum
            what += f" in [{lo}, {hi}]"
        return f"a list of ({what})" if self.list_of else what


@dataclass(frozen=True)
class Table:
    """A TOML table: named fields and sub-tables. `check` may add cross-field rules."""

    fields: dict[str, "Field | Table"]
    required: bool = False
    doc: str = ""
    check: Callable[[dict, Callable[[str, str], ConfigError]], None] | None = field(
        default=None, compare=False
    )


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_scalar(value: Any, spec: Field, key: str, err) -> Any:
    if not _is_kind(value, spec.kind):
        raise err(key, f"got {value!r}; expected {spec.describe()}")
    if spec.kind is float:
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in spec.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise err(key, f"got {value!r}{hint}; allowed: " + ", ".join(repr(c) for c in spec.choices))
    if spec.minimum is not None and value < spec.minimum:
        raise err(key, f"got {value!r}; expected {spec.describe()}")
    if spec.maximum is not None and value > spec.maximum:
        raise err(key, f"got {value!r}; expected {spec.describe()}")
    return value


def _validate_table(data: Any, table: Table, prefix: str, err) -> dict:
    if not isinstance(data, dict):
        raise err(prefix or "<top>", f"expected a table, got {data!r}")
    unknown = sorted(set(data) - set(table.fields))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(table.fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise err(prefix + key, "unknown key" + hint + "; allowed keys here: " + ", ".join(table.fields))
    out: dict = {}
    for name, spec in table.fields.items():
        key = prefix + name
        if isinstance(spec, Table):
            if name not in data and spec.required:
                raise err(key, "missing required table")
            out[name] = _validate_table(data.get(name, {}), spec, key + ".", err)
            continue
        if name not in data:
            if spec.default is REQUIRED:
                raise err(key, f"missing required key; expected {spec.describe()}")
            out[name] = list(spec.default) if isinstance(spec.default, (list, tuple)) else spec.default
            continue
        value = data[name]
        if spec.list_of:
            if not isinstance(value, list):
                raise err(key, f"got {value!r}; expected {spec.describe()}")
            out[name] = [_check_scalar(v, spec, f"{key}[{i}]", err) for i, v in enumerate(value)]
        else:
            out[name] = _check_scalar(value, spec, key, err)
    if table.check is not None:
        table.check(out, lambda k, msg: err(prefix + k, msg))
    return out


def validate(data: dict, schema: Table, source: str) -> dict:
    """Validate `data` (parsed TOML) against `schema`; `source` names the file in errors."""

    def err(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}': {problem}")

    return _validate_table(data, schema, "", err)


def describe_schema(schema: Table, prefix: str = "") -> list[str]:
    """Human-readable lines documenting every key (used by `edgekit targets --schema`)."""
    lines = []
    for name, spec in schema.fields.items():
        if isinstance(spec, Table):
            lines.append(f"[{prefix}{name}]" + (f"  # {spec.doc}" if spec.doc else ""))
            lines.extend(describe_schema(spec, prefix + name + "."))
        else:
            default = "" if spec.default is REQUIRED else f" (default {spec.default!r})"
            lines.append(f"  {prefix}{name}: {spec.describe()}{default}" + (f" - {spec.doc}" if spec.doc else ""))
    return lines
