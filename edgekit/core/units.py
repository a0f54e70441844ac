"""Unit helpers. Stdlib only. Values are SI: bytes, seconds, watts, joules."""

from __future__ import annotations


def format_bytes(n_bytes: float) -> str:
    """1536 -> '1.5 KiB' (binary prefixes)."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    """0.0123 -> '12.3 ms', 75 -> '1 min 15 s'."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"
