"""Typed configuration: one frozen dataclass per service, filled from layered sources.

Later wins: dataclass defaults < TOML file section < `PY3FS_<SECTION>_<KEY>`
environment variables < explicit overrides (CLI flags). Unknown keys and bad values
are errors naming the key and where it came from. Fields whose name ends in `_bytes`
or `_size` accept sizes ("4MiB"); fields ending in `_s` or `_timeout` or `_interval`
accept durations ("500ms").
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any, TypeVar, get_type_hints

from py3fs import errors
from py3fs.units import parse_duration, parse_size

C = TypeVar("C")


class ConfigError(errors.InvalidArgument):
    """A configuration value is unknown or malformed."""


def _convert(name: str, typ: Any, value: Any, source: str) -> Any:
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if name.endswith(("_bytes", "_size")):
                return parse_size(value)
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(value)
            # The kernel keeps 16 bits: port 99999 would silently bind 34463.
            if (name == "port" or name.endswith("_port")) and not 0 <= number <= 65535:
                raise ValueError(value)
            return number
        if typ is float:
            return parse_duration(value)
        if typ is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if getattr(typ, "__origin__", None) is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return list(value)
        return value
    except (ValueError, TypeError):
        raise ConfigError(f"bad value for {name!r} in {source}: {value!r}") from None


def load(
    cls: type[C],
    section: str,
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> C:
    """Build `cls` from the layered sources described in the module docstring."""
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        for key, value in doc.get(section, {}).items():
            if key not in fields:
                raise ConfigError(f"unknown key {key!r} in [{section}] of {path}")
            values[key] = _convert(key, hints[key], value, path)
    env = os.environ if env is None else env
    prefix = f"PY3FS_{section.upper()}_"
    for var, value in env.items():
        if var.startswith(prefix):
            key = var[len(prefix) :].lower()
            if key in fields:
                values[key] = _convert(key, hints[key], value, f"${var}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"unknown option {key!r} for [{section}]")
        values[key] = _convert(key, hints[key], value, "command line")
    return cls(**values)
