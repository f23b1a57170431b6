"""Typed sizes and durations in configuration: "4MiB", "128KB", "5s", "250ms"."""

from __future__ import annotations

import re

_SIZE = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_DURATION = {
    "": 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Bytes from "4MiB" / "128KB" / 4096. Binary multiples (KB == KiB), as 3FS does."""
    if isinstance(value, int):
        return value
    m = _NUM.match(value)
    if not m or m.group(2).lower() not in _SIZE:
        raise ValueError(f"not a size: {value!r}")
    return int(float(m.group(1)) * _SIZE[m.group(2).lower()])


def parse_duration(value: str | float | int) -> float:
    """Seconds from "5s" / "250ms" / 1.5."""
    if isinstance(value, int | float):
        return float(value)
    m = _NUM.match(value)
    if not m or m.group(2).lower() not in _DURATION:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * _DURATION[m.group(2).lower()]


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
