"""Named fault-injection points, after 3FS's FaultInjection.

Product code marks the gaps between the steps of a multi-step change with
`fault_point("area.step")`. A point does nothing unless a test switches it on, either
in this process (`enable`/`enabled`) or for a whole service process through the
`PY3FS_FAULTS` environment variable, read once at import::

    PY3FS_FAULTS="kvcache.put.after_stage=crash,meta.rename.before_commit=error@2"

Actions:
- `crash`: the process kills itself with SIGKILL on the spot, as `kill -9` would,
  so nothing after the point runs (no finally blocks, no flush).
- `error`: raise `InjectedFault` (a `Py3fsError`), to test error paths in-process.
- `delay:SECONDS`: sleep (blocking) before carrying on, to widen a race window.

`@N` makes the point fire on its N-th hit (1-based) instead of the first; it fires
once, then stays quiet. Unknown action names are a startup error naming the point.
Points cost one dict lookup when nothing is enabled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from py3fs.errors import InjectedFault

ENV = "PY3FS_FAULTS"


@dataclass
class _Rule:
    action: str
    fire_on: int = 1
    hits: int = 0
    delay_s: float = 0.0


_rules: dict[str, _Rule] = {}


def _parse_rule(name: str, spec: str) -> _Rule:
    spec, _, count = spec.partition("@")
    fire_on = int(count) if count else 1
    if fire_on < 1:
        raise ValueError(f"fault point {name!r}: count must be >= 1")
    if spec.startswith("delay:"):
        return _Rule("delay", fire_on, delay_s=float(spec.removeprefix("delay:")))
    if spec not in ("crash", "error"):
        raise ValueError(f"fault point {name!r}: unknown action {spec!r}")
    return _Rule(spec, fire_on)


def parse(text: str) -> dict[str, _Rule]:
    """Parse a `PY3FS_FAULTS` value into rules; raises ValueError on bad input."""
    rules: dict[str, _Rule] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise ValueError(f"bad fault spec {item!r}: expected NAME=ACTION[@N]")
        rules[name] = _parse_rule(name, spec)
    return rules


def env_value(**points: str) -> str:
    """Format points for `PY3FS_FAULTS` (a test helper for spawned services)."""
    return ",".join(f"{name}={spec}" for name, spec in points.items())


def enable(name: str, spec: str) -> None:
    _rules[name] = _parse_rule(name, spec)


def disable(name: str) -> None:
    _rules.pop(name, None)


@contextmanager
def enabled(name: str, spec: str) -> Iterator[None]:
    """Switch one point on for the duration of a `with` block (in-process tests)."""
    enable(name, spec)
    try:
        yield
    finally:
        disable(name)


def any_enabled() -> bool:
    """Whether any point is switched on (one may sleep or crash)."""
    return bool(_rules)


def delaying(*names: str) -> bool:
    """Whether a `delay` is armed at any of `names` (code that would run those
    steps on an event loop runs them in a worker thread then: the delay stands
    for a slow disk, not for a stalled server)."""
    return any((r := _rules.get(n)) is not None and r.action == "delay" for n in names)


def fault_point(name: str) -> None:
    """Mark a crash/error point; a no-op unless `name` was switched on."""
    rule = _rules.get(name)
    if rule is None:
        return
    rule.hits += 1
    if rule.hits != rule.fire_on:
        return
    if rule.action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif rule.action == "error":
        raise InjectedFault(f"fault point {name} fired")
    else:
        time.sleep(rule.delay_s)


_rules.update(parse(os.environ.get(ENV, "")))
