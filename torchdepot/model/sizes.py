"""Byte counts for people: one unit system everywhere (SI: kB, MB, GB, as pip and uv print)."""

from __future__ import annotations


def format_size(n: int | float) -> str:
    """``219_000_000`` -> ``"219.0 MB"``; bytes are whole (``"512 B"``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
